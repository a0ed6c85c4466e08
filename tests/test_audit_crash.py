"""Audit records commit with the change they record, even under SIGKILL.

A client thread runs admin actions in a loop against a real `recognizer serve` subprocess
(create, enrol, bind plate and payment, remove face, unbind, delete) until the server is
SIGKILLed at a random moment. Then the database is read directly: every change (an identity,
a template added or removed, a plate or payment bound or unbound) must have its audit record,
and every audit record its change.
"""

from __future__ import annotations

import json
import random
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from recognizer.store.rows import AuditEntry
from recognizer.store.sqlite import SqliteStore
from recognizer.v1 import identity_pb2
from tests import procserver
from tests.conftest import DATASETS, require_models


def photos() -> list[bytes]:
    root = DATASETS / "faces" / "lfw10"
    if not root.is_dir():
        return []  # enrolment is left out; every other action still runs
    return [p.read_bytes() for d in sorted(root.iterdir()) for p in sorted(d.iterdir())]


class AdminLoop(threading.Thread):
    def __init__(self, server: procserver.ServerProcess, images: list[bytes], start: int) -> None:
        super().__init__(daemon=True, name="admin-loop")
        self.client = server.client("admin")
        self.images = images
        self.n = start
        self.calls = 0

    def _call(self, method, request):  # type: ignore[no-untyped-def]
        try:
            r = method(request, metadata=self.client.metadata, timeout=30)
        except grpc.RpcError as err:
            if err.code() in (
                grpc.StatusCode.INVALID_ARGUMENT,
                grpc.StatusCode.FAILED_PRECONDITION,
            ):
                return None  # a photo refused by the quality gate
            raise
        self.calls += 1
        return r

    def run(self) -> None:
        ident = self.client.identity
        try:
            while True:
                n = self.n = self.n + 1
                iid = self._call(
                    ident.CreateIdentity, identity_pb2.CreateIdentityRequest(display_name=f"a{n}")
                ).identity_id
                faces = []
                if self.images:
                    r = self._call(
                        ident.EnrollFace,
                        identity_pb2.EnrollFaceRequest(
                            identity_id=iid, images=[self.images[n % len(self.images)]], force=True
                        ),
                    )
                    faces = [f.template_id for f in r.faces] if r else []
                plate = f"京A{n % 100000:05d}"
                self._call(
                    ident.BindPlate, identity_pb2.BindPlateRequest(identity_id=iid, plate=plate)
                )
                pay = self._call(
                    ident.BindPayment,
                    identity_pb2.BindPaymentRequest(
                        identity_id=iid, payment_ref=f"r{n}", factors=1
                    ),
                )
                if n % 3 == 0:
                    for t in faces:
                        self._call(
                            ident.RemoveFace,
                            identity_pb2.RemoveFaceRequest(identity_id=iid, template_id=t),
                        )
                    self._call(
                        ident.UnbindPlate,
                        identity_pb2.UnbindPlateRequest(identity_id=iid, plate=plate),
                    )
                    self._call(
                        ident.UnbindPayment,
                        identity_pb2.UnbindPaymentRequest(
                            identity_id=iid, binding_id=pay.binding_id
                        ),
                    )
                elif n % 3 == 1:
                    self._call(
                        ident.DeleteIdentity, identity_pb2.DeleteIdentityRequest(identity_id=iid)
                    )
        except grpc.RpcError:
            pass  # the server died under the call
        finally:
            self.client.close()


@dataclass
class Findings:
    changes: int = 0
    unaudited: list[str] = field(default_factory=list)  # changes without their record
    unchanged: list[str] = field(default_factory=list)  # records without their change


