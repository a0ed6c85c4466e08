"""Service configuration: embedded defaults, an optional TOML file, then environment overrides.

API keys are kept as sha256 hashes. Plain keys only ever arrive through the environment
(`RECOGNIZER_API_KEYS="admin:KEY,gate:KEY"`) and are hashed on load.
"""

from __future__ import annotations

import difflib
import fnmatch
import hashlib
import os
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field, fields, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from recognizer import tracing
from recognizer.imaging import ImageLimits
from recognizer.models import DEFAULT_MODELS_DIR, PROFILES
from recognizer.policy import PolicySet

# The RPCs that take images; each may have its own pixel cap (`rpc_max_pixels`).
IMAGE_RPCS = ("DetectFaces", "ReadPlates", "VerifyFace", "IdentifyFace", "EnrollFace", "Authorize")


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
    metrics_port: int = 9464  # Prometheus /metrics (and /healthz, /readyz); 0 turns it off
    metrics_host: str = "127.0.0.1"  # loopback unless asked: the endpoint has no auth
    data_dir: Path = Path("var")
    models_dir: Path = DEFAULT_MODELS_DIR
    profile: str = "default"
    plate_mode: Literal["cn", "generic"] = "cn"
    api_keys: tuple[ApiKey, ...] = ()
    tls: TlsConfig = field(default_factory=TlsConfig)
    image_limits: ImageLimits = field(default_factory=ImageLimits)
    # RPC name (IMAGE_RPCS) -> pixel cap for its images, instead of image_limits.max_pixels.
    rpc_max_pixels: dict[str, int] = field(default_factory=dict)
    policies: PolicySet = field(default_factory=PolicySet)
    max_message_bytes: int = 16 * 1024 * 1024  # responses; requests: see max_receive_bytes
    # An Authorize burst's frames together (README "Bursts"): three frames at the byte limit.
    authorize_max_bytes: int = 30 * 1024 * 1024
    # Handler threads are cheap while idle; the admission bounds below are what limit work.
    max_workers: int = 48
    max_in_flight: int = 4  # per method, running at once (2 cores: more only adds latency)
    max_queue: int = 8  # per method, waiting for a slot; beyond: RESOURCE_EXHAUSTED at once
    max_queue_wait_s: float = 5.0
    # A call with less time left is refused before work starts, and an admitted call's
    # budget ends this much before its deadline, for the answer's way back to the caller.
    min_deadline_ms: int = 50
    # Memory after bursts (see recognizer/memory.py): glibc malloc arenas (0: glibc's
    # default of 8 per core), and the idle seconds after which free memory is given back
    # (0: never).
    malloc_arena_max: int = 2
    idle_trim_s: float = 1.0
    flat_max: int = 100_000
    face_threshold_min: float = 0.2  # per-request threshold overrides must stay in bounds
    face_threshold_max: float = 0.95
    allow_shared_plates: bool = False
    max_clock_skew_s: float = 600.0  # Authorize observed_at further from server time: refused
    checkpoint_seconds: float = 30.0
    retention_days: int = 365
    # Plate sightings are a movement history: the server purges them past this age every
    # retention_interval_s (each plate's latest kept: a parked car keeps its entry).
    sightings_retention_days: int = 30
    retention_interval_s: float = 3600.0
    # `serve` refuses to start without a template key (RECOGNIZER_TEMPLATE_KEY): personal
    # data would lie in plaintext. Development data directories (`make serve`) set this.
    allow_plaintext: bool = False
    # Liveness (presentation-attack detection, README "Liveness"). The shipped model runs on
    # every face; a user's ONNX model replaces it when `liveness_model` names one, and then
    # `liveness_model_sha256` must be its sha256. Thresholds < 0: the model's own metadata.
    liveness_model: str = ""
    liveness_model_sha256: str = ""
    liveness_attack_threshold: float = -1.0
    liveness_live_threshold: float = -1.0
    enroll_require_liveness: bool = False  # EnrollFace refuses a likely attack or uncertain face
    # Storage (README "Several nodes"): empty or a file path is SQLite (a relative path is
    # under data_dir); postgresql://... is PostgreSQL, shared by every node, with a pool.
    database_url: str = ""
    database_pool_size: int = 8
    # A node's FAISS replica follows the shared store: woken by NOTIFY, polling as well.
    # While it is more than replica_max_lag_s behind, recognition and the gate report
    # NOT_SERVING and 1:N searches are refused rather than answered from a stale gallery.
    replica_poll_s: float = 0.5
    replica_max_lag_s: float = 2.0
    # AdminService.WatchDecisions: streams open at once (each holds a worker thread).
    watch_max_streams: int = 8
    # OpenTelemetry spans per request and stage (recognizer/tracing.py, the `tracing` extra):
    # "" exports nothing of ours; "console" prints them.
    trace_exporter: str = ""
    # Faults of the store (README "Operations"). A node that starts while PostgreSQL is down
    # waits for it this long (retrying, NOT_SERVING), then exits 2; reconnects back off at
    # most database_retry_max_s, so the first success comes soon after the database returns.
    database_wait_s: float = 60.0
    database_retry_max_s: float = 1.0
    # On SIGTERM: health NOT_SERVING this long before the port closes (load balancers move
    # away), then calls in flight get stop_grace_s to finish; a call still stuck in the store
    # after it is interrupted.
    drain_s: float = 2.0
    stop_grace_s: float = 10.0

    def limits_for(self, rpc: str) -> ImageLimits:
        """The image limits of one RPC: image_limits with that RPC's pixel cap."""
        cap = self.rpc_max_pixels.get(rpc)
        return self.image_limits if cap is None else replace(self.image_limits, max_pixels=cap)

    @property
    def max_receive_bytes(self) -> int:
        """gRPC's own request cap: room for an Authorize burst at authorize_max_bytes (and for
        two images at the byte limit), plus 2 MiB for the other fields. Below it the handler
        refuses an oversized image or burst with INVALID_ARGUMENT; above it gRPC answers
        RESOURCE_EXHAUSTED itself."""
        frames = max(2 * self.image_limits.max_bytes, self.authorize_max_bytes)
        return frames + 2 * 1024 * 1024

    @property
    def uses_postgres(self) -> bool:
        return self.database_url.startswith(POSTGRES_SCHEMES)

    @property
    def db_path(self) -> Path:
        """The SQLite file (when database_url is not PostgreSQL's)."""
        if self.database_url and not self.uses_postgres:
            return self.data_dir / Path(self.database_url)  # an absolute path stays as it is
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


