"""Shared fixtures: real servers on loopback port 0, clients per role, sample data paths."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import pytest

from devtools.datasets import DATASETS
from recognizer import models as model_store
from recognizer.client import Client
from recognizer.config import load_config
from recognizer.service.runtime import Runtime
from recognizer.service.server import RunningServer, create_server

REPO = Path(__file__).resolve().parents[1]
KEYS = {"admin": "test-admin-key", "verifier": "test-verifier-key", "gate": "test-gate-key"}
ENV_KEYS = ",".join(f"{role}:{key}" for role, key in KEYS.items())


# Set by .ci/run: there a missing model or sample data is a failure that names it, never a
# quiet skip that lets a green run prove nothing.
STRICT_ENV = "RECOGNIZER_TESTS_STRICT"


def missing(what: str) -> NoReturn:
    """Skip for want of `what` (a model, sample data, a font); fail instead under CI."""
    if _strict():
        pytest.fail(f"missing in CI ({STRICT_ENV}=1): {what}", pytrace=False)
    pytest.skip(what)


def _strict() -> bool:
    return os.environ.get(STRICT_ENV) == "1"


def _fail_a_skip(report: Any) -> None:
    """Under CI a skip is a failure that says what was skipped and why: `missing`, a direct
    `pytest.skip`, `importorskip`, a skip marker or a module skipped at collection alike."""
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped in CI ({STRICT_ENV}=1), which allows no skip: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    if _strict():
        _fail_a_skip(outcome.get_result())  # type: ignore[attr-defined]


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[None]:
    outcome = yield
    if _strict():
        _fail_a_skip(outcome.get_result())  # type: ignore[attr-defined]


def missing_data(path: Path) -> NoReturn:
    """`missing` for sample data, saying how to get it."""
    missing(
        f"sample data {path} is absent. The sample datasets are not in the repository: put "
        f"them in {DATASETS} (the folder `shared/datasets` beside the checkout); "
        "tests/DATASETS.md lists each folder, its layout and its public source"
    )


def dataset(*parts: str) -> Path:
    """A path under ../shared/datasets, or `missing_data` saying how to get it."""
    path = DATASETS.joinpath(*parts)
    if not path.exists():
        missing_data(path)
    return path


def files_in(folder: Path, pattern: str = "*") -> list[Path]:
    """The folder's files, sorted; a test that would loop over none fails instead."""
    found = sorted(p for p in folder.glob(pattern) if p.is_file())
    assert found, f"no files matching {pattern!r} in {folder}"
    return found


def require_models(profile: str = "default") -> None:
    for entry in model_store.entries_for([profile]):
        if model_store.state(entry) is not model_store.ModelState.OK:
            missing(f"model {entry.name} not fetched; run `recognizer models fetch`")


# In-process servers started on the real models this session: start_server without a
# runtime_factory, and loaded_server with one (a clock around the real engines); fakes given to
# start_server are not counted, nor the subprocess nodes of tests/procserver.py. Printed at the
# end of the run.
REAL_MODEL_SERVERS = [0]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    terminalreporter.write_line(f"real-model servers started in-process: {REAL_MODEL_SERVERS[0]}")


def pytest_sessionfinish(session: pytest.Session) -> None:
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # a pytest-xdist worker: the controller adds them up
        workeroutput["real_model_servers"] = REAL_MODEL_SERVERS[0]


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook, on its controller
def pytest_testnodedown(node: Any, error: object) -> None:
    REAL_MODEL_SERVERS[0] += getattr(node, "workeroutput", {}).get("real_model_servers", 0)


def start_server(
    tmp: Path, runtime_factory=None, extra_keys: str = "", *, auth_window=None, **overrides
) -> RunningServer:  # type: ignore[no-untyped-def]
    if runtime_factory is None:
        REAL_MODEL_SERVERS[0] += 1
    keys = ",".join(filter(None, (ENV_KEYS, extra_keys)))
    overrides.setdefault("metrics_port", 0)  # tests that scrape pick a free port themselves
    config = load_config(env={"RECOGNIZER_API_KEYS": keys}, port=0, data_dir=tmp, **overrides)
    runtime = Runtime(config, runtime_factory) if runtime_factory else Runtime(config)
    return create_server(config, runtime, auth_window)  # auth_window: its own clock


@contextmanager
def loaded_server(tmp: Path, **kwargs: Any) -> Iterator[RunningServer]:
    """`start_server` on the real default models, once they are loaded; stopped after."""
    require_models("default")
    if kwargs.get("runtime_factory") is not None:  # real engines behind a factory (a clock)
        REAL_MODEL_SERVERS[0] += 1
    running = start_server(tmp, **kwargs)
    try:
        assert running.runtime.wait(180), "models failed to load"
        yield running
    finally:
        running.stop(grace=1.0)


