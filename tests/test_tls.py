"""TLS and mTLS with a self-made CA (cryptography), over a real loopback server."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from recognizer.client import Client
from recognizer.config import TlsConfig
from tests.conftest import KEYS, start_server
from tests.helpers import fake_engines


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(
    subject: str,
    issuer_key,
    issuer: str,
    key,
    *,
    ca: bool = False,  # type: ignore[no-untyped-def]
    san: bool = False,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    b = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if san:
        b = b.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return b.sign(issuer_key, hashes.SHA256())


def _write(path: Path, cert: x509.Certificate | None = None, key=None) -> Path:  # type: ignore[no-untyped-def]
    if cert is not None:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    else:
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("pki")
    ca_key, srv_key, cli_key, rogue_key = (
        ec.generate_private_key(ec.SECP256R1()) for _ in range(4)
    )
    ca = _cert("test-ca", ca_key, "test-ca", ca_key, ca=True)
    rogue_ca = _cert("rogue-ca", rogue_key, "rogue-ca", rogue_key, ca=True)
    return {
        "ca": _write(d / "ca.pem", ca),
        "server_cert": _write(
            d / "server.pem", _cert("localhost", ca_key, "test-ca", srv_key, san=True)
        ),
        "server_key": _write(d / "server.key", key=srv_key),
        "client_cert": _write(d / "client.pem", _cert("gate-7", ca_key, "test-ca", cli_key)),
        "client_key": _write(d / "client.key", key=cli_key),
        "rogue_cert": _write(d / "rogue.pem", _cert("rogue", rogue_key, "rogue-ca", cli_key)),
        "rogue_ca": _write(d / "rogue-ca.pem", rogue_ca),
    }


def _health(port: int, **tls: Path) -> str:
    c = Client.connect(f"localhost:{port}", KEYS["admin"], **tls)
    try:
        return c.health(timeout=5)
    finally:
        c.close()


def test_tls_server_accepts_tls_and_refuses_plaintext(tmp_path: Path, pki: dict[str, Path]) -> None:
    tls = TlsConfig(cert=pki["server_cert"], key=pki["server_key"])
    running = start_server(tmp_path, fake_engines(), tls=tls)
    try:
        assert _health(running.port, ca_cert=pki["ca"]) == "SERVING"
        with pytest.raises(grpc.RpcError):
            _health(running.port)  # plaintext client against a TLS port
    finally:
        running.stop(grace=0.5)


def test_mtls_requires_a_client_cert_from_the_ca(tmp_path: Path, pki: dict[str, Path]) -> None:
    tls = TlsConfig(cert=pki["server_cert"], key=pki["server_key"], client_ca=pki["ca"])
    running = start_server(tmp_path, fake_engines(), tls=tls)
    try:
        ok = _health(
            running.port,
            ca_cert=pki["ca"],
            client_cert=pki["client_cert"],
            client_key=pki["client_key"],
        )
        assert ok == "SERVING"
        with pytest.raises(grpc.RpcError):
            _health(running.port, ca_cert=pki["ca"])  # no client certificate
        with pytest.raises(grpc.RpcError):
            _health(
                running.port,
                ca_cert=pki["ca"],
                client_cert=pki["rogue_cert"],
                client_key=pki["client_key"],
            )  # signed by another CA
    finally:
        running.stop(grace=0.5)
