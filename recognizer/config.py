"""Service configuration: embedded defaults, an optional TOML file, then environment overrides.

API keys are kept as sha256 hashes. Plain keys only ever arrive through the environment
(`RECOGNIZER_API_KEYS="admin:KEY,gate:KEY"`) and are hashed on load.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import tomllib
from dataclasses import dataclass, field, fields, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from recognizer.imaging import ImageLimits
from recognizer.models import DEFAULT_MODELS_DIR, PROFILES
from recognizer.policy import PolicySet


class Role(StrEnum):
    GATE = "gate"
    VERIFIER = "verifier"
    ADMIN = "admin"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class ApiKey:
    sha256: str
    role: Role
    name: str = ""
    # Gate keys: gate_id glob patterns this key may act for (Authorize). Empty: any gate.
    gates: tuple[str, ...] = ()

    def may_act_for(self, gate_id: str) -> bool:
        return not self.gates or any(fnmatch.fnmatchcase(gate_id, p) for p in self.gates)


@dataclass(frozen=True, slots=True)
class TlsConfig:
    cert: Path | None = None
    key: Path | None = None
    client_ca: Path | None = None  # set => mTLS: clients must present a cert signed by it

    @property
    def enabled(self) -> bool:
        return self.cert is not None and self.key is not None


@dataclass(frozen=True, slots=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 50051
    data_dir: Path = Path("var")
    models_dir: Path = DEFAULT_MODELS_DIR
    profile: str = "default"
    plate_mode: str = "cn"  # "cn" or "generic"
    api_keys: tuple[ApiKey, ...] = ()
    tls: TlsConfig = field(default_factory=TlsConfig)
    image_limits: ImageLimits = field(default_factory=ImageLimits)
    policies: PolicySet = field(default_factory=PolicySet)
    max_message_bytes: int = 16 * 1024 * 1024
    # Handler threads are cheap while idle; the admission bounds below are what limit work.
    max_workers: int = 48
    max_in_flight: int = 4  # per method, running at once (2 cores: more only adds latency)
    max_queue: int = 8  # per method, waiting for a slot; beyond: RESOURCE_EXHAUSTED at once
    max_queue_wait_s: float = 5.0
    min_deadline_ms: int = 5  # a call with less time left is refused before work starts
    flat_max: int = 100_000
    face_threshold_min: float = 0.2  # per-request threshold overrides must stay in bounds
    face_threshold_max: float = 0.95
    allow_shared_plates: bool = False
    max_clock_skew_s: float = 600.0  # Authorize observed_at further from server time: refused
    checkpoint_seconds: float = 30.0
    retention_days: int = 365
    store_images: bool = False
    # Liveness (presentation-attack detection, README "Liveness"). The shipped model runs on
    # every face; a user's ONNX model replaces it when `liveness_model` names one, and then
    # `liveness_model_sha256` must be its sha256. Thresholds < 0: the model's own metadata.
    liveness_model: str = ""
    liveness_model_sha256: str = ""
    liveness_attack_threshold: float = -1.0
    liveness_live_threshold: float = -1.0
    enroll_require_liveness: bool = False  # EnrollFace refuses a likely attack

    @property
    def db_path(self) -> Path:
        return self.data_dir / "recognizer.db"

    @property
    def index_path(self) -> Path:
        return self.data_dir / f"faces-{self.profile}.faiss"


def _parse_env_keys(raw: str) -> tuple[ApiKey, ...]:
    """`ROLE:KEY` or, for gate keys scoped to gates, `gate@PATTERN|PATTERN:KEY`."""
    keys = []
    for item in filter(None, (p.strip() for p in raw.split(","))):
        head, sep, key = item.partition(":")
        role, _, scope = head.partition("@")
        if not sep or not key:
            raise ValueError("RECOGNIZER_API_KEYS entries look like ROLE:KEY or gate@P1-*|P2-*:KEY")
        gates = tuple(filter(None, scope.split("|")))
        digest = hash_key(key)
        # Each key gets its own name (logs, audit), never the key itself.
        keys.append(ApiKey(digest, Role(role), name=f"env-{role}-{digest[:8]}", gates=gates))
    return tuple(keys)


def _coerce(cfg: Config, name: str, value: Any) -> Any:
    current = getattr(cfg, name)
    if isinstance(current, bool):
        return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")
    if isinstance(current, Path):
        return Path(value)
    if isinstance(current, int | float | str):
        return type(current)(value)
    return value


def load_config(
    path: Path | None = None, env: dict[str, str] | None = None, **overrides: Any
) -> Config:
    """Defaults < TOML file < RECOGNIZER_* environment < explicit overrides."""
    env = dict(os.environ) if env is None else env
    cfg = Config()
    data: dict[str, Any] = {}
    if path is not None:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    simple = {f.name for f in fields(Config)} - {"api_keys", "tls", "image_limits", "policies"}
    changes: dict[str, Any] = {}
    for name in simple:
        if name in data:
            changes[name] = _coerce(cfg, name, data[name])
        env_name = f"RECOGNIZER_{name.upper()}"
        if env_name in env:
            changes[name] = _coerce(cfg, name, env[env_name])
    keys = [
        ApiKey(k["sha256"], Role(k["role"]), k.get("name", ""), tuple(k.get("gates", ())))
        for k in data.get("api_keys", [])
    ]
    keys.extend(_parse_env_keys(env.get("RECOGNIZER_API_KEYS", "")))
    changes["api_keys"] = tuple(keys)
    if "tls" in data:
        t = data["tls"]
        changes["tls"] = TlsConfig(
            *(Path(t[k]) if t.get(k) else None for k in ("cert", "key", "client_ca"))
        )
    if "image_limits" in data:
        changes["image_limits"] = ImageLimits(**data["image_limits"])
    if "policies" in data:
        changes["policies"] = PolicySet.from_config(data["policies"])
    changes.update(overrides)
    cfg = replace(cfg, **changes)
    if cfg.profile not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES}, got {cfg.profile!r}")
    if cfg.plate_mode not in ("cn", "generic"):
        raise ValueError("plate_mode must be 'cn' or 'generic'")
    if bool(cfg.liveness_model) != bool(cfg.liveness_model_sha256):
        raise ValueError(
            "liveness_model and liveness_model_sha256 go together: a user's liveness model "
            "runs only when its sha256 (`sha256sum MODEL`) is given"
        )
    for name in ("liveness_attack_threshold", "liveness_live_threshold"):
        if getattr(cfg, name) > 1.0:
            raise ValueError(f"{name} must be within 0..1 (or < 0 for the model's own)")
    return cfg
