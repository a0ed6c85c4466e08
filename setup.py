"""Build hook (the rest of the metadata is in pyproject.toml).

A wheel must run with no checkout beside it, so building one also
- generates the gRPC stubs from protos/ (they are git-ignored in a checkout), and
- copies what the project itself makes from models/ into recognizer/_data/: the manifest,
  the fusion and face calibration files, and the trained models (models/trained/*.onnx).
Fetched weights are never packaged: `recognizer models fetch` verifies them on the target.
An editable install (`make install`) skips both: a checkout uses models/ and `make protos`.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
# What the wheel carries from models/, as globs relative to it (recognizer.models.shipped_file).
SHIPPED = ("manifest.toml", "fusion_*.json", "face_calibration_*.json", "trained/*.onnx")


def _gen_protos():  # scripts/ is not a package of the wheel: load the one generator by path
    spec = importlib.util.spec_from_file_location("gen_protos", ROOT / "scripts" / "gen_protos.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.generate


class BuildPyWithStubsAndData(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        out = Path(self.build_lib)
        _gen_protos()(out)
        data = out / "recognizer" / "_data"
        copied = 0
        for pattern in SHIPPED:
            for src in sorted((ROOT / "models").glob(pattern)):
                dest = data / src.relative_to(ROOT / "models")
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dest)
                copied += 1
        if not (data / "manifest.toml").is_file() or not list(data.glob("trained/*.onnx")):
            raise SystemExit(f"models/ under {ROOT} lacks the manifest or the trained models")
        self.announce(f"packaged {copied} model data files into {data}", level=2)


setup(cmdclass={"build_py": BuildPyWithStubsAndData})
