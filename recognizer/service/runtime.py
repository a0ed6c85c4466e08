"""What the servicers share: the loaded pipelines, the gallery, and readiness.

Models load in a background thread so the server answers health checks (NOT_SERVING) at
once; calls that need a model before then get FAILED_PRECONDITION, not a hang.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recognizer import maintenance
from recognizer.config import Config
from recognizer.errors import FailedPrecondition
from recognizer.models import shipped_file

log = logging.getLogger("recognizer.runtime")


@dataclass(frozen=True, slots=True)
class Engines:
    """Everything loaded at start-up. Fields are typed loosely so tests can inject fakes."""

    faces: Any  # recognizer.face.pipeline.FacePipeline
    plates: Any  # recognizer.plate.pipeline.PlateRecognizer
    gallery: Any = None  # recognizer.gallery.gallery.Gallery
    identity: Any = None  # recognizer.identity.FaceIdentity
    gate: Any = None  # recognizer.gate.GateEngine
    follower: Any = None  # recognizer.gallery.follower.Follower, on a shared store only
    normalize_plate: Callable[[str], str] = str.upper  # lenient: readers' output, unbinding
    parse_plate: Callable[[str, str], str] = lambda text, field: text.upper()  # (text, field)
    pools: tuple[Executor, ...] = ()  # threads the engines were given; shut down at close

    @property
    def model_versions(self) -> tuple[Any, ...]:
        return (*self.faces.model_versions, *self.plates.model_versions)


EngineFactory = Callable[[Config], Engines]


def face_calibration_path(config: Config) -> Path:
    return shipped_file(f"face_calibration_{config.profile}.json", config.models_dir)


def fusion_path(config: Config) -> Path:
    return shipped_file(f"fusion_{config.profile}.json", config.models_dir)


def liveness_stage(config: Config) -> Any:
    """The liveness stage the config asks for: the shipped model, or the user's (checked
    against its sha256), with the config's thresholds when set."""
    from recognizer.face.liveness import LivenessThresholds, build_liveness

    model_path = Path(config.liveness_model) if config.liveness_model else None
    stage = build_liveness(
        config.models_dir, model_path=model_path, model_sha256=config.liveness_model_sha256
    )
    attack, live = config.liveness_attack_threshold, config.liveness_live_threshold
    if attack >= 0 or live >= 0:
        stage.thresholds = LivenessThresholds(
            attack if attack >= 0 else stage.thresholds.attack,
            live if live >= 0 else stage.thresholds.live,
        )
    return stage


def default_engines(config: Config, clock: Callable[[], float] = time.time) -> Engines:
    """The real pipelines, store and gate; `clock` is the gate's (tests move it)."""
    # Imported here so that `recognizer models fetch` and the CLI client never load models.
    from recognizer.face.calibration import FaceCalibration
    from recognizer.face.pipeline import build_face_pipeline
    from recognizer.fusion import FusionModel
    from recognizer.gallery.follower import FollowedStore, Follower
    from recognizer.gallery.gallery import Gallery
    from recognizer.gate import GateEngine
    from recognizer.gate.evidence import EvidenceGatherer
    from recognizer.identity import FaceIdentity
    from recognizer.imaging import decode
    from recognizer.plate.grammar import normalize, parse_plate
    from recognizer.plate.pipeline import build_plate_recognizer
    from recognizer.service.convert import decision_codec
    from recognizer.store.crypto import cipher_from_env
    from recognizer.store.files import private_dir
    from recognizer.store.open import describe, open_store
    from recognizer.store.schema import SCHEMA_VERSION

    def normalize_plate(text: str) -> str:
        return normalize(text, config.plate_mode)  # bound plates follow the reader's mode

    def parse_client_plate(text: str, field: str) -> str:
        return parse_plate(text, config.plate_mode, field)

    faces = build_face_pipeline(config.profile, config.models_dir, liveness=liveness_stage(config))
    # ReadPlates runs a large frame's far pass here, beside its first pass.
    far_pass = ThreadPoolExecutor(max_workers=4, thread_name_prefix="plate-far")
    plates = build_plate_recognizer(config.models_dir, mode=config.plate_mode, pool=far_pass)
    private_dir(config.data_dir)  # the index file lives here whatever the store
    store = open_store(config, cipher_from_env(warn=True))
    found = store.schema_upgraded_from
    if found == SCHEMA_VERSION:
        log.info("store %s (schema at version %d)", describe(config), found)
    else:
        log.info(
            "store %s (schema found at version %d, migrated to %d)",
            describe(config),
            found,
            SCHEMA_VERSION,
        )
    gallery = Gallery(
        store,
        model=faces.embedding_model_name,
        dim=faces.dim,
        index_path=config.index_path,
        flat_max=config.flat_max,
    )
    gallery.open()
    gallery.check()  # what GetMetrics reports until the checkpoint thread checks again
    follower = None
    if isinstance(store, FollowedStore):  # other nodes write: follow their changes
        follower = Follower(gallery, store, config.replica_poll_s, config.replica_max_lag_s)
        gallery.fresh = follower.fresh
        follower.start()
    calibration = FaceCalibration.load(face_calibration_path(config))
    identity = FaceIdentity(
        faces,
        gallery,
        calibration,
        threshold_bounds=(config.face_threshold_min, config.face_threshold_max),
        enroll_require_liveness=config.enroll_require_liveness,
    )
    gate = None
    if fusion_path(config).is_file():
        fusion = FusionModel.load(fusion_path(config))
        gate = GateEngine(
            evidence=EvidenceGatherer(
                plates=plates,
                identity=identity,
                store=store,
                sure_confidence=fusion.plate.sure_confidence,
            ),
            store=store,
            fusion=fusion,
            policies=config.policies,
            decode=lambda data, field: decode(data, config.limits_for("Authorize"), field),
            encode=decision_codec((*faces.model_versions, *plates.model_versions)),
            parse_plate=parse_client_plate,
            max_clock_skew_s=config.max_clock_skew_s,
            clock=clock,
        )
    return Engines(
        faces,
        plates,
        gallery,
        identity,
        gate,
        follower,
        normalize_plate,
        parse_client_plate,
        pools=(far_pass,),
    )


