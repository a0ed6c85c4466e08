"""The generated stubs are current: regenerating from protos/ changes nothing."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_generated_stubs_match_protos(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("gen_protos", REPO / "scripts" / "gen_protos.py")
    assert spec and spec.loader
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    gen.generate(tmp_path)
    fresh = sorted((tmp_path / "recognizer" / "v1").glob("*_pb2*.py*"))
    assert fresh, "protoc produced nothing"
    for path in fresh:
        current = REPO / "recognizer" / "v1" / path.name
        assert current.exists(), f"{current} missing: run `make protos`"
        assert current.read_bytes() == path.read_bytes(), f"{current.name} is stale: `make protos`"
