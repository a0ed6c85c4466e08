"""Plate pipeline: detect -> rectify -> (split two-row) -> read -> grammar -> classify."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError, Executor, Future
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from recognizer import accounting, deadline
from recognizer.models import DEFAULT_MODELS_DIR, ModelInfo, find_entry, require
from recognizer.models import load as load_model
from recognizer.plate.classify import TWO_ROW_CROP_ASPECT, classify, dominant_colour
from recognizer.plate.detector import Candidates, PlateDetection, PlateDetector
from recognizer.plate.grammar import (
    ALNUM,
    DIGITS,
    ISSUER,
    LETTERS_NO_IO,
    PLATE_ALPHABET,
    PROVINCES,
    Mode,
    RankedPlate,
    clean_read,
    is_valid,
    rank_plates,
)
from recognizer.plate.overlay import erase_overlay
from recognizer.plate.province import (
    CLASSES,
    VIEW_MARGIN,
    ProvinceClassifier,
    province_patch,
    province_view,
)
from recognizer.plate.reader import CtcReader, Reading, load_charset_lines
from recognizer.plate.rectify import (
    SINGLE_ROW_SIZE,
    SURELY_TWO_ROW_ASPECT,
    TWO_ROW_MAX_ASPECT,
    TWO_ROW_SIZE,
    corner_aspect,
    split_two_row,
    to_single_row_line,
    top_row,
    warp_plate,
)
from recognizer.plate.types import PlateCandidate, PlateResult, PlateType


class Detector(Protocol):
    def sizes_for(self, image_bgr: np.ndarray) -> tuple[int, ...]: ...
    def detect(
        self,
        image_bgr: np.ndarray,
        sizes: tuple[int, ...] | None = None,
        score_threshold: float | None = None,
        keep: Sequence[PlateDetection] = (),
        settled: Sequence[PlateDetection] = (),
        found: Sequence[Candidates] | None = None,
    ) -> list[PlateDetection]: ...
    def candidates(
        self,
        image_bgr: np.ndarray,
        sizes: tuple[int, ...] | None = None,
        score_threshold: float | None = None,
    ) -> list[Candidates]: ...
    def detect_again(self, image_bgr: np.ndarray) -> list[PlateDetection]: ...


class Reader(Protocol):
    name: str

    def read_batch(self, crops: Sequence[np.ndarray]) -> list[Reading]: ...

    def log_likelihoods(self, reading: Reading, texts: Sequence[str]) -> np.ndarray: ...


@dataclass(frozen=True, slots=True)
class _Choice:
    text: str
    char_probs: tuple[float, ...]
    candidates: tuple[PlateCandidate, ...]
    valid: bool
    reader: str
    score: float  # for comparing two readers' answers
    clean: bool  # the reader's own greedy text is a valid plate (no grammar repair)
    ranked: tuple[RankedPlate, ...] = ()  # every valid plate the grammar found, best first
    guessed: bool = False  # the province was put in, not read (PlateResult.province_guessed)


@dataclass(frozen=True, slots=True)
class _Sight:
    """A plate as the province decision may look at it again: the frame and the detector's
    corners (None for a crop, which is its own view), the plate as read, its layout."""

    image: np.ndarray
    corners: np.ndarray | None
    plate: np.ndarray
    two_row: bool

    def patch(self) -> np.ndarray:
        """The classifier's patch: a frame's plate warped again with a margin (its corners
        may cut into the province glyph); a crop as it is."""
        if self.corners is None:
            return province_patch(self.plate, self.two_row)
        view = province_view(self.image, self.corners, self.two_row)
        return province_patch(view, self.two_row, margin=VIEW_MARGIN)


def _bottom_row_only(text: str) -> bool:
    """A read that is a two-row plate's bottom row (five letters or digits) and nothing else."""
    return len(text) == 5 and all(c in ALNUM for c in text)


def _crop_corners(w: int, h: int) -> np.ndarray:
    return np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float32)


def _layouts(aspect: float, plate_bgr: np.ndarray) -> tuple[bool, ...]:
    """Row layouts worth reading (False = single row, True = two rows), likelier first.

    Only yellow plates are two-row, but perspective (or a rotated crop with background
    around it) makes a single-row plate look as narrow as a two-row one, so a narrowish
    yellow plate is read both ways and the better reading wins (ties go to the first).
    A nearly square plate is read as two-row first, and as one row too: a single-row plate
    turned away from the camera (yaw) is foreshortened to that shape, and its two-row split
    reads as garbage (the upper halves of its characters, then the lower: 川A82M83 at about
    60 degrees read as "AO0U0A82M83"), while the single-row warp reads it whole.
    """
    if aspect < SURELY_TWO_ROW_ASPECT:
        return (True, False)
    if aspect < TWO_ROW_MAX_ASPECT and dominant_colour(plate_bgr) == "yellow":
        return (True, False) if aspect < TWO_ROW_CROP_ASPECT else (False, True)
    return (False,)


