"""Security end to end: templates encrypted at rest, API-key rotation and hashed keys in the
config file, an audit row for every admin action, logs free of images/templates/keys,
retention purge from the CLI, and an online backup taken under write load that restores."""

from __future__ import annotations

import base64
import getpass
import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest

from recognizer.client import Client
from recognizer.config import ApiKey, Role, hash_key, load_config
from recognizer.face.types import Selection
from recognizer.service.logs import JsonFormatter
from recognizer.service.runtime import Runtime
from recognizer.service.server import RunningServer, create_server
from recognizer.store.sqlite import SqliteStore
from recognizer.v1 import gate_pb2, identity_pb2, recognition_pb2
from tests.conftest import KEYS, REPO, client_for, dataset, require_models, start_server
from tests.helpers import eventually, fake_engines

KEY_ENV = "RECOGNIZER_TEMPLATE_KEY"


def photo(name: str = "Colin_Powell", k: int = 0) -> bytes:
    return sorted(dataset("faces", "lfw10", name).iterdir())[k].read_bytes()


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != KEY_ENV}
    return subprocess.run(
        [sys.executable, "-m", "recognizer.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env=env,
        check=False,
    )


def create(c: Client, name: str) -> str:
    return c.identity.CreateIdentity(
        identity_pb2.CreateIdentityRequest(display_name=name), metadata=c.metadata, timeout=30
    ).identity_id


def enroll(c: Client, identity_id: str, image: bytes) -> identity_pb2.EnrollFaceResponse:
    return c.identity.EnrollFace(
        identity_pb2.EnrollFaceRequest(identity_id=identity_id, images=[image], force=True),
        metadata=c.metadata,
        timeout=60,
    )


# --- templates encrypted at rest -------------------------------------------------------------


@pytest.fixture(scope="module")
def local_faces():  # type: ignore[no-untyped-def]
    require_models("default")
    from recognizer.face.pipeline import build_face_pipeline

    return build_face_pipeline()


def needles(embedding: np.ndarray) -> dict[str, bytes]:
    """Byte patterns a stored plaintext template would contain."""
    e = np.asarray(embedding, np.float32)
    unit = (e / np.linalg.norm(e)).astype(np.float32)
    out = {}
    for name, v in (("raw", e), ("unit", unit)):
        out[f"{name}-f32"] = v.astype("<f4").tobytes()
        out[f"{name}-f32-head"] = v[:8].astype("<f4").tobytes()
        out[f"{name}-f16"] = v.astype("<f2").tobytes()
    return out


def db_bytes(data_dir: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(data_dir.glob("recognizer.db*")) if p.is_file())


def enrol_and_scan(
    tmp: Path, local_faces, monkeypatch: pytest.MonkeyPatch, key: str | None
) -> tuple[set[str], set[str]]:  # type: ignore[no-untyped-def]
    """Enrol one real face; which needles appear in the files while serving / after stop."""
    if key is None:
        monkeypatch.delenv(KEY_ENV, raising=False)
    else:
        monkeypatch.setenv(KEY_ENV, key)  # default_engines reads it when the models load
    image = photo("Colin_Powell", 2)
    decoded = cv2.imdecode(np.frombuffer(image, np.uint8), cv2.IMREAD_COLOR)
    embedding = local_faces.analyze(decoded, Selection.LARGEST)[0].embedding
    pats = needles(embedding)
    running = start_server(tmp)
    try:
        assert running.runtime.wait(180)
        assert running.runtime.engines.gallery.store.cipher.encrypted is (key is not None)
        c = client_for(running, "admin")
        enroll(c, create(c, "secret face"), image)
        c.close()
        live = db_bytes(tmp)
        seen_live = {n for n, p in pats.items() if p in live}
    finally:
        running.stop(grace=1.0)
    after = db_bytes(tmp)
    seen_after = {n for n, p in pats.items() if p in after}
    return seen_live, seen_after


def test_templates_are_encrypted_at_rest(
    tmp_path: Path, local_faces, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    # Control: without a key the template is stored in plaintext, so the scan can see it.
    plain_live, plain_after = enrol_and_scan(tmp_path / "plain", local_faces, monkeypatch, None)
    assert plain_live | plain_after, "the scan cannot find even a plaintext template"

    key = base64.b64encode(os.urandom(32)).decode()
    enc_live, enc_after = enrol_and_scan(tmp_path / "enc", local_faces, monkeypatch, key)
    assert not enc_live, f"template bytes found in the live database files: {enc_live}"
    assert not enc_after, f"template bytes found in the database after stop: {enc_after}"


# --- API keys --------------------------------------------------------------------------------


def metrics_code(port: int, key: str) -> grpc.StatusCode:
    c = Client.connect(f"127.0.0.1:{port}", key)
    try:
        c.admin.GetMetrics(gate_pb2.GetMetricsRequest(), metadata=c.metadata, timeout=30)
        return grpc.StatusCode.OK
    except grpc.RpcError as err:
        return err.code()
    finally:
        c.close()


def test_api_key_rotation(tmp_path: Path) -> None:
    old, new = "old-admin-" + uuid.uuid4().hex, "new-admin-" + uuid.uuid4().hex
    both = (ApiKey(hash_key(old), Role.ADMIN, "old"), ApiKey(hash_key(new), Role.ADMIN, "new"))
    running = start_server(tmp_path, fake_engines(), api_keys=both)
    try:
        assert running.runtime.wait(10)
        assert metrics_code(running.port, old) is grpc.StatusCode.OK
        assert metrics_code(running.port, new) is grpc.StatusCode.OK
    finally:
        running.stop(grace=0.5)
    running = start_server(tmp_path, fake_engines(), api_keys=both[1:])
    try:
        assert running.runtime.wait(10)
        assert metrics_code(running.port, old) is grpc.StatusCode.UNAUTHENTICATED
        assert metrics_code(running.port, new) is grpc.StatusCode.OK
    finally:
        running.stop(grace=0.5)


def test_config_file_holds_only_key_hashes(tmp_path: Path) -> None:
    plain = "file-admin-" + uuid.uuid4().hex
    gate_plain = "file-gate-" + uuid.uuid4().hex
    path = tmp_path / "recognizer.toml"
    path.write_text(
        "[[api_keys]]\n"
        f'role = "admin"\nname = "ops"\nsha256 = "{hash_key(plain)}"\n\n'
        "[[api_keys]]\n"
        f'role = "gate"\nname = "gate-1"\nsha256 = "{hash_key(gate_plain)}"\n'
    )
    text = path.read_text()
    assert plain not in text and gate_plain not in text
    config = load_config(path, env={}, port=0, metrics_port=0, data_dir=tmp_path / "data")
    assert {(k.role, k.sha256) for k in config.api_keys} == {
        (Role.ADMIN, hash_key(plain)),
        (Role.GATE, hash_key(gate_plain)),
    }
    assert plain not in repr(config) and gate_plain not in repr(config)
    running = create_server(config, Runtime(config, fake_engines()))
    try:
        assert running.runtime.wait(10)
        assert metrics_code(running.port, plain) is grpc.StatusCode.OK
        assert metrics_code(running.port, gate_plain) is grpc.StatusCode.PERMISSION_DENIED
        assert metrics_code(running.port, hash_key(plain)) is grpc.StatusCode.UNAUTHENTICATED
    finally:
        running.stop(grace=0.5)


# --- one real server for audit and logs ------------------------------------------------------


class Capture(logging.Handler):
    """Formats every record the way the server's JSON handler would, and keeps the text."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []
        self.lock_ = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        text = self.format(record)
        extra = repr(record.args) + repr(getattr(record, "fields", {}))
        with self.lock_:
            self.lines.append(text + "\n" + extra)


# Its own server: the captured log must hold this module's calls only, and the root logger
# is at DEBUG while it runs.
@pytest.fixture(scope="module")
def logged_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[RunningServer, Capture]]:
    require_models("default")
    capture = Capture()
    root = logging.getLogger()
    level = root.level
    root.addHandler(capture)
    root.setLevel(logging.DEBUG)
    running = start_server(tmp_path_factory.mktemp("security"))
    try:
        assert running.runtime.wait(180)
        yield running, capture
    finally:
        running.stop(grace=1.0)
        root.removeHandler(capture)
        root.setLevel(level)


def test_every_admin_action_is_audited(logged_server: tuple[RunningServer, Capture]) -> None:
    running, _ = logged_server
    c = client_for(running, "admin")
    md = c.metadata
    iid = create(c, "audited")
    enrolled = enroll(c, iid, photo("Hugo_Chavez", 0))
    template = enrolled.faces[0].template_id
    enroll(c, iid, photo("Hugo_Chavez", 1))
    c.identity.BindPlate(
        identity_pb2.BindPlateRequest(identity_id=iid, plate="京B55555"), metadata=md
    )
    binding = c.identity.BindPayment(
        identity_pb2.BindPaymentRequest(identity_id=iid, payment_ref="ref-audit", factors=3),
        metadata=md,
    ).binding_id
    c.identity.UnbindPayment(
        identity_pb2.UnbindPaymentRequest(identity_id=iid, binding_id=binding), metadata=md
    )
    c.identity.RemoveFace(
        identity_pb2.RemoveFaceRequest(identity_id=iid, template_id=template), metadata=md
    )
    c.identity.DeleteIdentity(identity_pb2.DeleteIdentityRequest(identity_id=iid), metadata=md)
    c.close()

    data_dir = running.runtime.config.data_dir
    done = cli("purge", "--older-than-days", "30", "--data-dir", str(data_dir))
    assert done.returncode == 0, done.stderr

    store = SqliteStore(data_dir / "recognizer.db")
    try:
        rows = store.list_audit(limit=1000)
    finally:
        store.close()
    mine = {r.action for r in rows if r.target == iid}
    wanted = {
        "create_identity",
        "enroll_face",
        "bind_plate",
        "bind_payment",
        "unbind_payment",
        "remove_face",
        "delete_identity",
    }
    assert wanted <= mine, f"missing audit rows: {wanted - mine}"
    assert any(r.action == "purge" and r.target == str(data_dir) for r in rows)
    admin_key = f"env-admin-{hash_key(KEYS['admin'])[:8]}"  # the key's name, never the role
    for r in rows:
        assert r.actor_role == (admin_key if r.action != "purge" else f"cli:{getpass.getuser()}")
        assert len(repr(r.detail)) < 2000, "audit rows hold identifiers, never images"


def test_logs_hold_no_images_templates_or_keys(
    logged_server: tuple[RunningServer, Capture],
    local_faces,  # type: ignore[no-untyped-def]
) -> None:
    running, capture = logged_server
    start = len(capture.lines)
    image = photo("Tony_Blair", 0)
    c = client_for(running, "admin")
    md = c.metadata
    iid = create(c, "logged")
    enroll(c, iid, image)
    c.recognition.IdentifyFace(recognition_pb2.IdentifyFaceRequest(image=image), metadata=md)
    c.recognition.VerifyFace(
        recognition_pb2.VerifyFaceRequest(identity_id=iid, image=image), metadata=md
    )
    c.recognition.DetectFaces(recognition_pb2.DetectFacesRequest(image=image), metadata=md)
    bad_key = "wrong-key-" + uuid.uuid4().hex
    with pytest.raises(grpc.RpcError):
        c.recognition.DetectFaces(
            recognition_pb2.DetectFacesRequest(image=image), metadata=(("x-api-key", bad_key),)
        )
    with pytest.raises(grpc.RpcError):  # a corrupt image takes the error path
        c.recognition.DetectFaces(
            recognition_pb2.DetectFacesRequest(image=image[: len(image) // 3]), metadata=md
        )
    c.close()
    # The access line of the last call (the corrupt image's refusal) is written.
    eventually(
        lambda: any(
            "DetectFaces" in line and "INVALID_ARGUMENT" in line for line in capture.lines[start:]
        ),
        what="the corrupt image's access log line",
    )
    text = "\n".join(capture.lines[start:])
    assert '"rpc"' in text, "the capture saw no access log lines; the check would prove nothing"

    decoded = cv2.imdecode(np.frombuffer(image, np.uint8), cv2.IMREAD_COLOR)
    emb = local_faces.analyze(decoded, Selection.LARGEST)[0].embedding.astype("<f4")
    forbidden = {
        "admin key": c.api_key,
        "rejected key": bad_key,
        "image base64": base64.b64encode(image[100:160]).decode(),
        "image hex": image[100:160].hex(),
        "image repr": repr(image[100:130])[2:-1],
        "template base64": base64.b64encode(emb[:8].tobytes()).decode(),
        "template hex": emb[:8].tobytes().hex(),
        "template repr": repr(emb[:8].tobytes())[2:-1],
        "template floats": f"{float(emb[0]):.6f}, {float(emb[1]):.6f}",
    }
    leaks = [name for name, s in forbidden.items() if s and s in text]
    assert not leaks, f"logs leak: {leaks}"


# --- retention -------------------------------------------------------------------------------


def test_retention_purge_from_the_cli(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "recognizer.db")
    now = time.time()
    try:
        for event, age_days in (("old-1", 40), ("old-2", 31), ("new-1", 29), ("new-2", 1)):
            store.put_decision(
                decision_id=uuid.uuid4().hex,
                gate_id="G-ret",
                event_id=event,
                outcome="deny",
                payload=b"",
                created_at=now - age_days * 86400,
            )
    finally:
        store.close()
    done = cli("purge", "--older-than-days", "30", "--data-dir", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "purged 2 decision" in done.stdout, done.stdout
    store = SqliteStore(tmp_path / "recognizer.db")
    try:
        left = {r.event_id for r in store.list_decisions(gate_id="G-ret", limit=100)}
        assert left == {"new-1", "new-2"}
        assert store.list_audit(1)[0].action == "purge"
    finally:
        store.close()


# --- backup under load, restore, serve -------------------------------------------------------


def test_backup_under_load_restores_every_identity(tmp_path: Path) -> None:
    require_models("default")
    people = sorted(dataset("faces", "lfw10").iterdir())
    images = [sorted(p.iterdir())[k].read_bytes() for k in range(3) for p in people]
    src, dest, restored = tmp_path / "src", tmp_path / "backup", tmp_path / "restored"
    running = start_server(src, checkpoint_seconds=0.5)
    acked: list[tuple[str, bytes, float]] = []  # (identity, image, acknowledged at)
    stop = threading.Event()
    errors: list[str] = []

    def writer() -> None:
        c = client_for(running, "admin")
        try:
            for n in range(10_000):
                if stop.is_set():
                    return
                image = images[n % len(images)]
                try:
                    iid = create(c, f"load-{n}")
                    enroll(c, iid, image)
                except grpc.RpcError as err:
                    errors.append(f"{err.code().name}: {err.details()}")
                    return
                acked.append((iid, image, time.monotonic()))
        finally:
            c.close()

    try:
        assert running.runtime.wait(180)
        t = threading.Thread(target=writer, daemon=True)
        t.start()
        deadline = time.monotonic() + 60
        while len(acked) < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(acked) >= 5, errors
        started = time.monotonic()
        before = [(i, img) for i, img, at in list(acked) if at < started]
        done = cli("backup", str(dest), "--data-dir", str(src))
        after_backup = len(acked)
        # Writes continue after the backup too: three more acknowledged (or the writer failed).
        eventually(lambda: len(acked) >= after_backup + 3 or errors, what="writes after backup")
        stop.set()
        t.join(60)
        assert done.returncode == 0, done.stderr
        assert not errors, errors
        written_during = len(acked) - len(before)
    finally:
        stop.set()
        running.stop(grace=1.0)

    done = cli("restore", str(dest), "--data-dir", str(restored))
    assert done.returncode == 0, done.stderr
    again = start_server(restored)
    try:
        assert again.runtime.wait(180)
        c = client_for(again, "admin")
        md = c.metadata
        g = c.admin.GetMetrics(gate_pb2.GetMetricsRequest(), metadata=md).gallery
        assert g.consistent and g.index_size == g.store_templates, g
        for iid, image in before:
            got = c.identity.GetIdentity(
                identity_pb2.GetIdentityRequest(identity_id=iid), metadata=md
            )
            assert got.face_count >= 1, iid
            r = c.recognition.IdentifyFace(
                recognition_pb2.IdentifyFaceRequest(image=image, top_k=100), metadata=md, timeout=60
            )
            assert iid in {x.identity_id for x in r.candidates}, iid
        c.close()
        print(
            f"\nbackup under load: {len(before)} identities before the backup, "
            f"{written_during} written during/after it; restored gallery {g.store_templates}"
        )
    finally:
        again.stop(grace=1.0)
