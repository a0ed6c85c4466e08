"""How tests/data/release-ce6c065/ was made: run with the previous release's code (git
ce6c065, schema 3, the last commit before personal fields were sealed), e.g. from a worktree
of it with this checkout's venv:

    git worktree add /tmp/rel ce6c065
    PYTHONPATH=/tmp/rel .venv/bin/python tests/data/make_release_ce6c065.py OUT_DIR

Two data directories as that release wrote them: one with templates encrypted under the
test key bytes(range(32)) (its names, plates, payment references, decisions and sightings in
plaintext, as that release kept them), one entirely in plaintext. Each holds three
identities with a name, a plate, a payment binding and two templates, an audited plate
binding, two decisions whose inputs and payload name the plate, two sightings, and a
`pre-restore-*` folder (the copy `recognizer restore` keeps) holding the same store.
`personal.json` lists the personal strings the tests look for. Kept only to document the
fixture; the tests never run it.
"""

import json
import shutil
import sys
from pathlib import Path

import numpy as np

from recognizer.gallery.gallery import Gallery
from recognizer.store.crypto import AesGcmCipher, NullCipher
from recognizer.store.rows import AuditEntry
from recognizer.store.schema import SCHEMA_VERSION
from recognizer.store.sqlite import SqliteStore

KEY = bytes(range(32))
PEOPLE = [
    ("张伟", "京A12345", "pay-zhangwei-0001"),
    ("Ana Müller", "沪B67890", "pay-ana-0002"),
    ("O'Brien Li", "粤C2468K", "pay-obrien-0003"),
]


def main(out: Path) -> None:
    assert SCHEMA_VERSION == 3, "not release ce6c065"
    rng = np.random.default_rng(11)
    vecs = rng.standard_normal((6, 128)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    (out / "personal.json").write_text(
        json.dumps(
            {
                "names": [p[0] for p in PEOPLE],
                "plates": [p[1] for p in PEOPLE],
                "payment_refs": [p[2] for p in PEOPLE],
            },
            ensure_ascii=False,
        )
    )
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
            g.enroll(row.id, vecs[2 * k : 2 * k + 2])
            store.bind_plate(
                row.id, plate, audit=AuditEntry("admin", "bind_plate", row.id, {"plate": plate})
            )
            store.bind_payment(row.id, ref, "plate_and_face", 0)
            ids.append(row.id)
            inputs = {
                "plate_text": plate,
                "amount_minor": 100,
                "currency": "CNY",
                "direction": "entry",
                "observed_at": 1764000000.0 + k,
            }
            store.put_decision(
                input_digest=f"{k}" * 64,
                gate_id="G-1",
                event_id=f"evt-{k}",
                decision_id=f"d{k}",
                identity_id=row.id,
                outcome="allow",
                payload=json.dumps(
                    {"plate": plate, "payment_ref": ref}, ensure_ascii=False
                ).encode(),
                inputs=inputs,
                sighting=(plate, "G-1", "entry", 1764000000.0 + k),
            )
        store.record_sighting(PEOPLE[0][1], "G-2", "exit", 1764000100.0)
        g.checkpoint(force=True)
        g.close()
        store.close()
        aside = d / "pre-restore-20260101T000000"
        aside.mkdir()
        for f in ("recognizer.db", "faces-default.faiss"):
            shutil.copy2(d / f, aside / f)
        (out / f"{name}-ids.json").write_text(json.dumps(ids))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