# With cross_check (off in production since issue 28): the alternative reader also reads every
# clean line, and its letter replaces the main reader's look-alike digit. Measured with it on
# (1,000 real crops, 600 synthetic crops seed 0, 300 synthetic frames seed 4242): it changed
# 2 reads of 1,900, both from right to wrong (京GU09N6 -> 京GU09NG, 豫G6H9E学 -> 豫GGH9E学),
# for a second model run on every line. The measurement that chose it first:
# Digit -> letter pairs both readers confuse. Measured on crops + CCPD + synthetic where the
# two readers disagree at one position: when PP-OCRv4 reads the digit and clp_v2_c the
# letter, the letter was right 6 times of 6 (0/D, 0/Q, 1/T, 6/G, 7/T); when PP-OCRv4 reads
# the letter and clp the digit, PP-OCRv4 was right 39 of 40. Both lean towards digits, so a
# letter either of them sees is usually there. U, C, Z, S, B complete the look-alikes.
_DIGIT_TO_LETTERS = {"0": "DQUC", "1": "T", "2": "Z", "5": "S", "6": "G", "7": "TZ", "8": "B"}


def _letter_fix(main: _Choice, alt: _Choice, mode: Mode, n: int) -> _Choice:
    """Take the alternative reader's letter where the main reader saw a look-alike digit."""
    if len(main.text) != len(alt.text) or len(main.char_probs) != len(alt.char_probs):
        return main
    chars, probs = list(main.text), list(main.char_probs)
    for i in range(2, len(chars)):
        if alt.text[i] in _DIGIT_TO_LETTERS.get(chars[i], ""):
            chars[i], probs[i] = alt.text[i], alt.char_probs[i]
    return _with_chars(main, chars, probs, mode, n)


def _with_chars(main: _Choice, chars: list[str], probs: list[float], mode: Mode, n: int) -> _Choice:
    """`main` with some characters taken from the other reader (`main` when that is no valid
    plate); the main reader's text stays a candidate, second (of at most `n`)."""
    text = "".join(chars)
    if text == main.text or not is_valid(text, mode):
        return main
    p = float(np.prod(probs))
    cands = (PlateCandidate(text, p), *(c for c in main.candidates if c.text != text))
    return _Choice(text, tuple(probs), cands[:n], True, main.reader, p, True)


# A clean line whose main read holds a character after the province below this probability is
# read by the alternative reader too, and at each such position the alternative reader's
# character is taken when it is at least this sure of it (see _position_vote). Chosen on
# validation data only (`scripts/train_province.py --validate-reads`: all 1,000 real crops,
# 560 synthetic crops seed 2017, 300 synthetic frames seed 4242, 300 far frames seed 4444;
# never the street or scene frames), exact reads and lines the alternative reader read:
# off 988 / 518 / 283 / 219 (alt 8 / 197 / 78 / 197, the unclean lines); 0.5 the same reads
# (alt 9 / 202 / 81 / 201); 0.7 990 / 518 / 283 / 219 (alt 17 / 215 / 89 / 205); 0.9 989 /
# 518 / 283 / 219 (alt 34 / 263 / 104 / 223). A small gain for about 1% more alternative
# reads; no validation read lost at 0.7 (nor on the calibration frames, seed 7; on the
# bench's synthetic crops, seed 1, 519 -> 520).
VOTE_BELOW = 0.7


def doubtful(ch: _Choice, below: float = VOTE_BELOW) -> bool:
    """A clean read with a character after the province below `below`."""
    return ch.clean and len(ch.char_probs) > 1 and min(ch.char_probs[1:]) < below


def _position_vote(main: _Choice, alt: _Choice, mode: Mode, n: int, below: float) -> _Choice:
    """Per position after the province: the alternative reader's letter or digit where the
    main reader's letter or digit was below `below` and the alternative reader at or above it
    (PP-OCRv4 reads a worn F as E at 0.44, F second; clp_v2_c reads F at 0.97). A suffix (学,
    警, ...) is never voted away: clp_v2_c reads a faint one as a digit with high confidence
    (synthetic frames seed 7: 陕Y9797学 -> 陕Y97979). Nor is the main reader's letter given up
    for a digit: both readers lean towards digits (see _DIGIT_TO_LETTERS; synthetic crops
    seed 1: 3 Q read by PP-OCRv4 turned into clp_v2_c's 0, every one wrong)."""
    k = len(main.text)
    if len(alt.text) != k or len(main.char_probs) != k or len(alt.char_probs) != k:
        return main
    chars, probs = list(main.text), list(main.char_probs)
    for i in range(1, k):
        main_c, alt_c = chars[i], alt.text[i]
        swap = main_c in ALNUM and alt_c in ALNUM and main_c != alt_c
        to_digit = main_c in LETTERS_NO_IO and alt_c in DIGITS
        if swap and not to_digit and probs[i] < below <= alt.char_probs[i]:
            chars[i], probs[i] = alt.text[i], alt.char_probs[i]
    return _with_chars(main, chars, probs, mode, n)


