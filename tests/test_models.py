"""Model fetch: registry wheel -> member -> sha256 -> models/; idempotent; corruption is loud."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from recognizer import models as m
from recognizer.onnx import ModelError, OnnxModel
from tests.conftest import missing

REPO = Path(__file__).resolve().parents[1]
# The smallest member of the manifest, so the download test stays quick.
SMALL = "clp_dict"


def one_entry_manifest(tmp: Path, name: str) -> Path:
    """A models dir whose manifest holds just one entry of the real manifest."""
    text = (REPO / "models" / "manifest.toml").read_text(encoding="utf-8")
    blocks = ["[[model]]" + b for b in text.split("[[model]]")[1:]]
    (block,) = [b for b in blocks if f'name = "{name}"' in b]
    models_dir = tmp / "models"
    models_dir.mkdir()
    (models_dir / "manifest.toml").write_text(block)
    return models_dir


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "recognizer.cli", *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
    )


def test_fetch_twice_downloads_once(tmp_path: Path) -> None:
    models_dir = one_entry_manifest(tmp_path, SMALL)
    cache = tmp_path / "cache"
    first = run_cli("models", "fetch", "--models-dir", str(models_dir), "--cache-dir", str(cache))
    assert first.returncode == 0, first.stderr
    assert f"{SMALL}" in first.stdout and "downloaded" in first.stdout
    wheel_mtime = {p: p.stat().st_mtime_ns for p in cache.iterdir()}
    second = run_cli("models", "fetch", "--models-dir", str(models_dir), "--cache-dir", str(cache))
    assert second.returncode == 0, second.stderr
    assert "present" in second.stdout and "downloaded" not in second.stdout
    assert {p: p.stat().st_mtime_ns for p in cache.iterdir()} == wheel_mtime


def test_fetch_reextracts_from_cache_without_download(tmp_path: Path) -> None:
    models_dir = one_entry_manifest(tmp_path, SMALL)
    entry = m.load_manifest(models_dir)[0]
    cache = tmp_path / "cache"
    calls: list[str] = []

    def counting_download(e: m.ModelEntry, cache_dir: Path) -> Path:
        calls.append(e.name)
        real = m._cached_wheel(e, m.DEFAULT_CACHE_DIR)
        if real is None:
            missing("the wheel cache is empty; run `make models` first")
        cache_dir.mkdir(parents=True, exist_ok=True)
        return Path(shutil.copy(real, cache_dir))

    assert (
        m.fetch([entry], models_dir=models_dir, cache_dir=cache, download=counting_download)[
            0
        ].action
        == "downloaded"
    )
    (models_dir / entry.file).unlink()
    assert (
        m.fetch([entry], models_dir=models_dir, cache_dir=cache, download=counting_download)[
            0
        ].action
        == "extracted"
    )
    assert calls == [SMALL]
    assert m.state(entry, models_dir) is m.ModelState.OK


def test_corrupt_model_is_named_and_repaired(tmp_path: Path) -> None:
    models_dir = one_entry_manifest(tmp_path, SMALL)
    entry = m.load_manifest(models_dir)[0]
    real = m.DEFAULT_MODELS_DIR / entry.file
    if m.state(entry) is not m.ModelState.OK:
        missing("models not fetched; run `make models`")
    target = models_dir / entry.file
    target.write_bytes(real.read_bytes()[:-3] + b"bad")

    assert m.state(entry, models_dir) is m.ModelState.CORRUPT
    with pytest.raises(ModelError, match=entry.file):
        m.require(entry, models_dir)
    verify = run_cli("models", "verify", "--models-dir", str(models_dir))
    assert verify.returncode != 0
    assert entry.file in verify.stderr and "sha256" in verify.stderr

    # fetch replaces a corrupt file from the cache
    m.fetch([entry], models_dir=models_dir, cache_dir=m.DEFAULT_CACHE_DIR)
    assert m.state(entry, models_dir) is m.ModelState.OK


def test_onnx_loader_refuses_wrong_hash(tmp_path: Path) -> None:
    entry = m.find_entry("yunet")
    if m.state(entry) is not m.ModelState.OK:
        missing("models not fetched; run `make models`")
    copy = tmp_path / entry.file
    data = bytearray(m.require(entry).read_bytes())
    data[len(data) // 2] ^= 0xFF
    copy.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="sha256 mismatch"):
        OnnxModel(copy, sha256=entry.sha256)


def test_missing_model_names_the_command(tmp_path: Path) -> None:
    entry = m.find_entry("scrfd")
    with pytest.raises(ModelError, match="recognizer models fetch --profile insightface"):
        m.require(entry, tmp_path)


def test_unknown_profile_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown profile"):
        m.entries_for(["nope"])


def test_a_trained_model_is_verified_never_downloaded(tmp_path: Path) -> None:
    models_dir = tmp_path / "models"
    (models_dir / "trained").mkdir(parents=True)
    weights = models_dir / "trained" / "tiny.onnx"
    weights.write_bytes(b"not really a graph, only bytes to hash")
    (models_dir / "manifest.toml").write_text(
        f"""[[model]]
