"""Result types of the plate pipeline (pure numpy; no gRPC types)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

import numpy as np

from recognizer.models import ModelInfo

if TYPE_CHECKING:  # grammar imports these types
    from recognizer.plate.grammar import Mode


class PlateType(StrEnum):
    UNKNOWN = "unknown"
    BLUE = "blue"
    YELLOW = "yellow"
    YELLOW_TWO_ROW = "yellow_two_row"
    GREEN_NEW_ENERGY = "green_new_energy"
    WHITE_POLICE = "white_police"
    WHITE_OTHER = "white_other"
    BLACK = "black"
    LEARNER = "learner"
    GENERIC = "generic"


@dataclass(frozen=True, slots=True)
class PlateCandidate:
    text: str
    probability: float


@dataclass(frozen=True, slots=True)
class PlateResult:
    text: str  # normalised, no separator dot
    confidence: float  # product of per-character probabilities
    char_confidences: tuple[float, ...]
    candidates: tuple[PlateCandidate, ...]  # best first; candidates[0].text == text
    box: np.ndarray  # (4,) float32 x1, y1, x2, y2 in frame pixels
    corners: np.ndarray  # (4, 2) float32: TL, TR, BR, BL in frame pixels
    plate_type: PlateType
    pattern_valid: bool
    detector_score: float
    reader: str  # model name that produced the text
    # The province character was not read but put in by the pipeline (the read had none, or a
    # non-province first character): a guess, seldom right (see PROVINCE_REPAIR_WEIGHT); or it
    # was read too faintly to have been seen (a glyph painted over, under a sticker: see
    # PROVINCE_SEEN_MIN). Such a text is a candidate, never an exact read of the plate.
    province_guessed: bool = False

    @property
    def candidate_texts(self) -> tuple[str, ...]:
        """The texts that name a plate as a candidate, as the gate and the fusion calibration
        count them: the other candidates, and the text itself when its province was guessed
        (then it names no plate exactly)."""
        return tuple(c.text for c in self.candidates[0 if self.province_guessed else 1 :])


class PlateEngine(Protocol):
    """The plate pipeline as the gate and the servicers see it;
    `recognizer.plate.pipeline.PlateRecognizer` is the one built from real models."""

    @property
    def mode(self) -> Mode: ...

    @property
    def model_versions(self) -> tuple[ModelInfo, ...]: ...

    def read(
        self,
        image_bgr: np.ndarray,
        max_candidates: int = 5,
        enough: Callable[[list[PlateResult]], bool] | None = None,
    ) -> list[PlateResult]:
        """Every plate in a frame, most confident first; `enough` may end the reading early."""
        ...

    def sure_read(self, read: PlateResult) -> bool:
        """A read more passes cannot improve (a valid plate, its province seen, confident)."""
        ...