# Weight of the province classifier's log-probability against the reader's log-likelihood,
# chosen on validation data only (never the street or scene frames), per path. Re-chosen for
# classifier v2 (40 epochs) with the reader's wider view (READER_VIEW_MARGIN) by
# `scripts/train_province.py --validate-only`; counts are the decisions the classifier is
# asked about (provinces the reader saw below PROVINCE_SURE):
# - read_crop: synthetic crops 112/152 right at 0 (PP-OCRv4 alone), 119 at 0.25, 124 at 1.0,
#   125 at 1.5, 123 at 2 (held-out real crops: 4 such decisions, 4/4 up to 1.5, 3/4 above).
#   1.0, a plain product, stays on the plateau.
# - frames (synthetic scenes seed 4242, far frames 4444, both with the detector's corners cut
#   on the left 4545 + 4646): 261 of 315 right at 0, 266 at 0.1, 265 at 0.25, 261 at 0.5,
#   253 at 0.75, 242 at 1.0: flat to 0.5, so the light touch stays.
PROVINCE_WEIGHT = 0.25
PROVINCE_CROP_WEIGHT = 1.0
# Reads that had lost their province (see _province_repair) get the likeliest one. With the
# reader's wider view the reader sees the glyph the cut line missed, and its belief is the
# better one: on the same validation 32 of 40 such reads got the right province at weight
# 0, 31 at 0.1, 29 at 0.25, 27 at 0.5, 20 at 1.0 (the weight before the wider view). A repair
# makes the read a valid plate whose rest is right and whose province is often a guess,
# with its probability as confidence and the next provinces as candidates, marked as
# guessed (PlateResult.province_guessed) so that the gate never takes it for an exact read.
PROVINCE_REPAIR_WEIGHT = 0.1
# A province glyph painted over or under a sticker is not dropped by the readers: PP-OCRv4 reads
# a faint character into the blank space (or the grammar takes one from the first position's
# alternatives), and the read comes out as another province's plate. What tells it from a read
# province is the reader's own probability of that first character, taken before the province
# is re-decided (a re-decided character holds the posterior over provinces, which is high
# whether or not any glyph was there). Below this the province counts as guessed. Chosen on
# validation data only (`scripts/validate_province_seen.py`, seeded; never the street or scene
# frames) as the largest of a grid that marks at most 0.5% of the correct reads of plates as
# they are: 7 of 1,555 (held-out real crops 1/198, synthetic crops 2/560, frames 1/564, far
# frames 3/233; 0.03 marks 10, 0.01 marks 4). Of the valid reads of the same plates with the
# province painted over it marks 90% on real crops (177/197), 93% on synthetic crops
# (545/588), 99.6% on frames (503/505), 96% on far frames (234/243), where the repair alone
# marked 1-15%; under a sticker 86% (166/194), 87% (505/581), 98% (510/521), 97% (233/241).
PROVINCE_SEEN_MIN = 0.02
# The classifier is asked only about a province the reader saw below this probability: above
# it the reader's own belief stands. Measured with the classifier asked about every valid read
# (1,000 real crops and 600 synthetic crops at weight 1.0, 300 synthetic frames seed 4242 at
# 0.25): the re-decision changed 25 provinces (11 to the right one, 4 from the right one, 10
# from one wrong province to another), every one read below 0.78, so at 0.9 no read changes
# and a sure province costs neither the classifier nor 31 CTC likelihoods.
PROVINCE_SURE = 0.9
# The margin (fraction of the plate width, each side) of the wider line the reader reads
# again when it decides a frame plate's province (below PROVINCE_SURE, or a repair): its
# log-likelihood is averaged with the line's. Real detector corners often cut into the
# province glyph (on the street frames' far plates a third to all of it), and the reader's
# belief in half a glyph is weak. Chosen on validation only (`train_province.py
# --validate-only`, classifier v2 of 40 epochs, weight 0.25; synthetic frames and far
# frames 102/136 right with the line alone, 105 at 0.05 and 0.08, 107 at 0.12, 108 at 0.15;
# with the corners cut on the left 122/179 alone, 149 at 0.05, 156 at 0.08 and 0.12, 157 at
# 0.15; repairs at their weight 0.1: 8, 15, 26, 32, 31 of 40). 0.15, the largest tried, is
# also the classifier's view margin (province.VIEW_MARGIN).
READER_VIEW_MARGIN = VIEW_MARGIN


# The issuing-authority letter O is a special code (GA 36: public-security and other official
# vehicles in some provinces), far rarer than a city letter: none among the 1,000 real crops,
# where 18 other letters occur. A reader's O there (PP-OCRv4 turns a Q, a worn D or a C into
# one) competes with every other letter by the reader's likelihood, with O's taken at this
# prior (a tenth of any other letter's: milder than the crops, where O's share is under 0.3%
# at 95%). Q, D and C are never rewritten to O. Measured: no O was read at the issuer on the
# 1,000 real crops, 1,000 synthetic crops or 300 synthetic scenes, so nothing changes there;
# on 300 synthetic plates that really hold an O, 31 more read as Q (274 -> 243 exact): the
# reader's O against Q is weak evidence, and the rare code pays for it.
ISSUER_O_PRIOR = 0.1


def province_seen(ch: _Choice) -> float:
    """The reader's probability of the first character of a valid read, before the province
    decision (see PROVINCE_SEEN_MIN); 0 for a read without per-character probabilities, which
    gives no evidence that the glyph was seen."""
    return ch.char_probs[0] if ch.char_probs else 0.0


def _one_char_changed(ch: _Choice, text: str, pos: int, prob: float, n: int) -> _Choice:
    """`ch` re-decided to `text`, which differs from it at `pos` alone, with that character's
    probability `prob`. The text as read stays a candidate, second: a gate can still match it."""
    probs = (*ch.char_probs[:pos], prob, *ch.char_probs[pos + 1 :]) if ch.char_probs else ()
    p = float(np.prod(probs)) if probs else 0.0
    cands = (PlateCandidate(text, p), *(c for c in ch.candidates if c.text != text))
    return _Choice(text, probs, cands[:n], True, ch.reader, ch.score, ch.clean, ch.ranked)


def combine_province(ocr_loglik: np.ndarray, cls_logp: np.ndarray, weight: float) -> np.ndarray:
    """Normalised posterior over provinces from both log-beliefs (a weighted product)."""
    z = np.asarray(ocr_loglik, np.float64) + weight * np.asarray(cls_logp, np.float64)
    z = np.exp(z - z.max())
    out: np.ndarray = z / z.sum()
    return out


