"""Shared fixtures: real servers on loopback port 0, clients per role, sample data paths."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from recognizer import models as model_store
from recognizer.client import Client
from recognizer.config import load_config
from recognizer.service.runtime import Runtime
from recognizer.service.server import RunningServer, create_server

REPO = Path(__file__).resolve().parents[1]
DATASETS = REPO.parent / "shared" / "datasets"
KEYS = {"admin": "test-admin-key", "verifier": "test-verifier-key", "gate": "test-gate-key"}
ENV_KEYS = ",".join(f"{role}:{key}" for role, key in KEYS.items())


def dataset(*parts: str) -> Path:
    """A path under ../shared/datasets, or a skip saying it is absent."""
    path = DATASETS.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"sample data {path} is absent (expected ../shared/datasets beside the repo)")
    return path


def require_models(profile: str = "default") -> None:
    for entry in model_store.entries_for([profile]):
        if model_store.state(entry) is not model_store.ModelState.OK:
            pytest.skip(f"model {entry.name} not fetched; run `recognizer models fetch`")


def start_server(
    tmp: Path, runtime_factory=None, extra_keys: str = "", **overrides
) -> RunningServer:  # type: ignore[no-untyped-def]
    keys = ",".join(filter(None, (ENV_KEYS, extra_keys)))
    config = load_config(env={"RECOGNIZER_API_KEYS": keys}, port=0, data_dir=tmp, **overrides)
    runtime = Runtime(config, runtime_factory) if runtime_factory else Runtime(config)
    return create_server(config, runtime)


@pytest.fixture(scope="session")
def real_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One server on the real default models, shared by the end-to-end tests."""
    require_models("default")
    running = start_server(tmp_path_factory.mktemp("server"))
    assert running.runtime.wait(180), "models failed to load"
    yield running
    running.stop(grace=1.0)


def client_for(running: RunningServer, role: str | None) -> Client:
    return Client.connect(f"127.0.0.1:{running.port}", KEYS[role] if role else "")


@pytest.fixture()
def admin(real_server: RunningServer) -> Iterator[Client]:
    c = client_for(real_server, "admin")
    yield c
    c.close()