def _parse_rpc_pixels(raw: str | dict[str, Any]) -> dict[str, int]:
    """`{"ReadPlates": 24000000}` from TOML, or "ReadPlates=24000000,..." from the env."""
    if isinstance(raw, str):
        pairs = [p.partition("=") for p in filter(None, (q.strip() for q in raw.split(",")))]
        if any(not sep for _, sep, _ in pairs):
            raise ValueError("RECOGNIZER_RPC_MAX_PIXELS entries look like RPC=PIXELS")
        raw = {name.strip(): value for name, _, value in pairs}
    unknown = set(raw) - set(IMAGE_RPCS)
    if unknown:
        raise ValueError(f"rpc_max_pixels: unknown RPCs {sorted(unknown)}; use {IMAGE_RPCS}")
    return {name: int(value) for name, value in raw.items()}


POSTGRES_SCHEMES = ("postgresql://", "postgres://")


class ConfigError(ValueError):
    """A setting that is unknown, of the wrong type or out of range: start-up stops."""


# RECOGNIZER_* variables that are not config fields: the client's, the keys', the log
# level's (`serve --log-level`), the tests'.
OTHER_ENV = frozenset(
    {
        "RECOGNIZER_API_KEY",
        "RECOGNIZER_API_KEY_FILE",
        "RECOGNIZER_TARGET",
        "RECOGNIZER_LOG_LEVEL",
        "RECOGNIZER_API_KEYS",
        "RECOGNIZER_TEMPLATE_KEY",
        "RECOGNIZER_TEMPLATE_KEY_NEW",
        "RECOGNIZER_TESTS_STRICT",
    }
)
_TABLE_KEYS = {
    "tls": {"cert", "key", "client_ca"},
    "image_limits": {f.name for f in fields(ImageLimits)},
    "api_keys": {"sha256", "role", "name", "gates"},
}
# name -> (lowest, highest) allowed; None: unbounded on that side.
_RANGES: dict[str, tuple[float | None, float | None]] = {
    "port": (0, 65535),
    "metrics_port": (0, 65535),
    "max_message_bytes": (1024, None),
    "max_workers": (1, None),
    "max_in_flight": (1, None),
    "max_queue": (0, None),
    "max_queue_wait_s": (0.001, None),
    "min_deadline_ms": (0, None),
    "malloc_arena_max": (0, None),
    "idle_trim_s": (0, None),
    "flat_max": (1, None),
    "face_threshold_min": (-1.0, 1.0),
    "face_threshold_max": (-1.0, 1.0),
    "max_clock_skew_s": (1, None),
    "checkpoint_seconds": (0.1, None),
    "retention_days": (1, None),
    "sightings_retention_days": (1, None),
    "retention_interval_s": (0.05, 86400),
    "database_pool_size": (1, 1000),
    "replica_poll_s": (0.01, 60),
    "replica_max_lag_s": (0.1, None),
    "watch_max_streams": (0, 1000),
    "database_wait_s": (0, 86400),
    "database_retry_max_s": (0.05, 60),
    "drain_s": (0, 600),
    "stop_grace_s": (0, 3600),
}


def _unknown(kind: str, name: str, valid: Iterable[str]) -> ConfigError:
    near = difflib.get_close_matches(name, sorted(valid), n=1, cutoff=0.6)
    hint = f"; did you mean {near[0]!r}?" if near else f"; valid: {', '.join(sorted(valid))}"
    return ConfigError(f"unknown {kind} {name!r}{hint}")


