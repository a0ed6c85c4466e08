"""One side of `benchmarks store` (benchmarks/store_bench.py): run as a script in its own
process, with PYTHONPATH naming the source tree whose store it measures (this checkout, or
an earlier release's), so that two versions of `recognizer` can be timed in one run.

It builds a SQLite store sealed with a template key (identities, each with a bound plate and
two sightings, entry then exit), prints "ready", then answers one JSON command per line:
{"op": "identities_for_plate" | "last_sighting", "calls": N} -> the N per-call times in
nanoseconds, over plates drawn with a fixed seed (the same plates on both sides).
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

from recognizer.store.crypto import AesGcmCipher
from recognizer.store.open import StoreLocation

KEY = bytes(range(32))
PROVINCES = "京沪粤苏浙川鲁豫鄂湘"


def plate(k: int) -> str:
    return f"{PROVINCES[k % 10]}{'ABCDEFGHJK'[k // 10 % 10]}{k:05d}"


def build(data: Path, people: int) -> object:
    store = StoreLocation(sqlite_path=data / "recognizer.db").open(AesGcmCipher(KEY))
    for k in range(people):
        ident = store.create_identity(f"person {k}", external_ref=f"ref-{k}")
        store.bind_plate(ident.id, plate(k))
        store.record_sighting(plate(k), "G-1", "entry", 1000.0 + k)
        store.record_sighting(plate(k), "G-2", "exit", 5000.0 + k)
    return store


def main(data: Path, people: int, seed: int) -> None:
    store = build(data, people)
    rng = random.Random(seed)
    print("ready", flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        op = getattr(store, cmd["op"])
        plates = [plate(rng.randrange(people)) for _ in range(int(cmd["calls"]))]
        times = []
        for p in plates:
            t0 = time.perf_counter_ns()
            found = op(p)
            times.append(time.perf_counter_ns() - t0)
            assert found, f"{cmd['op']}({p}) found nothing"
        print(json.dumps(times), flush=True)
    store.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
