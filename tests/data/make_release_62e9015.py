"""How tests/data/release-62e9015/ was made: run with the previous release's code (git
62e9015, schema 4, personal fields sealed), e.g. from a worktree of it with this checkout's
venv:

    git worktree add /tmp/rel 62e9015
    PYTHONPATH=/tmp/rel .venv/bin/python tests/data/make_release_62e9015.py OUT_DIR

Two data directories as that release wrote them: one under the test key bytes(range(32))
(templates and personal fields sealed), one in plaintext (a development store). Each holds
three identities with a name, a plate, a payment binding and two templates (their `source`
naming the person, which that release kept in plaintext even under a key), and three
decisions `d0`..`d2` of gate G-1 (AuthorizeResponse payloads) with their sightings: what a
WatchDecisions resume looks up. Kept only to document the fixture; the tests never run it.
"""

import json
import sys
from pathlib import Path

import numpy as np

from recognizer.gallery.gallery import Gallery
from recognizer.store.crypto import AesGcmCipher, NullCipher
from recognizer.store.rows import AuditEntry
from recognizer.store.schema import SCHEMA_VERSION
from recognizer.store.sqlite import SqliteStore
from recognizer.v1 import gate_pb2

KEY = bytes(range(32))
PEOPLE = [
    ("张伟", "京A12345", "pay-zhangwei-0001"),
    ("Ana Müller", "沪B67890", "pay-ana-0002"),
    ("O'Brien Li", "粤C2468K", "pay-obrien-0003"),
]


def main(out: Path) -> None:
    assert SCHEMA_VERSION == 4, "not release 62e9015"
    rng = np.random.default_rng(12)
    vecs = rng.standard_normal((6, 128)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    for name, cipher in (("encrypted", AesGcmCipher(KEY)), ("plain", NullCipher())):
        d = out / name
        d.mkdir(parents=True)
        store = SqliteStore(d / "recognizer.db", cipher=cipher)
        g = Gallery(
            store, model="sface-2021dec+flip", dim=128, index_path=d / "faces-default.faiss"
        )
        g.open()
        ids = []
        for k, (person, plate, ref) in enumerate(PEOPLE):
            row = store.create_identity(person, external_ref=f"ext-{k}")
            g.enroll(row.id, vecs[2 * k : 2 * k + 2], source=f"kiosk photo of {person}")
            store.bind_plate(
                row.id, plate, audit=AuditEntry("admin", "bind_plate", row.id, {"plate": plate})
            )
            store.bind_payment(row.id, ref, "plate_and_face", 0)
            ids.append(row.id)
            store.put_decision(
                input_digest=f"{k}" * 64,
                gate_id="G-1",
                event_id=f"evt-{k}",
                decision_id=f"d{k}",
                identity_id=row.id,
                outcome="allow",
                payload=gate_pb2.AuthorizeResponse(
                    decision_id=f"d{k}",
                    outcome=gate_pb2.OUTCOME_ALLOW,
                    identity_id=row.id,
                    payment_ref=ref,
                ).SerializeToString(),
                inputs={"amount_minor": 100, "currency": "CNY", "direction": "entry"},
                sighting=(plate, "G-1", "entry", 1765000000.0 + k),
            )
        g.checkpoint(force=True)
        g.close()
        store.close()
        (out / f"{name}-ids.json").write_text(json.dumps(ids))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