def audit_check(db: Path) -> Findings:
    """Compare the data with the audit log (the server is dead: nothing moves)."""
    c = sqlite3.connect(db)
    try:
        log: dict[str, list[tuple[str, dict]]] = {}
        for action, target, detail in c.execute("SELECT action, target, detail FROM audit"):
            log.setdefault(action, []).append((target, json.loads(detail)))
        identities = {r[0] for r in c.execute("SELECT id FROM identities")}
        plates = set(c.execute("SELECT identity_id, plate FROM plates"))
        payments = {r[0] for r in c.execute("SELECT binding_id FROM payments")}
        added = {r[0] for r in c.execute("SELECT label FROM changes WHERE op = 'add'")}
        removed = {r[0] for r in c.execute("SELECT label FROM changes WHERE op = 'remove'")}
    finally:
        c.close()

    def targets(action: str) -> set[str]:
        return {t for t, _ in log.get(action, [])}

    created, deleted = targets("create_identity"), targets("delete_identity")
    enrolled = {lb for _, d in log.get("enroll_face", []) for lb in d["templates"]}
    unenrolled = {int(d["template"]) for _, d in log.get("remove_face", [])}
    unenrolled |= {lb for _, d in log.get("delete_identity", []) for lb in d["templates"]}
    bound = {(t, d["plate"]) for t, d in log.get("bind_plate", [])}
    unbound = {(t, d["plate"]) for t, d in log.get("unbind_plate", [])}
    paid = {d["binding"]: t for t, d in log.get("bind_payment", [])}
    unpaid = {d["binding"] for _, d in log.get("unbind_payment", [])}

    f = Findings()
    f.changes = len(created) + len(deleted) + len(added) + len(removed) + len(bound)
    f.changes += len(unbound) + len(paid) + len(unpaid)
    f.unaudited += [f"identity {i} created" for i in identities - created]
    f.unaudited += [f"identity {i} deleted" for i in created - identities - deleted]
    f.unaudited += [f"template {lb} added" for lb in added - enrolled]
    f.unaudited += [f"template {lb} removed" for lb in removed - unenrolled]
    f.unaudited += [f"plate {p} bound" for p in plates - bound]
    gone = {p for p in bound - plates if p[0] not in deleted}
    f.unaudited += [f"plate {p} unbound" for p in gone - unbound]
    f.unaudited += [f"payment {b} bound" for b in payments - set(paid)]
    lost = {b for b, owner in paid.items() if b not in payments and owner not in deleted}
    f.unaudited += [f"payment {b} unbound" for b in lost - unpaid]
    f.unchanged += [f"delete {i}" for i in deleted & identities]
    f.unchanged += [f"enrol {lb}" for lb in enrolled - added]
    f.unchanged += [f"remove {lb}" for lb in unenrolled - removed]
    f.unchanged += [f"bind {p}" for p in (bound - plates) - unbound if p[0] not in deleted]
    f.unchanged += [f"unbind {p}" for p in unbound & plates]
    f.unchanged += [f"unpay {b}" for b in unpaid & payments]
    return f


def kill_loop(tmp: Path, kills: int, seed: int) -> Findings:
    require_models("default")
    images, rng, data, n = photos(), random.Random(seed), tmp / "data", 0
    server = procserver.start(data)
    try:
        for _ in range(kills):
            loop = AdminLoop(server, images, n)
            loop.start()
            time.sleep(rng.uniform(0.5, 3.0))
            server.kill()
            loop.join(60)
            assert not loop.is_alive(), "the admin loop hung after the kill"
            assert loop.calls, "no admin call was acknowledged before the kill"
            n = loop.n
            found = audit_check(data / "recognizer.db")
            assert not found.unaudited, found.unaudited[:10]
            assert not found.unchanged, found.unchanged[:10]
            server = procserver.start(data)
    finally:
        if server.alive():
            server.kill()
    return audit_check(data / "recognizer.db")


def test_audit_check_finds_changes_without_records(tmp_path: Path) -> None:
    """The checker itself: a change made without its record (as the servicers did before
    records shared the change's transaction) is reported."""
    store = SqliteStore(tmp_path / "recognizer.db")
    iid = store.create_identity("a", audit=AuditEntry("admin", "create_identity", "")).id
    store.bind_plate(iid, "京A00001")  # no record
    store.create_identity("b")  # no record
    store.audit("admin", "unbind_payment", iid, {"binding": "never-bound"})
    store.close()
    found = audit_check(tmp_path / "recognizer.db")
    assert len(found.unaudited) == 2, found.unaudited
    assert found.unchanged == [], found.unchanged  # an unbind of nothing changes nothing


def test_admin_actions_keep_their_audit_records_under_sigkill(tmp_path: Path) -> None:
    found = kill_loop(tmp_path, kills=3, seed=13)
    print(f"\naudit kill test: {found.changes} changes, {len(found.unaudited)} without a record")
    assert found.changes > 0
    assert not found.unaudited and not found.unchanged


@pytest.mark.slow
def test_admin_actions_keep_their_audit_records_under_10_sigkills(tmp_path: Path) -> None:
    found = kill_loop(tmp_path, kills=10, seed=29)
    print(f"\naudit kill test: {found.changes} changes, {len(found.unaudited)} without a record")
    assert found.changes > 0
    assert not found.unaudited and not found.unchanged