class Runtime:
    def __init__(self, config: Config, factory: EngineFactory = default_engines) -> None:
        self.config = config
        self._factory = factory
        self._engines: Engines | None = None
        self._error: Exception | None = None
        self._ready = threading.Event()
        self._listeners: list[Callable[[bool], None]] = []
        self._stop = threading.Event()

    def on_change(self, listener: Callable[[bool], None]) -> None:
        self._listeners.append(listener)

    def load(self) -> None:
        t0 = time.perf_counter()
        try:
            self._engines = self._factory(self.config)
        except Exception as exc:
            self._error = exc
            log.error("loading failed: %s", exc)
        else:
            log.info("engines ready in %.2fs", time.perf_counter() - t0)
        self._ready.set()
        for listener in self._listeners:
            listener(self._engines is not None)

    def load_in_background(self) -> threading.Thread:
        t = threading.Thread(target=self.load, name="engine-loader", daemon=True)
        t.start()
        return t

    @property
    def error(self) -> Exception | None:
        """Why loading failed, if it did."""
        return self._error

    def wait(self, timeout: float | None = None) -> bool:
        self._ready.wait(timeout)
        return self._engines is not None

    @property
    def engines(self) -> Engines:
        if self._engines is None:
            if self._error is not None:
                raise FailedPrecondition(
                    f"models failed to load: {self._error}", reason="MODELS_FAILED"
                )
            raise FailedPrecondition(
                "models are still loading; retry shortly", reason="MODELS_LOADING"
            )
        return self._engines

    def every(self, name: str, period_s: float, job: Callable[[], None]) -> None:
        """Run `job` every `period_s` in a daemon thread until close(); a failed run is
        logged and the next one comes on time (a background job never stops the server)."""

        def loop() -> None:
            while not self._stop.wait(period_s):
                try:
                    job()
                except Exception as exc:
                    log.error("%s failed: %s", name, exc)

        threading.Thread(target=loop, name=name, daemon=True).start()

    def start_checkpoints(self) -> None:
        """Persist the index now and then, so a restart replays little, and compare it with
        the store (repairing what disagrees): GetMetrics reports the last comparison."""

        def checkpoint() -> None:
            eng = self._engines
            if eng is not None and eng.gallery is not None:
                try:
                    eng.gallery.checkpoint()
                except Exception as exc:  # a failed checkpoint must not skip the check
                    log.error("checkpoint failed: %s", exc)
                # compares every label (O(N)): here, never in a request
                eng.gallery.check()

        self.every("index consistency check", self.config.checkpoint_seconds, checkpoint)

    def store(self) -> Any:
        """The open store (FAILED_PRECONDITION while models load, None without a gallery)."""
        return getattr(self.engines.gallery, "store", None)

    def start_retention(self) -> None:
        """Purge plate sightings past sightings_retention_days every retention_interval_s
        (each plate's latest kept); a run that purges nothing writes no audit row."""

        def purge() -> None:
            if self._engines is None or self.store() is None:
                return
            maintenance.purge_store(
                self.store(),
                "server:retention",
                "sightings",
                self.config.sightings_retention_days,
                audit_nothing=False,
            )

        self.every("retention", self.config.retention_interval_s, purge)

    def interrupt_store(self) -> None:
        """After the stop's grace: end calls still stuck in the store (SQLite interrupt,
        PostgreSQL cancel); they answer UNAVAILABLE and store nothing."""
        eng = self._engines
        store = getattr(eng.gallery, "store", None) if eng is not None else None
        interrupt = getattr(store, "interrupt", None)
        if interrupt is not None:
            interrupt()

    def close(self) -> None:
        self._stop.set()
        eng = self._engines
        if eng is None:
            return
        if eng.follower is not None:
            eng.follower.stop()
        if eng.gate is not None:
            eng.gate.close()
        for pool in eng.pools:
            pool.shutdown(wait=False, cancel_futures=True)
        if eng.gallery is not None:
            try:
                eng.gallery.close()
            except OSError as exc:  # a full disk: the store is closed, the file not written
                log.warning(
                    "index file not saved (%s): it is rebuilt from the store at the next start",
                    exc.strerror or exc,
                )