# The policies of every module on `real_server`, each on gate ids of its own (a module's
# prefix is unique to it: no glob here matches another's gates). A module that needs a
# server-wide setting of its own starts its own server, saying why.
_TRUSTED = {"trust_plate_text": True}  # the plate_text sent stands for the gate's own reader
_QUIET = {"min_travel_seconds": 0, "track_presence": False, **_TRUSTED}
_PLATE_ONLY = {"plate_only_max_minor": 1000, "plate_only_target_far": 0.05}
TEST_POLICIES: list[dict[str, Any]] = [
    # tests/test_gate_attacks_e2e.py: E-, P-, T-, L-, R-, D-, EU-
    {"policy_id": "entry-only", "gates": ["E-*"], "directions": ["entry"], **_QUIET},
    {"policy_id": "presence", "gates": ["P-*"], "track_presence": True, **_TRUSTED},
    {"policy_id": "small-plate-only", "gates": ["T-*"], "plate_only_max_minor": 500, **_QUIET},
    {"policy_id": "liveness", "gates": ["L-*"], "require_liveness": True, **_QUIET},
    {"policy_id": "required", "gates": ["R-*"], "require_direction": True, **_QUIET},
    {
        "policy_id": "entry-default",
        "gates": ["D-*"],
        "directions": ["entry"],
        "default_direction": "entry",
        "min_travel_seconds": 0,
        "track_presence": True,
        **_TRUSTED,
    },
    {"policy_id": "euro", "gates": ["EU-*"], "currency": "EUR", **_QUIET},
    # tests/test_plate_attacks_e2e.py: PA- (an untrusted reader), PT- (a trusted one)
    {"policy_id": "plate-only", "gates": ["PA-*"], "track_presence": False, **_PLATE_ONLY},
    {
        "policy_id": "trusted-reader",
        "gates": ["PT-*"],
        "track_presence": False,
        **_PLATE_ONLY,
        **_TRUSTED,
    },
    # tests/test_gate_e2e.py: G-
    {
        "policy_id": "test-gates",
        "gates": ["G-*"],
        "plate_only_max_minor": 500,
        "target_far": 1e-5,
        "min_travel_seconds": 120,
        "track_presence": True,
        **_TRUSTED,
    },
    # tests/test_gate_integrity_e2e.py: I- (untrusted text and the camera against the text
    # are test_plate_attacks_e2e's); SCOPED_GATE_KEY acts for I-north* and I-east only
    {
        "policy_id": "integrity",
        "gates": ["I-*"],
        **_PLATE_ONLY,
        "target_far": 1e-5,
        "min_travel_seconds": 120,
        "track_presence": False,
        **_TRUSTED,
    },
    # tests/test_bursts_e2e.py: B- (no plate-only tier: every ALLOW there needs the face)
    {
        "policy_id": "bursts",
        "gates": ["B-*"],
        "plate_only_max_minor": 0,
        "target_far": 1e-5,
        "min_travel_seconds": 0,
        "track_presence": False,
    },
]
SCOPED_GATE_KEY = "scoped-gate-key"


def policy_named(policy_id: str) -> dict[str, Any]:
    """The entry of `TEST_POLICIES` named `policy_id` (a test that checks against its limits)."""
    return next(p for p in TEST_POLICIES if p["policy_id"] == policy_id)


@pytest.fixture(scope="session")
def real_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One server on the real default models, shared by the end-to-end tests: it carries
    every module's gate policies (`TEST_POLICIES`); gates no policy names get default-safe."""
    from recognizer.policy import PolicySet

    with loaded_server(
        tmp_path_factory.mktemp("server"),
        extra_keys=f"gate@I-north*|I-east:{SCOPED_GATE_KEY}",
        policies=PolicySet.from_config(TEST_POLICIES),
    ) as running:
        yield running


@pytest.fixture(scope="module")
def c(server: RunningServer) -> Iterator[Client]:
    """An admin client of the module's own `server` fixture."""
    client = client_for(server, "admin")
    yield client
    client.close()


def client_for(running: RunningServer, role: str | None) -> Client:
    # No retries: the tests see each refusal (tests/test_client_retry.py tests retrying).
    return Client.connect(f"127.0.0.1:{running.port}", KEYS[role] if role else "", retry=False)


@pytest.fixture()
def admin(real_server: RunningServer) -> Iterator[Client]:
    c = client_for(real_server, "admin")
    yield c
    c.close()


@contextmanager
def local_postgres(prefix: str = "recognizer-pg-") -> Iterator[Any]:
    """A throwaway PostgreSQL on 127.0.0.1 (devtools/pg_local.py), `missing` without the
    server binaries; stopped and removed afterwards."""
    from devtools import pg_local

    try:
        pg_local.bindir()
    except pg_local.PostgresUnavailable as exc:
        missing(str(exc))
    with pg_local.throwaway(durable=False, prefix=prefix) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Any]:
    """One PostgreSQL for the session; each test takes a database of its own from `pg_url`."""
    with local_postgres() as cluster:
        yield cluster


@pytest.fixture()
def pg_url(pg_cluster) -> str:  # type: ignore[no-untyped-def]
    """A new, empty database of the session's PostgreSQL."""
    import uuid

    return pg_cluster.create_database(f"t_{uuid.uuid4().hex[:12]}")  # type: ignore[attr-defined]