def _variants(line: np.ndarray) -> list[np.ndarray]:
    """Test-time variants of a plate line: wider context, horizontal stretch, trimmed rows."""
    h, w = line.shape[:2]
    pad = round(w * 0.15)
    trim = round(h * 0.08)
    return [
        cv2.copyMakeBorder(line, 0, 0, pad, pad, cv2.BORDER_REPLICATE),
        cv2.resize(line, (round(w * 1.3), h), interpolation=cv2.INTER_LINEAR),
        line[trim : h - trim] if h - 2 * trim >= 8 else line,
    ]


# Second detector input size for frames at least 1.5x the first (see PlateDetector). Chosen
# on synthetic 1280x960 frames with 70-160 px plates (120 frames): exact reads 53 -> 89 and
# frames with no read 55 -> 20 (1280: 96 and 10, at a larger cost per frame).
DETECTOR_LARGE_SIZE = 960
# A read at or above this confidence (a valid plate whose province was seen) ends a gate
# frame's detector passes: the far-plate pass runs only when the first size found no such read.
# Chosen on synthetic frames only (seeds 4343: 200 frames of 1280x960 with 70-160 px plates;
# 4444: 150 of 1160x720 with 90-240 px plates), plate read exactly with the far pass always
# against skipping it after a sure read: 154 and 136 always; from a bar of 0.1, 0.3 or 0.5,
# 151-152 and 134 (the 960 px pass read some near plates better); from 0.7, 155 and 137 with
# the pass skipped on 63/200 and 89/150 frames; from 0.9, 155 and 136 (50 and 76 skipped).
FAR_PASS_SKIP_CONFIDENCE = 0.7


# PP-OCRv4 reads a plate line padded on the right to this width (see CtcReader.pad_to): it was
# trained on padded lines, and unpadded plates lose characters. Measured on validation data
# (1,000 real crops / 400 synthetic crops seed 0 / 200 synthetic frames seed 4242), exact:
# 320 px 989 / 377 / 187, 256 px 988 / 378 / 188, none 976 / 378 / 187; the pipeline's CPU
# over those sets 63.0 s, 56.7 s and 48.3 s. 256 reads as well as 320 for 10% less CPU.
PP_OCR_PAD_TO = 256