def _check_names(data: dict[str, Any], env: dict[str, str], simple: set[str]) -> None:
    top = {f.name for f in fields(Config)}
    for key, value in data.items():
        if key not in top:
            raise _unknown("setting in the config file", key, top)
        tables = value if key == "api_keys" else [value]
        for table in tables if key in _TABLE_KEYS else ():
            for sub in table:
                if sub not in _TABLE_KEYS[key]:
                    raise _unknown(f"setting [{key}]", sub, _TABLE_KEYS[key])
    allowed = {f"RECOGNIZER_{n.upper()}" for n in simple | {"rpc_max_pixels"}} | OTHER_ENV
    for var in env:
        if var.startswith("RECOGNIZER_") and var not in allowed:
            raise _unknown("environment variable", var, allowed)


def _coerce(cfg: Config, name: str, value: Any) -> Any:
    current = getattr(cfg, name)
    try:
        if isinstance(current, bool):
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text not in ("1", "true", "yes", "0", "false", "no"):
                raise ValueError(value)
            return text in ("1", "true", "yes")
        if isinstance(current, Path):
            return Path(value)
        if isinstance(current, int | float) and not isinstance(value, int | float | str):
            raise TypeError(value)
        if isinstance(current, int | float | str):
            return type(current)(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} = {value!r} is not a {type(current).__name__}") from None
    return value


def _check_ranges(cfg: Config) -> None:
    for name, (lo, hi) in _RANGES.items():
        value = getattr(cfg, name)
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            bounds = f"{'' if lo is None else lo}..{'' if hi is None else hi}"
            raise ConfigError(f"{name} = {value} is out of range ({bounds})")
    if cfg.face_threshold_min >= cfg.face_threshold_max:
        raise ConfigError("face_threshold_min must be below face_threshold_max")
    for name in ("max_bytes", "max_pixels", "max_side", "min_side"):
        if getattr(cfg.image_limits, name) <= 0:
            raise ConfigError(f"image_limits.{name} must be positive")


def load_config(
    path: Path | None = None, env: dict[str, str] | None = None, **overrides: Any
) -> Config:
    """Defaults < TOML file < RECOGNIZER_* environment < explicit overrides."""
    env = dict(os.environ) if env is None else env
    cfg = Config()
    data: dict[str, Any] = {}
    if path is not None:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    nested = {"api_keys", "tls", "image_limits", "policies", "rpc_max_pixels"}
    simple = {f.name for f in fields(Config)} - nested
    _check_names(data, env, simple)
    changes: dict[str, Any] = {}
    for name in simple:
        if name in data:
            changes[name] = _coerce(cfg, name, data[name])
        env_name = f"RECOGNIZER_{name.upper()}"
        if env_name in env:
            changes[name] = _coerce(cfg, name, env[env_name])
    try:
        keys = [
            ApiKey(k["sha256"], Role(k["role"]), k.get("name", ""), tuple(k.get("gates", ())))
            for k in data.get("api_keys", [])
        ]
        keys.extend(_parse_env_keys(env.get("RECOGNIZER_API_KEYS", "")))
    except (KeyError, ValueError) as exc:
        roles = ", ".join(r.value for r in Role)
        raise ConfigError(f"api_keys: {exc} (roles: {roles}; sha256 is required)") from None
    changes["api_keys"] = tuple(keys)
    if "tls" in data:
        t = data["tls"]
        changes["tls"] = TlsConfig(
            *(Path(t[k]) if t.get(k) else None for k in ("cert", "key", "client_ca"))
        )
    if "image_limits" in data:
        changes["image_limits"] = ImageLimits(**data["image_limits"])
    if "rpc_max_pixels" in data:
        changes["rpc_max_pixels"] = _parse_rpc_pixels(data["rpc_max_pixels"])
    if "RECOGNIZER_RPC_MAX_PIXELS" in env:
        changes["rpc_max_pixels"] = _parse_rpc_pixels(env["RECOGNIZER_RPC_MAX_PIXELS"])
    if "policies" in data:
        try:
            changes["policies"] = PolicySet.from_config(data["policies"])
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"[[policies]]: {exc}") from None
    changes.update(overrides)
    cfg = replace(cfg, **changes)
    if cfg.profile not in PROFILES:
        raise ConfigError(f"profile must be one of {PROFILES}, got {cfg.profile!r}")
    if cfg.plate_mode not in ("cn", "generic"):
        raise ConfigError("plate_mode must be 'cn' or 'generic'")
    if cfg.trace_exporter not in tracing.EXPORTERS:
        raise ConfigError(f"trace_exporter must be one of {tracing.EXPORTERS}")
    if bool(cfg.liveness_model) != bool(cfg.liveness_model_sha256):
        raise ConfigError(
            "liveness_model and liveness_model_sha256 go together: a user's liveness model "
            "runs only when its sha256 (`sha256sum MODEL`) is given"
        )
    for name in ("liveness_attack_threshold", "liveness_live_threshold"):
        if getattr(cfg, name) > 1.0:
            raise ConfigError(f"{name} must be within 0..1 (or < 0 for the model's own)")
    if "://" in cfg.database_url and not cfg.uses_postgres:
        raise ConfigError(
            f"database_url must be empty, a SQLite file path or postgresql://..., got a "
            f"{cfg.database_url.split('://')[0]}:// URL"
        )
    _check_ranges(cfg)
    return cfg
