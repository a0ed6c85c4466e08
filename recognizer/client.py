"""A small typed client over the generated stubs, used by the CLI, tests and benchmarks.

Calls that are safe to repeat, reads and Authorize (idempotent by its event id), are
retried by gRPC's own retry policy (the channel's service config) when the server is
unavailable or refuses for overload, after the delay the server asks for
(`grpc-retry-pushback-ms`) or with backoff. Writes (CreateIdentity, EnrollFace, ...) are
never retried: a retry after a lost answer could enrol a face twice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from recognizer.api import API_KEY_HEADER, DEFAULT_TARGET
from recognizer.v1 import (
    gate_pb2_grpc,
    identity_pb2_grpc,
    recognition_pb2_grpc,
)

# (service, methods): every method of the service when methods is empty.
SAFE_TO_RETRY: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("recognizer.v1.GateService", ("Authorize",)),
    ("recognizer.v1.RecognitionService", ()),  # reads only
    ("recognizer.v1.IdentityService", ("GetIdentity", "ListIdentities", "LookupPlate")),
    ("recognizer.v1.AdminService", ("ListDecisions", "GetMetrics")),
    ("grpc.health.v1.Health", ("Check",)),
)
RETRY_POLICY = {
    "maxAttempts": 5,
    "initialBackoff": "0.1s",
    "maxBackoff": "5s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE", "RESOURCE_EXHAUSTED"],
}


def service_config() -> str:
    names = [
        {"service": service, "method": method}
        for service, methods in SAFE_TO_RETRY
        for method in methods
    ] + [{"service": service} for service, methods in SAFE_TO_RETRY if not methods]
    return json.dumps({"methodConfig": [{"name": names, "retryPolicy": RETRY_POLICY}]})


# What gRPC says when nothing answers at the address (refused, unresolvable, unreachable).
_NO_SERVER = ("failed to connect to all addresses", "DNS resolution failed", "Connection refused")


def describe_error(err: grpc.RpcError, target: str) -> str:
    """One line for a failed call: "No server at HOST:PORT" when nothing answered there."""
    details = err.details() or ""
    if err.code() is grpc.StatusCode.UNAVAILABLE and any(s in details for s in _NO_SERVER):
        return f"No server at {target}"
    return f"{err.code().name}: {details}"


@dataclass(slots=True)
class Client:
    """Stubs bound to one channel; every call carries the API key."""

    channel: grpc.Channel
    api_key: str = ""

    @classmethod
    def connect(
        cls,
        target: str = DEFAULT_TARGET,
        api_key: str = "",
        *,
        ca_cert: Path | None = None,
        client_cert: Path | None = None,
        client_key: Path | None = None,
        max_message_bytes: int = 32 * 1024 * 1024,
        retry: bool = True,
    ) -> Client:
        """`retry=False`: every refusal reaches the caller (tests and benches of refusals)."""
        options: list[tuple[str, int | str]] = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.enable_retries", int(retry)),
        ]
        if retry:
            options += [
                ("grpc.service_config", service_config()),
                # A retry resends the request: keep a whole Authorize burst for it (gRPC's
                # default buffer, 256 KiB, would commit a call with a few frames unretried).
                ("grpc.per_rpc_retry_buffer_size", max_message_bytes),
                ("grpc.retry_buffer_size", 4 * max_message_bytes),
            ]
        if ca_cert is not None:
            creds = grpc.ssl_channel_credentials(
                root_certificates=ca_cert.read_bytes(),
                private_key=client_key.read_bytes() if client_key else None,
                certificate_chain=client_cert.read_bytes() if client_cert else None,
            )
            channel = grpc.secure_channel(target, creds, options=options)
        else:
            channel = grpc.insecure_channel(target, options=options)
        return cls(channel, api_key)

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return ((API_KEY_HEADER, self.api_key),) if self.api_key else ()

    @property
    def identity(self) -> identity_pb2_grpc.IdentityServiceStub:
        return identity_pb2_grpc.IdentityServiceStub(self.channel)

    @property
    def recognition(self) -> recognition_pb2_grpc.RecognitionServiceStub:
        return recognition_pb2_grpc.RecognitionServiceStub(self.channel)

    @property
    def gate(self) -> gate_pb2_grpc.GateServiceStub:
        return gate_pb2_grpc.GateServiceStub(self.channel)

    @property
    def admin(self) -> gate_pb2_grpc.AdminServiceStub:
        return gate_pb2_grpc.AdminServiceStub(self.channel)

    def health(self, service: str = "", timeout: float = 5.0) -> str:
        stub = health_pb2_grpc.HealthStub(self.channel)
        resp = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status))

    def wait_serving(self, timeout: float = 120.0) -> bool:
        """Poll health until SERVING (models loaded) or the timeout passes."""
        import time

        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                if self.health(timeout=2.0) == "SERVING":
                    return True
            except grpc.RpcError:
                pass
            time.sleep(0.1)
        return False

    def close(self) -> None:
        self.channel.close()