class PlateRecognizer:
    def __init__(
        self,
        detector: Detector | None,
        reader: Reader,
        alt_reader: Reader | None = None,
        mode: Mode = "cn",
        model_versions: tuple[ModelInfo, ...] = (),
        cross_check: bool = False,
        min_unverified_score: float = 0.5,
        province: ProvinceClassifier | None = None,
        province_weight: float = PROVINCE_WEIGHT,
        province_crop_weight: float = PROVINCE_CROP_WEIGHT,
        retry: bool = False,
        province_sure: float = PROVINCE_SURE,
        erase_stamps: bool = True,
        settle_sure: bool = True,
        reader_view_margin: float = READER_VIEW_MARGIN,
        vote_below: float = VOTE_BELOW,
        pool: Executor | None = None,
    ) -> None:
        self.detector = detector
        self.reader = reader
        self.alt_reader = alt_reader
        self.mode: Mode = mode
        self.model_versions = tuple(model_versions)  # reported in responses
        self.cross_check = cross_check and alt_reader is not None
        self.min_unverified_score = min_unverified_score
        self.province = province
        self.province_weight = province_weight  # plates found by the detector
        self.province_crop_weight = province_crop_weight  # read_crop
        self.retry = retry  # a second detector look at frames where nothing was read
        self.province_sure = province_sure  # the classifier is asked below this only
        self.erase_stamps = erase_stamps  # burned-in camera text off warped plates (overlay.py)
        self.settle_sure = settle_sure  # the far pass does not re-read a plate read for sure
        self.reader_view_margin = reader_view_margin  # 0: the province from the line alone
        self.vote_below = vote_below  # 0: no vote between the readers on clean lines
        # Where `read` without `enough` runs the far pass's detector, beside the first pass
        # and its reads (they do not depend on each other); None: one after the other.
        self.pool = pool

    # -- reading -------------------------------------------------------------------------
    def _choose(self, reading: Reading, n: int) -> _Choice:
        # Only the plate alphabet: PP-OCR also reads slashes, frame marks and dealer text.
        greedy, greedy_probs = clean_read(reading.text, reading.char_probs, self.mode)
        ranked = rank_plates(
            reading.alternatives, n, self.mode, leading=reading.leading, trailing=reading.trailing
        )
        if ranked:
            best = ranked[0]
            cands = tuple(PlateCandidate(r.text, r.probability) for r in ranked)
            # A valid greedy read is trusted as is; a grammar repair is scored lower and is
            # re-ranked against the other readers and views by _rescore.
            score = best.probability if best.text == greedy else best.probability * 0.5
            clean = best.text == greedy
            return _Choice(
                best.text, best.char_probs, cands, True, reading.reader, score, clean, tuple(ranked)
            )
        probs = greedy_probs if len(greedy) == len(greedy_probs) else ()
        cands = (PlateCandidate(greedy, float(np.prod(probs)) if probs else 0.0),)
        valid = is_valid(greedy, self.mode)
        return _Choice(greedy, probs, cands if greedy else (), valid, reading.reader, 0.0, False)

    def _rescore(self, views: Sequence[Reading], opts: Sequence[_Choice], n: int) -> _Choice | None:
        """The valid plate the main reader finds likeliest over all views of a line.

        The pool is every reader's and view's grammar-valid candidates; each is scored by
        the main reader's CTC likelihood (all alignments, not one greedy path) averaged in
        log space over the views. On plates no reader got clean this beats trusting a
        weaker reader's clean read: clp_v2_c reads a red 警 or a faint 学 as a digit with
        high confidence, while PP-OCRv4 still gives the suffix far more mass than the digit.
        """
        pool: dict[str, tuple[RankedPlate, str]] = {}
        for opt in opts:
            for r in opt.ranked:
                pool.setdefault(r.text, (r, opt.reader))
        if not pool:
            return None
        texts = list(pool)
        loglik = np.asarray(sum(self.reader.log_likelihoods(v, texts) for v in views) / len(views))
        order = np.argsort(-np.asarray(loglik), kind="stable")[:n]
        cands = tuple(PlateCandidate(texts[j], float(np.exp(loglik[j]))) for j in order)
        best, reader = pool[cands[0].text]
        p = cands[0].probability
        return _Choice(best.text, best.char_probs, cands, True, reader, p, False, (best,))

    def _read_lines(
        self, lines: Sequence[np.ndarray], n: int
    ) -> tuple[list[_Choice], list[Reading]]:
        """The choice for every line, and the main reader's reading of it."""
        with deadline.stage("plate.read"):
            readings = self.reader.read_batch(lines)
        main = [self._choose(r, n) for r in readings]
        others: dict[int, _Choice] = {}  # the alternative reader's reads of unclean lines
        # The alternative reader runs when the main read is not a plate as read, and, with
        # cross_check, on every line to settle digit/letter confusions (see _letter_fix): a
        # clean line costs one model run. It also reads a clean line with a doubtful
        # character, to vote on it (_position_vote).
        redo = [
            i
            for i, c in enumerate(main)
            if not c.clean or self.cross_check or doubtful(c, self.vote_below)
        ]
        if self.alt_reader is not None and redo:
            with deadline.stage("plate.read_alt"):
                alt = self.alt_reader.read_batch([lines[i] for i in redo])
            for i, reading in zip(redo, alt, strict=True):
                other = self._choose(reading, n)
                if not main[i].clean:
                    others[i] = other
                elif other.clean:
                    fixed = main[i]
                    if self.cross_check:
                        fixed = _letter_fix(fixed, other, self.mode, n)
                    main[i] = _position_vote(fixed, other, self.mode, n, self.vote_below)
        # Still no clean read: re-read with a little context or stretch (PP-OCR drops an
        # edge character of tight or squeezed crops) and let the views vote by likelihood.
        redo = [i for i, c in enumerate(main) if not c.clean]
        if redo:
            batch = [v for i in redo for v in _variants(lines[i])]
            k = len(batch) // len(redo)
            with deadline.stage("plate.reread"):
                extra = self.reader.read_batch(batch)
            for j, i in enumerate(redo):
                views = [readings[i], *extra[j * k : (j + 1) * k]]
                second: list[_Choice] = [others[i]] if i in others else []
                opts = [main[i], *second, *(self._choose(r, n) for r in views[1:])]
                main[i] = self._rescore(views, opts, n) or main[i]
        return main, readings

    def _with_top_row(self, ch: _Choice, top: Reading, line: Reading, n: int) -> _Choice:
        """The valid plates of the top row's reading followed by the line's (the bottom row),
        best first; `ch` when the top row does not read as a province and a letter (what a
        single-row plate's upper half, cut where a top row would be, does not)."""
        text, _ = clean_read(top.text, (), self.mode)
        if len(text) != 2 or text[0] not in PROVINCES or text[1] not in ISSUER:
            return ch
        ranked = rank_plates([*top.alternatives, *line.alternatives], n, self.mode)
        if not ranked:
            return ch
        best = ranked[0]
        cands = tuple(PlateCandidate(r.text, r.probability) for r in ranked)
        # A last resort: any layout that read a valid plate as a whole wins over this one
        # (synthetic two-row crops, seed 1: scored as a grammar repair, 2 of 84 read right as
        # a whole took a wrong province from the top row read alone).
        score = 0.0
        probs = best.char_probs
        return _Choice(best.text, probs, cands, True, ch.reader, score, False, tuple(ranked))

    def _issuer_fix(self, ch: _Choice, reading: Reading, n: int) -> _Choice:
        """Re-decide an issuer letter read as O (see ISSUER_O_PRIOR)."""
        if not ch.valid or len(ch.text) < 2 or ch.text[1] != "O":
            return ch
        texts = [ch.text[0] + c + ch.text[2:] for c in ISSUER]
        texts = [t for t in texts if is_valid(t, self.mode)]
        loglik = np.asarray(self.reader.log_likelihoods(reading, texts), np.float64)
        loglik[texts.index(ch.text)] += np.log(ISSUER_O_PRIOR)
        post = np.exp(loglik - loglik.max())
        post /= post.sum()
        k = int(np.argmax(post))
        if texts[k] == ch.text:
            return ch
        return _one_char_changed(ch, texts[k], 1, float(post[k]), n)

    # -- province ----------------------------------------------------------------------------
    def _province_scores(
        self, reading: Reading, texts: Sequence[str], sight: _Sight
    ) -> tuple[np.ndarray, np.ndarray]:
        """For texts that differ in their province only (the k-th text has ``CLASSES[k %
        len(CLASSES)]`` first): the main reader's log-likelihood of each text, and the
        classifier's log-probability of its province.

        On a frame's single-row plate the reader's belief is the mean log-likelihood of its
        line and of a wider line (``province_view`` at ``reader_view_margin``): detector
        corners that cut into the province glyph leave the reader half of it (see
        READER_VIEW_MARGIN)."""
        ocr = np.asarray(self.reader.log_likelihoods(reading, texts), np.float64)
        if sight.corners is not None and not sight.two_row and self.reader_view_margin > 0:
            line = province_view(sight.image, sight.corners, False, self.reader_view_margin)
            with deadline.stage("plate.read"):
                wide = self.reader.read_batch([line])[0]
            ocr = (ocr + np.asarray(self.reader.log_likelihoods(wide, texts), np.float64)) / 2
        if self.province is None:
            return ocr, np.zeros(len(texts))
        cls = self.province.predict([sight.patch()])[0].astype(np.float64)
        cls = np.log(np.maximum(cls, 1e-9))
        return ocr, np.tile(cls, len(texts) // len(CLASSES))

    def _province_fix(
        self, ch: _Choice, reading: Reading, sight: _Sight, n: int, weight: float
    ) -> _Choice:
        """Decide the first character from the reader's and the classifier's beliefs.

        A valid read has its province re-decided (with ``weight``). A read that is no plate
        as it stands but whose rest is a valid plate once a province is put first (the
        reader dropped the province glyph, or read it as something that is not a province)
        gets the likeliest province: every plate has one, and its place is known. Either way
        a province the reader saw below PROVINCE_SEEN_MIN (or put in) is marked as guessed.
        """
        if not ch.text:
            return ch
        if not ch.valid:
            return self._province_repair(ch, reading, sight, n)
        if ch.text[0] not in PROVINCES:
            return ch
        seen = province_seen(ch)
        if self.province is not None and weight > 0 and seen < self.province_sure:
            ch = self._province_redecide(ch, reading, sight, n, weight)
        return ch if seen >= PROVINCE_SEEN_MIN else replace(ch, guessed=True)

    def _province_redecide(
        self, ch: _Choice, reading: Reading, sight: _Sight, n: int, weight: float
    ) -> _Choice:
        texts = [p + ch.text[1:] for p in CLASSES]
        ocr, cls = self._province_scores(reading, texts, sight)
        post = combine_province(ocr, cls, weight)
        k = int(np.argmax(post))
        text = texts[k]
        if text == ch.text:
            return ch
        return _one_char_changed(ch, text, 0, float(post[k]), n)

    def _province_repair(self, ch: _Choice, reading: Reading, sight: _Sight, n: int) -> _Choice:
        # Tails: the read with a province put in front, or with its first character replaced.
        tails: list[tuple[str, tuple[float, ...]]] = []
        if ch.text[0] not in PROVINCES:
            aligned = len(ch.char_probs) == len(ch.text)
            for tail, probs in ((ch.text, ch.char_probs), (ch.text[1:], ch.char_probs[1:])):
                if tail and is_valid(CLASSES[0] + tail, self.mode):
                    tails.append((tail, probs if aligned else ()))
        if not tails:
            return ch
        texts = [p + tail for tail, _ in tails for p in CLASSES]
        ocr, cls = self._province_scores(reading, texts, sight)
        post = combine_province(ocr, cls, PROVINCE_REPAIR_WEIGHT)
        order = np.argsort(-post, kind="stable")[:n]
        cands = []
        for j in order:
            rest = tails[j // len(CLASSES)][1]
            cands.append(PlateCandidate(texts[j], float(post[j] * np.prod(rest))))
        best = int(order[0])
        rest = tails[best // len(CLASSES)][1]
        probs = (float(post[best]), *rest) if rest else ()
        score = cands[0].probability
        return _Choice(
            texts[best], probs, tuple(cands), True, ch.reader, score, False, guessed=True
        )

    def _results(
        self,
        images: Sequence[np.ndarray],
        boxes: Sequence[np.ndarray],
        corners: Sequence[np.ndarray],
        scores: Sequence[float],
        n: int,
        *,
        warp: bool,
    ) -> list[PlateResult]:
        lines: list[np.ndarray] = []
        owner: list[tuple[int, bool, np.ndarray]] = []  # plate index, two-row, plate image
        for i, (img, cor) in enumerate(zip(images, corners, strict=True)):
            single = self._warp(img, cor) if warp else img
            h, w = img.shape[:2]
            aspect = corner_aspect(cor) if warp else w / max(h, 1)
            for two_row in _layouts(aspect, single):
                plate = single
                if two_row:
                    plate = self._warp(img, cor, TWO_ROW_SIZE) if warp else img
                if two_row:
                    lines.append(split_two_row(plate))
                else:
                    lines.append(plate if warp else to_single_row_line(plate))
                owner.append((i, two_row, plate))
        choices, readings = self._read_lines(lines, n)
        # A line read as a two-row plate's bottom row alone lost the top row: the reader
        # skipped the province and letter pasted left of it, or the plate was read as one row
        # (a two-row crop with margins can be as wide as a single-row plate, and the top row's
        # smaller glyphs go unread). The top row is then read on its own.
        lost = [
            k
            for k, ch in enumerate(choices)
            if not ch.valid and _bottom_row_only(ch.text) and self.mode == "cn"
        ]
        if lost:
            for k in lost:
                i, two_row, plate = owner[k]
                if not two_row:
                    plate = self._warp(images[i], corners[i], TWO_ROW_SIZE) if warp else images[i]
                    owner[k] = (i, True, plate)
            with deadline.stage("plate.read"):
                tops = self.reader.read_batch([top_row(owner[k][2]) for k in lost])
            for k, top in zip(lost, tops, strict=True):
                choices[k] = self._with_top_row(choices[k], top, readings[k], n)
        best: dict[int, tuple[_Choice, bool, np.ndarray, Reading]] = {}
        for (i, two_row, plate), ch, rd in zip(owner, choices, readings, strict=True):
            cur = best.get(i)
            if cur is None or (ch.valid, ch.score) > (cur[0].valid, cur[0].score):
                best[i] = (ch, two_row, plate, rd)
        out = []
        for i in range(len(images)):
            ch, two_row, plate, rd = best[i]
            if self.mode == "cn":
                ch = self._issuer_fix(ch, rd, n)
                weight = self.province_weight if warp else self.province_crop_weight
                sight = _Sight(images[i], corners[i] if warp else None, plate, two_row)
                ch = self._province_fix(ch, rd, sight, n, weight)
            ptype = (
                classify(plate, ch.text, two_row=two_row)
                if self.mode == "cn"
                else PlateType.GENERIC
            )
            if not self.is_read(ch.text):  # no plate of any pattern: not a read
                ch = _Choice("", (), (), False, ch.reader, 0.0, False)
            out.append(
                PlateResult(
                    text=ch.text,
                    confidence=float(np.prod(ch.char_probs)) if ch.char_probs else 0.0,
                    char_confidences=tuple(float(p) for p in ch.char_probs),
                    candidates=ch.candidates,
                    box=np.asarray(boxes[i], np.float32),
                    corners=np.asarray(corners[i], np.float32),
                    plate_type=ptype,
                    pattern_valid=ch.valid,
                    detector_score=float(scores[i]),
                    reader=ch.reader,
                    province_guessed=ch.guessed,
                )
            )
        return out

    def _warp(
        self, image: np.ndarray, corners: np.ndarray, size: tuple[int, int] = SINGLE_ROW_SIZE
    ) -> np.ndarray:
        plate = warp_plate(image, corners, size)
        return erase_overlay(plate) if self.erase_stamps else plate

    def is_read(self, text: str) -> bool:
        """A text the pipeline may return: a plate of the mode's grammar, or of the generic
        pattern (a foreign plate, or part of one: counted apart by the bench). Anything else
        (a reader's garbage, a line read twice) is no read, and is returned as none."""
        return is_valid(text, self.mode) or is_valid(text, "generic")

    # -- public API ------------------------------------------------------------------------
    def read(
        self,
        image_bgr: np.ndarray,
        max_candidates: int = 5,
        enough: Callable[[list[PlateResult]], bool] | None = None,
    ) -> list[PlateResult]:
        """Every plate in a frame, in detector order (most confident first); [] if none.

        A frame large enough for the second (far-plate) detector size is first read at the
        first size alone. Without `enough` (ReadPlates: every plate) the second size then
        runs, its boxes join the first size's in one NMS, and only the plates it alone found
        are read (a plate the first size read for sure keeps its box and its read). With
        `enough` (the gate), the first size's answer stands when `enough` accepts it (a read
        names a payer's plate) or when it holds a sure read (`sure_read`:
        a valid plate whose province was seen, at FAR_PASS_SKIP_CONFIDENCE or more: the car
        at the gate is read, and far plates are other cars). With `retry`, a frame where
        nothing was read gets a second detector look (the frame's own size up to 1280 px,
        weaker boxes; see `PlateDetector.detect_again`), whose reads count only when they are
        valid plates."""
        if self.detector is None:
            raise RuntimeError("this PlateRecognizer has no detector; use read_crop")
        sizes = self.detector.sizes_for(image_bgr)
        # Without `enough` the far pass runs whatever the first pass reads: it may start now.
        ahead = self._far_pass_ahead(image_bgr, sizes[1:]) if enough is None else None
        try:
            found = self._read_sizes(self.detector, image_bgr, sizes, max_candidates, enough, ahead)
        finally:
            if ahead is not None:
                ahead.cancel()  # the first pass failed (a deadline) before it was needed
        if found or not self.retry:
            return found
        # Nothing read: a second look (larger, lower threshold; see detect_again). Its weaker
        # boxes count only when they read as a valid plate.
        with deadline.stage("plate.detect"):
            dets = self.detector.detect_again(image_bgr)
        return [r for r in self._kept(self._read_detections(image_bgr, dets, max_candidates))
                if r.pattern_valid]  # fmt: skip

    def _far_pass_ahead(
        self, image_bgr: np.ndarray, far: tuple[int, ...]
    ) -> Future[list[Candidates]] | None:
        """The far pass's detector (`far`: its sizes, if any) started in the pool, beside the
        first pass: on a quiet server the two take a core each."""
        if not far or self.pool is None or self.detector is None:
            return None
        detector = self.detector

        def run() -> list[Candidates]:
            with deadline.stage("plate.detect"):
                return detector.candidates(image_bgr, far)

        try:
            return accounting.submit(self.pool, run)
        except RuntimeError:  # the pool was shut down (the server stops): one after the other
            return None

    def _read_sizes(
        self,
        detector: Detector,
        image_bgr: np.ndarray,
        sizes: tuple[int, ...],
        max_candidates: int,
        enough: Callable[[list[PlateResult]], bool] | None,
        ahead: Future[list[Candidates]] | None,
    ) -> list[PlateResult]:
        with deadline.stage("plate.detect"):
            dets = detector.detect(image_bgr, sizes[:1])
        reads = self._read_detections(image_bgr, dets, max_candidates)
        found = self._kept(reads)
        if len(sizes) > 1 and not (
            enough is not None and (enough(found) or any(self.sure_read(r) for r in found))
        ):
            # A plate read for sure stays as read: the far pass's box of it would be read
            # again (it often outscores the first size's box in the NMS) for no better text.
            sure = [self.settle_sure and self.sure_read(r) for r in reads]
            settled = [d for d, s in zip(dets, sure, strict=True) if s]
            unsure = [d for d, s in zip(dets, sure, strict=True) if not s]
            try:
                done = ahead.result() if ahead is not None else None
            except CancelledError:  # the server stopped the pool: the pass runs here
                done = None
            if done is not None:
                merged = detector.detect(
                    image_bgr, sizes[1:], keep=unsure, settled=settled, found=done
                )
            else:
                with deadline.stage("plate.detect"):
                    merged = detector.detect(image_bgr, sizes[1:], keep=unsure, settled=settled)
            known = {id(d): r for d, r in zip(dets, reads, strict=True)}
            new = [d for d in merged if id(d) not in known]
            more = self._read_detections(image_bgr, new, max_candidates)
            fresh = dict(zip(map(id, new), more, strict=True))
            found = self._kept([known.get(id(d)) or fresh[id(d)] for d in merged])
        return found

    def sure_read(self, read: PlateResult) -> bool:
        """A read that more detector passes cannot improve: a valid plate of the mode whose
        province was seen, at FAR_PASS_SKIP_CONFIDENCE or more."""
        return (
            read.pattern_valid
            and not read.province_guessed
            and read.confidence >= FAR_PASS_SKIP_CONFIDENCE
        )

    def _kept(self, reads: Sequence[PlateResult | None]) -> list[PlateResult]:
        # A detection that reads as nothing is not a plate the caller can use, and a weak
        # one counts only when its text is a valid plate (the detector was trained on blue
        # CCPD plates and scores white and black plates low).
        return [
            r
            for r in reads
            if r is not None
            and r.text
            and (r.detector_score >= self.min_unverified_score or r.pattern_valid)
        ]

    def _read_detections(
        self, image_bgr: np.ndarray, dets: Sequence[PlateDetection], max_candidates: int
    ) -> list[PlateResult]:
        """One result per detection, in order (texts that are no read come back empty)."""
        if not dets:
            return []
        return self._results(
            [image_bgr] * len(dets),
            [d.box for d in dets],
            [d.corners for d in dets],
            [d.score for d in dets],
            max_candidates,
            warp=True,
        )

    def read_crop(self, crop_bgr: np.ndarray, max_candidates: int = 5) -> PlateResult:
        """Read an already cropped, roughly upright plate (no detector)."""
        h, w = crop_bgr.shape[:2]
        box = np.array([0, 0, w, h], np.float32)
        corners = _crop_corners(w, h)
        return self._results([crop_bgr], [box], [corners], [1.0], max_candidates, warp=False)[0]


def build_plate_recognizer(
    models_dir: Path = DEFAULT_MODELS_DIR,
    mode: Mode = "cn",
    detector_size: int = 576,
    detector_large_size: int | None = DETECTOR_LARGE_SIZE,
    province: bool = True,
    pool: Executor | None = None,
) -> PlateRecognizer:
    """The production configuration: clp_det (at two sizes on large frames) + PP-OCRv4 rec,
    clp_v2_c as the fallback, the project's province classifier on the first character.
    `pool`: see PlateRecognizer.pool."""
    models_dir = Path(models_dir)
    det, det_info = load_model("plate_det", models_dir)
    ppocr, ppocr_info = load_model("ppocr_rec", models_dir)
    clp, clp_info = load_model("clp_rec", models_dir)
    clp_dict = require(find_entry("clp_dict", models_dir), models_dir)
    # PP-OCR's dictionary lives in its metadata: class 0 is the blank, the last the space.
    pp_chars = load_charset_lines(ppocr.metadata["character"])
    # PaddleOCR feeds cv2's BGR straight in; measured on the crops BGR reads better.
    main = CtcReader(
        ppocr, pp_chars, 48, rgb=False, candidate_chars=PLATE_ALPHABET, pad_to=PP_OCR_PAD_TO
    )
    clp_chars = load_charset_lines(clp_dict.read_text(encoding="utf-8"))
    alt = CtcReader(clp, clp_chars, 32, rgb=False, fixed_width=160, candidate_chars=PLATE_ALPHABET)
    versions: tuple[ModelInfo, ...] = (det_info, ppocr_info, clp_info)
    classifier = None
    if province:  # off only while training the classifier itself
        prov, prov_info = load_model("province_cls", models_dir)
        versions += (prov_info,)
        classifier = ProvinceClassifier(prov)
    detector = PlateDetector(
        det, input_size=detector_size, score_threshold=0.2, large_size=detector_large_size
    )
    return PlateRecognizer(
        detector,
        main,
        alt,
        mode,
        versions,
        cross_check=False,
        province=classifier,
        retry=True,
        pool=pool,
    )