name = "tiny"
role = "liveness"
profiles = ["default"]
source = "trained"
training = "python scripts/train_tiny.py --seed 0"
data = "../shared/datasets/pad/nuaa (research use)"
file = "trained/tiny.onnx"
sha256 = "{m.sha256_file(weights)}"
licence = "Apache-2.0"
version = "1"
input = "none"
""",
        encoding="utf-8",
    )
    (entry,) = m.load_manifest(models_dir)

    def no_download(e: m.ModelEntry, cache_dir: Path) -> Path:
        raise AssertionError("a trained model must never be downloaded")

    (result,) = m.fetch([entry], models_dir=models_dir, download=no_download)
    assert result.action == "present"
    weights.write_bytes(b"tampered")
    with pytest.raises(ModelError, match=r"train_tiny\.py"):
        m.fetch([entry], models_dir=models_dir, download=no_download)
    with pytest.raises(ValueError, match="training and data"):
        m.ModelEntry("x", "r", ("default",), "f", "0", "l", "1", "i", source="trained")


def test_a_derived_model_is_made_from_its_base_and_verified(tmp_path: Path) -> None:
    """sface_cpu: fetched from the (cached) sface wheel, transformed, checked by sha256; the
    result computes the same embeddings as the base and runs no slower."""
    import numpy as np

    real = m.find_entry("sface")
    wheel = m._cached_wheel(real, m.DEFAULT_CACHE_DIR)
    if wheel is None:
        missing(f"wheel {real.package} not in {m.DEFAULT_CACHE_DIR}; run `make models`")
    text = (REPO / "models" / "manifest.toml").read_text(encoding="utf-8")
    blocks = ["[[model]]" + b for b in text.split("[[model]]")[1:]]
    keep = [b for b in blocks if 'name = "sface"' in b or 'name = "sface_cpu"' in b]
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    (models_dir / "manifest.toml").write_text("\n".join(keep))

    def no_download(entry: m.ModelEntry, cache: Path) -> Path:
        raise AssertionError("the base is in the wheel cache")

    derived = m.find_entry("sface_cpu", models_dir)
    assert (derived.source, derived.base, derived.transform) == ("derived", "sface", "sface_cpu")
    got = m.fetch([derived], models_dir=models_dir, download=no_download)
    assert [r.action for r in got] == ["derived"]
    assert m.state(derived, models_dir) is m.ModelState.OK
    assert m.state(m.find_entry("sface", models_dir), models_dir) is m.ModelState.OK
    again = m.fetch([derived], models_dir=models_dir, download=no_download)
    assert [r.action for r in again] == ["present"]

    base, _ = m.load("sface", models_dir)
    fast, _ = m.load("sface_cpu", models_dir)
    x = np.random.default_rng(0).uniform(0, 255, (1, 3, 112, 112)).astype(np.float32)
    np.testing.assert_allclose(fast.run(x)[0], base.run(x)[0], atol=1e-4)

    # A transform that does not give the recorded bytes is refused, and nothing is written.
    (models_dir / derived.file).unlink()
    text = (models_dir / "manifest.toml").read_text().replace(derived.sha256, "0" * 64)
    (models_dir / "manifest.toml").write_text(text)
    with pytest.raises(ModelError, match="transform sface_cpu"):
        m.fetch([m.find_entry("sface_cpu", models_dir)], models_dir=models_dir)
    assert not (models_dir / derived.file).exists()


def test_a_derived_model_names_a_known_transform() -> None:
    with pytest.raises(ValueError, match="transform"):
        m.ModelEntry("x", "r", ("default",), "f", "0", "l", "1", "i", source="derived", base="b")
