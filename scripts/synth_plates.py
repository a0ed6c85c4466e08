"""Write N seeded synthetic plates to a folder: <plate text>[_k].jpg plus labels.jsonl.

.venv/bin/python scripts/synth_plates.py OUT_DIR [-n 500] [--seed 0] [--scene]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np

from devtools.synth_plates import SynthConfig, generate_dataset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("out", type=Path)
    ap.add_argument("-n", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scene", action="store_true", help="paste plates into larger frames")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    seen: dict[str, int] = {}
    with (args.out / "labels.jsonl").open("w", encoding="utf-8") as labels:
        for s in generate_dataset(args.n, seed=args.seed, config=SynthConfig(scene=args.scene)):
            k = seen.get(s.text, 0)
            seen[s.text] = k + 1
            name = f"{s.text}.jpg" if k == 0 else f"{s.text}_{k}.jpg"
            ok, buf = cv2.imencode(".jpg", s.image, [cv2.IMWRITE_JPEG_QUALITY, 95])
            if not ok:
                raise RuntimeError(f"cannot encode {name}")
            # tofile: cv2.imwrite cannot open non-ASCII (CJK) paths on every platform.
            buf.tofile(str(args.out / name))
            row = {
                "file": name,
                "text": s.text,
                "type": s.plate_type.value,
                "corners": np.asarray(s.corners, np.float64).round(1).tolist(),
            }
            labels.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"wrote {args.n} plates to {args.out}")


if __name__ == "__main__":
    main()
