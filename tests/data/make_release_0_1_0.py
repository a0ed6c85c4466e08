"""How tests/data/release-0.1.0/ was made: run with release 0.1.0's code (git 1d184fa).

    python tests/data/make_release_0_1_0.py OUT_DIR

Two data directories as that release wrote them (schema version 1, index format 2): one with
templates encrypted under the test key bytes(range(32)), one in plaintext. Each holds three
identities with two random unit templates, a plate and a payment binding each, one decision,
one sighting and one audit row. Kept only to document the fixture; the tests never run it.
"""

import json
import sys
from pathlib import Path

import numpy as np
from recognizer.gallery.crypto import AesGcmCipher, NullCipher
from recognizer.gallery.store import SqliteStore

from recognizer.gallery.gallery import Gallery

KEY = bytes(range(32))


def main(out: Path) -> None:
    rng = np.random.default_rng(7)
    vecs = rng.standard_normal((6, 128)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    np.save(out / "vectors.npy", vecs)
    for name, cipher in (("encrypted", AesGcmCipher(KEY)), ("plain", NullCipher())):
        d = out / name
        d.mkdir(parents=True)
        store = SqliteStore(d / "recognizer.db", cipher=cipher)
        g = Gallery(
            store, model="sface-2021dec+flip", dim=128, index_path=d / "faces-default.faiss"
        )
        g.open()
        ids = []
        for k in range(3):
            row = store.create_identity(f"person-{k}", external_ref=f"ext-{k}")
            store.audit("admin", "create_identity", row.id, {})
            g.enroll(row.id, vecs[2 * k : 2 * k + 2])
            store.bind_plate(row.id, f"京A1000{k}")
            store.bind_payment(row.id, f"ref-{k}", "plate_and_face", 0)
            ids.append(row.id)
        store.put_decision(
            gate_id="G-1",
            event_id="evt-1",
            decision_id="d1",
            identity_id=ids[0],
            outcome="allow",
            payload=b"\x08\x01",
            inputs={
                "vehicle_image_sha256": "",
                "face_image_sha256": "ab" * 32,
                "plate_text": "京A10000",
                "amount_minor": 100,
                "currency": "CNY",
                "direction": "entry",
                "observed_at": 1764000000.0,
            },
        )
        store.record_sighting("京A10000", "G-1", "entry", 1764000000.0)
        g.checkpoint(force=True)
        g.close()
        (out / f"{name}-ids.json").write_text(json.dumps(ids))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
