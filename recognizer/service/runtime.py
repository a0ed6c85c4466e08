"""What the servicers share: the loaded pipelines, the gallery, and readiness.

Models load in a background thread so the server answers health checks (NOT_SERVING) at
once; calls that need a model before then get FAILED_PRECONDITION, not a hang.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from recognizer.config import Config
from recognizer.errors import FailedPrecondition

log = logging.getLogger("recognizer.runtime")


@dataclass(frozen=True, slots=True)
class Engines:
    """Everything loaded at start-up. Fields are typed loosely so tests can inject fakes."""

    faces: Any  # recognizer.face.pipeline.FacePipeline
    plates: Any  # recognizer.plate.pipeline.PlateRecognizer
    gallery: Any = None  # recognizer.gallery.gallery.Gallery
    face_calibration: Any = None  # recognizer.face.calibration.FaceCalibration
    gate: Any = None  # recognizer.gate.GateEngine


EngineFactory = Callable[[Config], Engines]


def default_engines(config: Config) -> Engines:
    # Imported here so that `recognizer models fetch` and the CLI client never load models.
    from recognizer.face.pipeline import build_face_pipeline
    from recognizer.plate.pipeline import build_plate_recognizer

    faces = build_face_pipeline(config.profile, config.models_dir)
    plates = build_plate_recognizer(config.models_dir, mode=config.plate_mode)
    return Engines(faces=faces, plates=plates)


class Runtime:
    def __init__(self, config: Config, factory: EngineFactory = default_engines) -> None:
        self.config = config
        self._factory = factory
        self._engines: Engines | None = None
        self._error: Exception | None = None
        self._ready = threading.Event()
        self._listeners: list[Callable[[bool], None]] = []

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

    def close(self) -> None:
        eng = self._engines
        if eng is not None and eng.gallery is not None:
            eng.gallery.close()
