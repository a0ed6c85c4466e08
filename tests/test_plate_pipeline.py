"""Plate pipeline: grammar, CTC decoding, geometry, colour, orchestration, real models."""

from __future__ import annotations

import itertools
import re
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from recognizer.plate import grammar, pipeline
from recognizer.plate.classify import classify
from recognizer.plate.detector import PlateDetection, PlateDetector, _priors
from recognizer.plate.grammar import PROVINCES
from recognizer.plate.pipeline import (
    PROVINCE_SEEN_MIN,
    PROVINCE_SURE,
    PlateRecognizer,
    combine_province,
)
from recognizer.plate.reader import CtcReader, Reading, ctc_greedy, ctc_log_likelihoods
from recognizer.plate.rectify import split_two_row, warp_plate
from recognizer.plate.types import PlateResult, PlateType
from tests.conftest import files_in, missing, missing_data

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"
DATA = REPO.parent / "shared" / "datasets" / "plates"


# -- grammar ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text",
    [
        "皖A12345",
        "京AD12345",
        "粤B12345F",
        "粤A1234警",
        "川A123L学",
        "粤Z1234港",
        "使014578",
        "京O12345",
    ],
)
def test_valid_cn_formats(text: str) -> None:
    assert grammar.is_valid(text)


@pytest.mark.parametrize(
    "text",
    [
        "皖A1234",
        "皖A123456",
        "AA12345",
        "皖1A2345",
        "皖AI2345",
        "皖AO2345",
        "京AZ12345",
        "皖A12警45",
    ],
)
def test_invalid_cn_formats(text: str) -> None:
    assert not grammar.is_valid(text)


def test_normalize_position_aware_and_dot() -> None:
    assert grammar.normalize("皖A·O1I2Q") == "皖A0112Q"  # O/I fixed from position 3 on
    assert grammar.normalize("京O.12345") == "京O12345"  # the issuer O is kept
    assert grammar.normalize("皖A 12Q45") == "皖A12Q45"  # Q is never mapped to 0
    assert grammar.normalize("ｂj１２３") == "BJ123"  # full-width folded


def test_generic_mode() -> None:
    assert grammar.is_valid("ABC1234", "generic")
    assert not grammar.is_valid("皖A12345", "generic")
    assert grammar.normalize("ab-O12", "generic") == "ABO12"  # no cn O/I fixes


def _alts(*positions: Sequence[tuple[str, float]]) -> list[list[tuple[str, float]]]:
    return [list(p) for p in positions]


def test_rank_candidates_applies_grammar() -> None:
    pos = _alts(
        [("第", 0.7), ("皖", 0.2)],
        [("A", 0.9), ("4", 0.1)],
        [("O", 0.6), ("D", 0.4)],
        [("1", 1.0)],
        [("2", 1.0)],
        [("Q", 0.9), ("0", 0.1)],
        [("8", 1.0)],
    )
    cands = grammar.rank_candidates(pos, n=3)
    assert cands[0].text == "皖A012Q8"  # province forced, O->0 at position 3, Q kept
    assert cands[1].text == "皖AD12Q8"
    assert all(grammar.is_valid(c.text) for c in cands)
    assert cands[0].probability >= cands[1].probability


def test_rank_candidates_new_energy_and_drop() -> None:
    nev = _alts(*[[(c, 0.9)] for c in "京AD12345"])
    assert grammar.rank_candidates(nev)[0].text == "京AD12345"
    # A spurious low-confidence leading symbol is dropped.
    extra = _alts([("1", 0.2)], *[[(c, 0.95)] for c in "皖A12345"])
    assert grammar.rank_candidates(extra)[0].text == "皖A12345"


# -- CTC ----------------------------------------------------------------------------------
def _onehot(seq: Sequence[int], n_cls: int, p: float = 0.9) -> np.ndarray:
    m = np.full((len(seq), n_cls), (1 - p) / (n_cls - 1), np.float32)
    m[np.arange(len(seq)), seq] = p
    return m


class _FakeModel:
    name = "fake"
    version = "0"

    def __init__(self, probs: np.ndarray) -> None:
        self.probs = probs

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        return [np.repeat(self.probs[None], x.shape[0], 0)]


def test_ctc_decode_known_matrix() -> None:
    charset = ["A", "1", "1x", "."]
    # blank=0; frames: A A _ 1 1 _ 1 . _ -> "A", "1", "1", "." (dot dropped later)
    seq = [1, 1, 0, 2, 2, 0, 2, 4, 0]
    probs = _onehot(seq, 5)
    assert [c for c, *_ in ctc_greedy(probs)] == [1, 2, 2, 4]
    reader = CtcReader(_FakeModel(probs), charset, 32)  # type: ignore[arg-type]
    r = reader.read(np.zeros((20, 80, 3), np.uint8))
    assert r.text == "A11"  # repeats split by a blank stay, the separator dot is stripped
    assert len(r.char_probs) == 3 and all(abs(p - 0.9) < 1e-6 for p in r.char_probs)
    assert r.alternatives[0][0] == ("A", pytest.approx(0.9))
    assert r.probs.shape == (9, 5)


def test_reader_trailing_space_class_dropped() -> None:
    probs = _onehot([1, 0, 3, 0, 2], 4)  # class 3 is past the charset: PP-OCR's space
    r = CtcReader(_FakeModel(probs), ["A", "B"], 48).read(np.zeros((24, 94, 3), np.uint8))  # type: ignore[arg-type]
    assert r.text == "AB"


def _brute_force_ctc(probs: np.ndarray, labels: Sequence[int]) -> float:
    """Sum over every frame path that collapses to `labels` (tiny inputs only)."""
    total = 0.0
    for path in itertools.product(range(probs.shape[1]), repeat=probs.shape[0]):
        collapsed = [c for i, c in enumerate(path) if c != 0 and (i == 0 or c != path[i - 1])]
        if collapsed == list(labels):
            total += float(np.prod(probs[np.arange(len(path)), path]))
    return float(np.log(total))


def test_ctc_log_likelihoods_sum_all_alignments() -> None:
    rng = np.random.default_rng(3)
    probs = rng.dirichlet(np.ones(3), size=5)  # 5 frames, blank + 2 classes
    texts: list[list[int]] = [[], [1], [1, 2], [2, 2], [1, 1, 2]]
    labels = np.zeros((len(texts), 3), np.int64)
    for k, t in enumerate(texts):
        labels[k, : len(t)] = t
    got = ctc_log_likelihoods(probs, labels, np.array([len(t) for t in texts]), probs[:, 0])
    want = [_brute_force_ctc(probs, t) for t in texts]
    assert got == pytest.approx(want, rel=1e-9)


def test_reader_likelihood_ignores_separator_dot() -> None:
    charset = ["A", "1", "."]
    probs = _onehot([1, 0, 3, 0, 2, 0], 4)  # "A", dot, "1"
    reader = CtcReader(_FakeModel(probs), charset, 32)  # type: ignore[arg-type]
    r = reader.read(np.zeros((20, 80, 3), np.uint8))
    ll = reader.log_likelihoods(r, ["A1", "1A", "A", "AZ"])
    assert r.text == "A1" and int(np.argmax(ll)) == 0
    assert ll[0] > np.log(0.5)  # the dot's frame counts as a blank, not a missing symbol
    assert ll[3] < ll[2] < ll[0]  # a character outside the charset is all but impossible


# -- geometry and colour -----------------------------------------------------------------
def test_split_two_row_geometry() -> None:
    plate = np.zeros((100, 200, 3), np.uint8)
    plate[:40] = (255, 0, 0)  # top row area blue
    plate[40:] = (0, 0, 255)  # bottom row red
    line = split_two_row(plate)
    assert line.shape[0] == 67  # the bottom row's height (rows 33..99)
    assert line.shape[1] > 200  # top row placed left of the full-width bottom row
    assert (line[:, : line.shape[1] - 200] == (255, 0, 0)).all(axis=-1).mean() > 0.9
    assert (line[:, -200:][10:] == (0, 0, 255)).all()


def test_warp_plate_upright() -> None:
    img = np.zeros((200, 300, 3), np.uint8)
    corners = np.array([[50, 60], [250, 40], [260, 100], [60, 120]], np.float32)
    cv2.fillConvexPoly(img, corners.astype(np.int32), (255, 255, 255))
    out = warp_plate(img, corners, (160, 48))
    assert out.shape == (48, 160, 3)
    assert out[4:-4, 4:-4].min() > 200  # the whole output is inside the plate


@pytest.mark.parametrize(
    ("bgr", "text", "shape", "expected"),
    [
        ((160, 70, 15), "皖A12345", (48, 160), PlateType.BLUE),
        ((20, 185, 235), "皖A12345", (48, 160), PlateType.YELLOW),
        ((20, 185, 235), "皖A12345", (80, 160), PlateType.YELLOW_TWO_ROW),
        ((90, 190, 60), "京AD12345", (48, 170), PlateType.GREEN_NEW_ENERGY),
        ((240, 240, 240), "粤A1234警", (48, 160), PlateType.WHITE_POLICE),
        ((240, 240, 240), "粤A12345", (48, 160), PlateType.WHITE_OTHER),
        ((25, 25, 25), "粤Z1234港", (48, 160), PlateType.BLACK),
        ((20, 185, 235), "粤A1234学", (48, 160), PlateType.LEARNER),
    ],
)
def test_classify_colours(
    bgr: tuple[int, int, int], text: str, shape: tuple[int, int], expected: PlateType
) -> None:
    plate = np.empty((*shape, 3), np.uint8)
    plate[:] = bgr
    plate[shape[0] // 3 : shape[0] // 2, ::7] = 128  # a few "characters"
    assert classify(plate, text) is expected


def test_synth_plates_classified() -> None:
    synth = pytest.importorskip("devtools.synth_plates")
    try:
        synth.find_cjk_font()
    except synth.FontNotFoundError as exc:
        missing(str(exc))
    for ptype in (PlateType.BLUE, PlateType.YELLOW, PlateType.GREEN_NEW_ENERGY):
        clean = synth.render_plate(
            "皖A12345" if ptype is not PlateType.GREEN_NEW_ENERGY else "皖AD12345", ptype
        )
        text = grammar.normalize("皖AD12345" if ptype is PlateType.GREEN_NEW_ENERGY else "皖A12345")
        assert classify(clean, text) is ptype
    s = synth.generate(np.random.default_rng(0), PlateType.YELLOW_TWO_ROW)
    assert grammar.is_valid(s.text) and s.image.ndim == 3


def test_synth_plates_drawn_in_each_font_given() -> None:
    """Plate i of a dataset is drawn in fonts[i % len(fonts)]; "path#index" names a face of
    a collection (the training script draws its plates in several)."""
    synth = pytest.importorskip("devtools.synth_plates")
    try:
        font = str(synth.find_cjk_font())
    except synth.FontNotFoundError as exc:
        missing(str(exc))
    if Path(font).name != "wqy-zenhei.ttc":  # make's font (Makefile: fonts)
        pytest.skip(f"needs wqy-zenhei, whose second face draws Latin letters narrower: {font}")
    fonts = (font, font + "#1")
    plates = list(synth.generate_dataset(4, seed=3, fonts=fonts))
    for i, p in enumerate(plates):
        each = [synth.generate(np.random.default_rng([3, i]), p.plate_type, font=f) for f in fonts]
        assert [np.array_equal(p.image, e.image) for e in each] == [i % 2 == 0, i % 2 == 1]
    with pytest.raises(OSError):  # a face the collection does not have
        synth.render_plate("皖A12345", PlateType.BLUE, font + "#99")


# -- orchestration with fakes -------------------------------------------------------------
class _FakeDetector:
    def __init__(self, dets: list[PlateDetection]) -> None:
        self.dets = dets

    def sizes_for(self, image_bgr: np.ndarray) -> tuple[int, ...]:
        return (576,)

    def detect(
        self,
        image_bgr: np.ndarray,
        sizes: tuple[int, ...] | None = None,
        score_threshold: float | None = None,
        keep: Sequence[PlateDetection] = (),
        settled: Sequence[PlateDetection] = (),
    ) -> list[PlateDetection]:
        return self.dets


class _FakeReader:
    def __init__(
        self,
        name: str,
        texts: Sequence[str],
        p: float = 0.9,
        trailing: Sequence[tuple[str, float]] = (),
        likelihoods: Mapping[str, float] | None = None,
        first: float | None = None,  # the first character's probability, when not p
        probs: Sequence[float] | None = None,  # every character's probability, when given
    ) -> None:
        self.name, self.texts, self.p, self.calls = name, list(texts), p, 0
        self.probs = None if probs is None else tuple(probs)
        self.trailing = tuple(trailing)
        self.likelihoods = dict(likelihoods or {})
        self.first = p if first is None else first

    def log_likelihoods(self, reading: Reading, texts: Sequence[str]) -> np.ndarray:
        own = {grammar.normalize(reading.text): self.p ** len(reading.text)}
        return np.log([self.likelihoods.get(t, own.get(t, 1e-3)) for t in texts])

    def read_batch(self, crops: Sequence[np.ndarray]) -> list[Reading]:
        out = []
        for _ in crops:
            text = self.texts[self.calls % len(self.texts)]
            self.calls += 1
            probs = (self.first, *(self.p,) * (len(text) - 1)) if text else ()
            if self.probs is not None:
                probs = self.probs
            alts = tuple(((c, q),) for c, q in zip(text, probs, strict=True))
            out.append(
                Reading(
                    text,
                    probs,
                    alts,
                    np.zeros((1, 1)),
                    self.name,
                    (),
                    self.trailing,
                )
            )
        return out


def _det(x: float) -> PlateDetection:
    c = np.array([[x, 10], [x + 90, 10], [x + 90, 40], [x, 40]], np.float32)
    return PlateDetection(np.array([x, 10, x + 90, 40], np.float32), c, 0.9)


def _blue_frame() -> np.ndarray:
    img = np.zeros((60, 320, 3), np.uint8)
    img[:] = (160, 70, 15)
    return img


def test_pipeline_with_fakes_reads_every_plate() -> None:
    main = _FakeReader("main", ["皖A·12345", "京AD12345"])
    rec = PlateRecognizer(_FakeDetector([_det(10), _det(200)]), main, None)
    res = rec.read(_blue_frame())
    assert [r.text for r in res] == ["皖A12345", "京AD12345"]
    r = res[0]
    assert isinstance(r, PlateResult) and r.pattern_valid and r.reader == "main"
    assert r.candidates[0].text == r.text
    assert r.confidence == pytest.approx(0.9**7)
    assert r.corners.shape == (4, 2) and r.box.shape == (4,)
    assert res[1].plate_type is PlateType.GREEN_NEW_ENERGY


class _TwoPassDetector(_FakeDetector):
    """A large frame: a near plate at the first size, a far one only at the second."""

    def __init__(self) -> None:
        super().__init__([])
        self.passes: list[tuple[int, ...]] = []
        self.threads: list[str] = []  # where each pass's model ran

    def sizes_for(self, image_bgr: np.ndarray) -> tuple[int, ...]:
        return (576, 960)

    def candidates(
        self,
        image_bgr: np.ndarray,
        sizes: tuple[int, ...] | None = None,
        score_threshold: float | None = None,
    ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        self.passes.append(sizes or self.sizes_for(image_bgr))
        self.threads.append(threading.current_thread().name)
        return []

    def detect(
        self,
        image_bgr: np.ndarray,
        sizes: tuple[int, ...] | None = None,
        score_threshold: float | None = None,
        keep: Sequence[PlateDetection] = (),
        settled: Sequence[PlateDetection] = (),
        found: object = None,
    ) -> list[PlateDetection]:
        sizes = sizes or self.sizes_for(image_bgr)
        if found is None:  # else the pass ran ahead, in candidates
            self.candidates(image_bgr, sizes)
        # The second pass finds the near plate again, with a box that outranks the first
        # pass's in the NMS unless that one is settled (read for sure).
        near = list(settled) or [_det(10)]
        return near + ([_det(200)] if 960 in sizes else [])


@pytest.mark.parametrize(
    ("enough", "p", "passes", "plates", "reads"),
    [
        (None, 0.995, [(576,), (960,)], 2, 2),  # ReadPlates: every plate, both passes
        (None, 0.9, [(576,), (960,)], 2, 3),  # an unsure near plate is read again at 960
        (lambda reads: True, 0.9, [(576,)], 1, 1),  # the gate has what it needs from the first
        (lambda reads: False, 0.9, [(576,), (960,)], 2, 3),  # it does not: the far pass too
        (lambda reads: False, 0.995, [(576,)], 1, 1),  # ... unless the first read is sure
    ],
)
@pytest.mark.parametrize("pool", [False, True])
def test_the_far_plate_pass_runs_only_when_the_first_is_not_enough(
    enough: object, p: float, passes: list[tuple[int, ...]], plates: int, reads: int, pool: bool
) -> None:
    det = _TwoPassDetector()
    reader = _FakeReader("main", ["皖A12345", "京A54321", "皖A12345"], p=p)
    with ThreadPoolExecutor(1, thread_name_prefix="far") as executor:
        rec = PlateRecognizer(det, reader, None, pool=executor if pool else None)
        res = rec.read(_blue_frame(), enough=enough)  # type: ignore[arg-type]
    assert sorted(det.passes) == passes and len(res) == plates
    assert sorted(r.text for r in res) == sorted(["皖A12345", "京A54321"][:plates])
    assert reader.calls == reads  # a plate read for sure is not read again by the far pass
    # Given a pool, ReadPlates (every plate) runs the far pass there, beside the first; the
    # gate's far pass depends on the first pass's reads, so it never runs ahead.
    ran = dict(zip(det.passes, det.threads, strict=True))
    assert ran[(576,)] == "MainThread"
    if (960,) in ran:
        assert ran[(960,)].startswith("far") == (pool and enough is None)


def test_a_stopped_pool_leaves_the_far_pass_to_the_calling_thread() -> None:
    executor = ThreadPoolExecutor(1, thread_name_prefix="far")
    executor.shutdown()  # the server stops while a call is still reading
    det = _TwoPassDetector()
    rec = PlateRecognizer(det, _FakeReader("main", ["皖A12345", "京A54321"], p=0.995), None,
                          pool=executor)  # fmt: skip
    assert sorted(r.text for r in rec.read(_blue_frame())) == ["京A54321", "皖A12345"]
    assert det.threads == ["MainThread", "MainThread"]


class _StoppingPool(ThreadPoolExecutor):
    """A pool the server stops after the far pass was queued, before it ran."""

    def submit(self, fn, /, *args, **kwargs):  # type: ignore[no-untyped-def]
        future = Future()  # type: ignore[var-annotated]
        future.cancel()
        return future


def test_a_far_pass_cancelled_by_a_stopping_pool_runs_in_the_calling_thread() -> None:
    det = _TwoPassDetector()
    with _StoppingPool(1) as executor:
        rec = PlateRecognizer(det, _FakeReader("main", ["皖A12345", "京A54321"], p=0.995), None,
                              pool=executor)  # fmt: skip
        assert sorted(r.text for r in rec.read(_blue_frame())) == ["京A54321", "皖A12345"]
    assert det.threads == ["MainThread", "MainThread"]


def test_a_text_of_no_pattern_is_no_read() -> None:
    # A line read twice (a single-row plate split as two rows) is no plate of any pattern.
    main = _FakeReader("main", ["AO0U0A82M83"])
    rec = PlateRecognizer(_FakeDetector([_det(10)]), main, None)
    assert rec.read(_blue_frame()) == []
    crop = rec.read_crop(_blue_frame())
    assert (crop.text, crop.candidates, crop.pattern_valid) == ("", (), False)
    # A text of the generic pattern alone is still returned (and is not pattern_valid).
    rec2 = PlateRecognizer(_FakeDetector([_det(10)]), _FakeReader("main", ["D9823"]), None)
    assert [(r.text, r.pattern_valid) for r in rec2.read(_blue_frame())] == [("D9823", False)]


def test_a_nearly_square_plate_is_read_as_one_row_too() -> None:
    # Yaw foreshortens a single-row plate to a two-row plate's shape: both layouts are read,
    # and the one that reads as a valid plate wins.
    square = np.array([[10, 10], [50, 10], [50, 40], [10, 40]], np.float32)
    det = PlateDetection(np.array([10, 10, 50, 40], np.float32), square, 0.9)
    main = _FakeReader("main", ["AO0U0A82M83", "川A82M83"])
    (r,) = PlateRecognizer(_FakeDetector([det]), main, None).read(_blue_frame())
    assert r.text == "川A82M83"


def test_pipeline_alt_reader_used_when_main_invalid() -> None:
    main = _FakeReader("main", ["A1234"])
    alt = _FakeReader("alt", ["粤B12345"])
    rec = PlateRecognizer(_FakeDetector([_det(10)]), main, alt)
    (r,) = rec.read(_blue_frame())
    assert (r.text, r.reader, r.pattern_valid) == ("粤B12345", "alt", True)
    main_ok = _FakeReader("main", ["粤B12345"])
    alt2 = _FakeReader("alt", ["粤B99999"])
    rec2 = PlateRecognizer(None, main_ok, alt2, cross_check=False)
    assert rec2.read_crop(_blue_frame()).reader == "main"
    assert alt2.calls == 0  # without cross-checking a valid main read never pays for alt


def test_pipeline_cross_check_prefers_letters() -> None:
    main = _FakeReader("main", ["皖A59031"])
    alt = _FakeReader("alt", ["皖A59D31"])  # clp sees a D where PP-OCR saw a 0
    r = PlateRecognizer(None, main, alt, cross_check=True).read_crop(_blue_frame())
    assert r.text == "皖A59D31" and r.candidates[0].text == r.text
    main2 = _FakeReader("main", ["皖AU5031"])
    alt2 = _FakeReader("alt", ["皖A05031"])  # the main reader's letter is kept
    rec2 = PlateRecognizer(None, main2, alt2, cross_check=True)
    assert rec2.read_crop(_blue_frame()).text == "皖AU5031"


def test_a_doubtful_character_is_voted_on_by_the_alternative_reader() -> None:
    # PP-OCRv4 reads a worn F as E at 0.44; clp_v2_c is sure of the F.
    main = _FakeReader("main", ["皖E71646"], probs=(0.6, 0.44, 1, 1, 1, 1, 1))
    alt = _FakeReader("alt", ["皖F71646"], probs=(0.7, 0.97, 1, 1, 1, 1, 1))
    r = PlateRecognizer(None, main, alt).read_crop(_blue_frame())
    assert (r.text, alt.calls) == ("皖F71646", 1)
    assert [c.text for c in r.candidates[:2]] == ["皖F71646", "皖E71646"]
    assert r.char_confidences[1] == 0.97
    # The alternative reader unsure there too: the main read stands.
    unsure = _FakeReader("alt", ["皖F71646"], probs=(0.7, 0.5, 1, 1, 1, 1, 1))
    assert PlateRecognizer(None, main, unsure).read_crop(_blue_frame()).text == "皖E71646"
    # Off (vote_below 0): the alternative reader is not run on the clean line.
    off = _FakeReader("alt", ["皖F71646"], probs=(0.7, 0.97, 1, 1, 1, 1, 1))
    rec = PlateRecognizer(None, main, off, vote_below=0.0)
    assert (rec.read_crop(_blue_frame()).text, off.calls) == ("皖E71646", 0)


def test_a_sure_character_is_not_voted_on() -> None:
    # Only positions after the province, and only where the main reader is doubtful, change.
    main = _FakeReader("main", ["皖E71646"], probs=(0.3, 0.95, 1, 1, 1, 1, 0.5))
    alt = _FakeReader("alt", ["苏F71648"], probs=(0.99, 0.99, 1, 1, 1, 1, 0.99))
    r = PlateRecognizer(None, main, alt).read_crop(_blue_frame())
    assert r.text == "皖E71648"
    # A faint suffix read as a digit by the alternative reader stays the suffix.
    learner = _FakeReader("main", ["陕Y9797学"], probs=(0.9, 1, 1, 1, 1, 1, 0.5))
    digit = _FakeReader("alt", ["陕Y97979"], probs=(0.9, 1, 1, 1, 1, 1, 0.99))
    assert PlateRecognizer(None, learner, digit).read_crop(_blue_frame()).text == "陕Y9797学"
    # The main reader's letter is not given up for a digit; its digit is for a letter.
    letter = _FakeReader("main", ["苏FK547Q"], probs=(0.9, 1, 1, 1, 1, 1, 0.5))
    zero = _FakeReader("alt", ["苏FK5470"], probs=(0.9, 1, 1, 1, 1, 1, 0.99))
    assert PlateRecognizer(None, letter, zero).read_crop(_blue_frame()).text == "苏FK547Q"
    digit_main = _FakeReader("main", ["辽F90JD0"], probs=(0.9, 1, 1, 0.5, 1, 1, 1))
    letter_alt = _FakeReader("alt", ["辽F9QJD0"], probs=(0.9, 1, 1, 0.99, 1, 1, 1))
    assert PlateRecognizer(None, digit_main, letter_alt).read_crop(_blue_frame()).text == (
        "辽F9QJD0"
    )


def test_pipeline_main_likelihood_settles_unclean_reads() -> None:
    # PP-OCR misses a faint suffix (it sits in the trailing frames); clp reads it as a digit
    # with confidence. The main reader's own likelihood of each valid candidate decides.
    main = _FakeReader("main", ["粤A1234"], trailing=[("警", 0.3)], likelihoods={"粤A1234警": 0.3})
    alt = _FakeReader("alt", ["粤A12347"])
    r = PlateRecognizer(None, main, alt).read_crop(_blue_frame())
    assert (r.text, r.reader, r.pattern_valid) == ("粤A1234警", "main", True)
    assert {c.text for c in r.candidates} == {"粤A1234警", "粤A12347"}
    assert r.candidates[0].probability == pytest.approx(0.3)
    # The same reads with a main reader that does not believe the suffix keep clp's digit.
    main2 = _FakeReader("main", ["粤A1234"], trailing=[("警", 0.3)], likelihoods={"粤A12347": 0.5})
    assert PlateRecognizer(None, main2, alt).read_crop(_blue_frame()).text == "粤A12347"


def test_pipeline_no_plate_and_two_row() -> None:
    rec = PlateRecognizer(_FakeDetector([]), _FakeReader("m", ["x"]), None)
    assert rec.read(_blue_frame()) == []
    seen: list[tuple[int, int]] = []

    class Spy(_FakeReader):
        def read_batch(self, crops: Sequence[np.ndarray]) -> list[Reading]:
            seen.extend(c.shape[:2] for c in crops)
            return super().read_batch(crops)

    square = np.zeros((100, 200, 3), np.uint8)
    square[:] = (20, 185, 235)
    r = PlateRecognizer(None, Spy("m", ["粤B12345"]), None).read_crop(square)
    assert seen[0][1] > 200  # the two-row plate reached the reader as one wide line
    assert r.plate_type is PlateType.YELLOW_TWO_ROW


def test_clean_read_keeps_the_plate_alphabet_only() -> None:
    text, probs = grammar.clean_read("A02M0//A82M83", [0.9] * 13, "cn")
    assert (text, len(probs)) == ("A02M0A82M83", 11)
    assert grammar.clean_read("皖a·1o2肥3", [0.5] * 8, "cn") == ("皖A1023", (0.5,) * 6)
    assert grammar.clean_read("皖A12345", [0.9] * 7, "generic")[0] == "A12345"
    assert grammar.clean_read("ＡＢ/1", [0.9, 0.8], "generic") == ("AB1", ())  # unaligned


@pytest.mark.parametrize("mode", ["cn", "generic"])
def test_reads_never_hold_characters_outside_the_plate_alphabet(mode: grammar.Mode) -> None:
    # A real PP-OCR read of a street frame: slashes from a bumper sticker inside the text.
    rec = PlateRecognizer(_FakeDetector([_det(10)]), _FakeReader("m", ["D98//23"]), None)
    rec.mode = mode
    (r,) = rec.read(_blue_frame())
    allowed = set(grammar.plate_alphabet(mode))
    assert r.text == "D9823" and r.pattern_valid == (mode == "generic")
    assert len(r.char_confidences) == len(r.text)
    assert all(set(c.text) <= allowed for c in r.candidates)
    for junk in ("//:", "A02M0//A82M83"):  # nothing left; no plate of any pattern (11 chars)
        only_junk = PlateRecognizer(_FakeDetector([_det(10)]), _FakeReader("m", [junk]), None)
        only_junk.mode = mode
        assert only_junk.read(_blue_frame()) == []


def test_detector_searches_large_frames_at_a_second_size() -> None:
    det = PlateDetector(None, input_size=576, large_size=960)  # type: ignore[arg-type]
    assert det.sizes_for(np.zeros((1040, 1392, 3), np.uint8)) == (576, 960)
    assert det.sizes_for(np.zeros((720, 800, 3), np.uint8)) == (576,)  # under 1.5 x 576
    assert det.sizes_for(np.zeros((600, 900, 3), np.uint8)) == (576, 900)  # never upsampled
    assert PlateDetector(None).sizes_for(np.zeros((1040, 1392, 3), np.uint8)) == (576,)  # type: ignore[arg-type]


class _FakeProvince:
    """A classifier sure of one province."""

    def __init__(self, province: str, p: float = 0.999) -> None:
        self.k, self.p, self.patches = PROVINCES.index(province), p, 0

    def predict(self, patches: Sequence[np.ndarray]) -> np.ndarray:
        self.patches += len(patches)
        out = np.full((len(patches), len(PROVINCES)), (1 - self.p) / (len(PROVINCES) - 1))
        out[:, self.k] = self.p
        return out.astype(np.float32)


def test_combine_province_is_a_weighted_product() -> None:
    ocr, cls = np.log([0.7, 0.2, 0.1]), np.log([0.1, 0.8, 0.1])
    assert np.argmax(combine_province(ocr, cls, 0.0)) == 0
    post = combine_province(ocr, cls, 1.0)
    assert post.sum() == pytest.approx(1.0)
    assert post == pytest.approx(np.array([0.07, 0.16, 0.01]) / 0.24)


def test_pipeline_province_classifier_redecides_the_first_character() -> None:
    main = _FakeReader("main", ["皖A12345"], first=0.6)  # a province read below PROVINCE_SURE
    cls = _FakeProvince("湘")
    rec = PlateRecognizer(None, main, None, province=cls, province_crop_weight=0.75)  # type: ignore[arg-type]
    r = rec.read_crop(_blue_frame())
    assert r.text == "湘A12345" and r.pattern_valid and cls.patches == 1
    assert not r.province_guessed  # a province glyph was read: re-decided, not guessed
    assert [c.text for c in r.candidates[:2]] == ["湘A12345", "皖A12345"]  # the read stays
    assert len(r.char_confidences) == 7 and r.candidates[0].probability == pytest.approx(
        r.confidence
    )
    # A classifier that agrees, a weight of 0 or generic mode leave the read alone.
    assert (
        PlateRecognizer(None, main, None, province=_FakeProvince("皖"))
        .read_crop(_blue_frame())
        .text
        == "皖A12345"
    )  # type: ignore[arg-type]
    rec0 = PlateRecognizer(None, main, None, province=cls, province_crop_weight=0.0)  # type: ignore[arg-type]
    assert rec0.read_crop(_blue_frame()).text == "皖A12345"
    # On the detector path the default weight is light: a sure reader keeps its province.
    frame = PlateRecognizer(_FakeDetector([_det(10)]), main, None, province=cls)  # type: ignore[arg-type]
    assert frame.read(_blue_frame())[0].text == "皖A12345"
    frame.province_weight = 1.0
    assert frame.read(_blue_frame())[0].text == "湘A12345"
    gen = PlateRecognizer(None, _FakeReader("m", ["AB1234"]), None, mode="generic", province=cls)  # type: ignore[arg-type]
    assert gen.read_crop(_blue_frame()).text == "AB1234"


def test_a_sure_province_is_not_put_to_the_classifier() -> None:
    cls = _FakeProvince("湘")
    for first, asked, text in ((PROVINCE_SURE, 0, "皖A12345"), (0.8, 1, "湘A12345")):
        main = _FakeReader("main", ["皖A12345"], first=first)
        rec = PlateRecognizer(None, main, None, province=cls)  # type: ignore[arg-type]
        before = cls.patches
        assert rec.read_crop(_blue_frame()).text == text
        assert cls.patches - before == asked


def test_a_read_without_its_province_gets_one() -> None:
    # The reader dropped the province glyph: the rest is a valid plate once one is put first.
    cls = _FakeProvince("皖", p=0.9)
    rec = PlateRecognizer(
        _FakeDetector([_det(10)]), _FakeReader("m", ["AL025S"]), None, province=cls
    )  # type: ignore[arg-type]
    (r,) = rec.read(_blue_frame())
    assert (r.text, r.pattern_valid, r.province_guessed) == ("皖AL025S", True, True)
    assert len(r.char_confidences) == 7 and cls.patches == 1
    assert len(r.candidates) == 5 and all(grammar.is_valid(c.text) for c in r.candidates)
    assert all(c.text[1:] == "AL025S" for c in r.candidates)
    # The first character read as something that is no province: replaced when the reader
    # believes that better than an inserted province (here 皖AA12345 would be valid too).
    main = _FakeReader("m", ["AA12345"], likelihoods={"皖A12345": 0.5, "湘A12345": 0.4})
    r2 = PlateRecognizer(None, main, None, province=_FakeProvince("湘", p=0.6)).read_crop(  # type: ignore[arg-type]
        _blue_frame()
    )
    assert r2.text == "湘A12345" and r2.candidates[1].text == "皖A12345"
    assert r2.province_guessed
    # Without a classifier the reader alone decides.
    main3 = _FakeReader("m", ["A12345"], likelihoods={"粤A12345": 0.2})
    r3 = PlateRecognizer(None, main3, None).read_crop(_blue_frame())
    assert (r3.text, r3.province_guessed) == ("粤A12345", True)
    # A read that no province can make valid stays as read, invalid.
    r4 = PlateRecognizer(None, _FakeReader("m", ["A1234"]), None, province=cls).read_crop(  # type: ignore[arg-type]
        _blue_frame()
    )
    assert (r4.text, r4.pattern_valid, r4.province_guessed) == ("A1234", False, False)
    # A read with its province is not guessed.
    clean = PlateRecognizer(None, _FakeReader("m", ["皖AL025S"]), None, province=cls)  # type: ignore[arg-type]
    assert not clean.read_crop(_blue_frame()).province_guessed


def test_a_province_read_below_the_seen_minimum_counts_as_guessed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A painted-over province: the reader reads one into the blank space, faintly.
    faint, sure = PROVINCE_SEEN_MIN / 2, PROVINCE_SEEN_MIN * 2
    for first, guessed in ((faint, True), (sure, False)):
        crop = PlateRecognizer(None, _FakeReader("m", ["苏E29AQ6"], first=first), None)  # type: ignore[arg-type]
        r = crop.read_crop(_blue_frame())
        assert (r.text, r.pattern_valid, r.province_guessed) == ("苏E29AQ6", True, guessed)
        assert r.char_confidences[0] == pytest.approx(first)
        det = _FakeDetector([_det(10)])
        frame = PlateRecognizer(det, _FakeReader("m", ["苏E29AQ6"], first=first), None)  # type: ignore[arg-type]
        assert frame.read(_blue_frame())[0].province_guessed is guessed
    # Re-decided by the classifier, the first character holds the posterior over provinces,
    # high whether or not a glyph was there: the reader's own probability decides.
    cls = _FakeProvince("皖")
    main = _FakeReader("m", ["苏E29AQ6"], first=faint)
    r = PlateRecognizer(None, main, None, province=cls).read_crop(_blue_frame())  # type: ignore[arg-type]
    assert r.text == "皖E29AQ6" and r.char_confidences[0] > 0.9 and r.province_guessed
    # Only the flag changes: text, candidates and confidences are those of a read province.
    monkeypatch.setattr(pipeline, "PROVINCE_SEEN_MIN", 0.0)
    seen = PlateRecognizer(None, main, None, province=cls).read_crop(_blue_frame())  # type: ignore[arg-type]
    assert not seen.province_guessed
    assert (seen.text, seen.candidates, seen.char_confidences, seen.confidence) == (
        r.text,
        r.candidates,
        r.char_confidences,
        r.confidence,
    )


def test_an_issuer_read_as_o_competes_with_its_look_alikes() -> None:
    # O is a rare special issuer code: a Q the reader finds a third as likely wins.
    main = _FakeReader("m", ["皖O18632"], likelihoods={"皖O18632": 0.9, "皖Q18632": 0.3})
    r = PlateRecognizer(None, main, None).read_crop(_blue_frame())
    assert (r.text, r.pattern_valid) == ("皖Q18632", True)
    assert [c.text for c in r.candidates[:2]] == ["皖Q18632", "皖O18632"]
    # The issuer's confidence is its share among all 25 issuer letters (23 others at 1e-3).
    assert len(r.char_confidences) == 7
    assert r.char_confidences[1] == pytest.approx(0.3 / (0.3 + 0.9 * 0.1 + 23e-3))
    # A sure O stays, and a Q, D or C is never turned into an O.
    sure = _FakeReader("m", ["皖O18632"], likelihoods={"皖O18632": 0.9, "皖Q18632": 0.05})
    assert PlateRecognizer(None, sure, None).read_crop(_blue_frame()).text == "皖O18632"
    q = _FakeReader("m", ["皖Q18632"], likelihoods={"皖O18632": 0.9, "皖Q18632": 0.3})
    assert PlateRecognizer(None, q, None).read_crop(_blue_frame()).text == "皖Q18632"


class _RetryDetector(_FakeDetector):
    """Finds nothing at first; the second look finds a weak box."""

    def __init__(self, first: list[PlateDetection]) -> None:
        super().__init__(first)
        self.again = 0

    def detect_again(self, image_bgr: np.ndarray) -> list[PlateDetection]:
        self.again += 1
        d = _det(10)
        return [PlateDetection(d.box, d.corners, 0.12)]


def test_a_frame_with_no_read_gets_a_second_look() -> None:
    det = _RetryDetector([])
    rec = PlateRecognizer(det, _FakeReader("m", ["皖A12345"]), None, retry=True)  # type: ignore[arg-type]
    (r,) = rec.read(_blue_frame())
    assert (r.text, r.detector_score, det.again) == ("皖A12345", pytest.approx(0.12), 1)
    # A weak box of the second look that reads as no plate is dropped.
    junk = PlateRecognizer(_RetryDetector([]), _FakeReader("m", ["A1234"]), None, retry=True)  # type: ignore[arg-type]
    assert junk.read(_blue_frame()) == []
    # A frame that read a plate, or a recogniser without retry, never looks again.
    found = _RetryDetector([_det(10)])
    PlateRecognizer(found, _FakeReader("m", ["京A54321"]), None, retry=True).read(_blue_frame())  # type: ignore[arg-type]
    off = _RetryDetector([])
    assert PlateRecognizer(off, _FakeReader("m", ["皖A12345"]), None).read(_blue_frame()) == []  # type: ignore[arg-type]
    assert found.again == 0 and off.again == 0


class _OneBoxNetwork:
    """The detector network seeing one plate: the 96-px anchor nearest (200, 200) at `score`."""

    def __init__(self, score: float) -> None:
        self.score = score

    def run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pri = _priors(x.shape[2], x.shape[3])
        far = np.abs(pri[:, :2] - 200).sum(1) + 1e6 * (pri[:, 2] != 96)
        conf = np.zeros((1, len(pri), 2), np.float32)
        conf[0, int(np.argmin(far)), 1] = self.score
        return np.zeros((1, len(pri), 4), np.float32), conf, np.zeros((1, len(pri), 8), np.float32)


def test_a_settled_detection_outranks_a_new_box_of_the_same_plate() -> None:
    det = PlateDetector(_OneBoxNetwork(0.9), input_size=576)  # type: ignore[arg-type]
    frame = np.zeros((576, 576, 3), np.uint8)
    box = np.array([150, 150, 250, 250], np.float32)
    old = PlateDetection(box, np.zeros((4, 2), np.float32), 0.5)
    (won,) = det.detect(frame, (576,), keep=[old])  # a kept box competes by score
    assert won is not old and won.score == pytest.approx(0.9)
    (won,) = det.detect(frame, (576,), settled=[old])  # a settled one stays, as it was
    assert won is old


def test_detector_second_look_adds_the_frame_size() -> None:
    det = PlateDetector(None, input_size=576, large_size=960)  # type: ignore[arg-type]
    assert det.retry_sizes(np.zeros((1040, 1392, 3), np.uint8)) == (576, 960, 1280)
    assert det.retry_sizes(np.zeros((720, 800, 3), np.uint8)) == (576, 800)
    assert det.retry_sizes(np.zeros((600, 900, 3), np.uint8)) == (576, 900)  # never upsampled


# -- real models --------------------------------------------------------------------------
_REQUIRED = [
    "clp_det.onnx",
    "ch_PP-OCRv4_rec_infer.onnx",
    "clp_v2_c_rec.onnx",
    "clp_dict.txt",
    "trained/province_cls.onnx",
]


@pytest.fixture(scope="module")
def plate_models() -> None:
    if not all((MODELS / f).is_file() for f in _REQUIRED):
        missing("plate models absent from models/; run `recognizer models fetch`")


@pytest.fixture()
def plate_data() -> None:
    if not DATA.is_dir():
        missing_data(DATA)


needs_models = pytest.mark.usefixtures("plate_models")
needs_data = pytest.mark.usefixtures("plate_data")


@pytest.fixture(scope="module")
def recognizer(plate_models: None) -> PlateRecognizer:
    from recognizer.plate.pipeline import build_plate_recognizer

    return build_plate_recognizer()


def _imread(p: Path) -> np.ndarray:
    img = cv2.imdecode(np.fromfile(str(p), np.uint8), cv2.IMREAD_COLOR)
    assert img is not None, p
    return img


@needs_models
def test_blank_frame_has_no_plate(recognizer: PlateRecognizer) -> None:
    assert recognizer.read(np.full((480, 640, 3), 127, np.uint8)) == []
    names = {m.name for m in recognizer.model_versions}
    assert names == {"plate_det", "ppocr_rec", "clp_rec", "province_cls"}


@needs_models
@needs_data
def test_ccpd_scene_read_exactly(recognizer: PlateRecognizer) -> None:
    from devtools.datasets import parse_ccpd_name

    files = files_in(DATA / "scenes", "*.jpg")[:3]
    for f in files:
        res = recognizer.read(_imread(f))
        assert res and res[0].text == parse_ccpd_name(f.name), f.name
        assert res[0].pattern_valid and res[0].plate_type is PlateType.BLUE


@needs_models
@needs_data
def test_a_timestamp_across_a_plate_is_not_read(recognizer: PlateRecognizer) -> None:
    # The camera's date runs under the plate: its "5" completes the F to an E, and both
    # readers read 湘E8ZS83 or 湘E87S83 (issue 25's three false rejects of this car).
    frame = _imread(DATA / "street" / "湘F8ZS83.jpg")
    assert recognizer.read(frame)[0].text == "湘F8ZS83"
    recognizer.erase_stamps = False
    try:
        assert recognizer.read(frame)[0].text.startswith("湘E")
    finally:
        recognizer.erase_stamps = True


@needs_models
@needs_data
def test_crops_read_exactly(recognizer: PlateRecognizer) -> None:
    files = files_in(DATA / "crops", "*.jpg")[:12]
    hits = sum(recognizer.read_crop(_imread(f)).text == re.sub(r"_\d+$", "", f.stem) for f in files)
    assert hits >= 11


# The committed classifier's answers on real crops (provinces other than 皖 among them).
_PROVINCE_KNOWN = (
    "京PL3N67.jpg",
    "湘E269JY.jpg",
    "粤A3ZB32.jpg",
    "豫BLU198.jpg",
    "闽D33U29.jpg",
    "鲁AW9V20.jpg",
    "浙BR7S63.jpg",
    "苏A0X3B2.jpg",
    "皖A00E66.jpg",
    "皖A051N0.jpg",
)


@needs_models
@needs_data
def test_province_model_committed_verified_and_known_answers() -> None:
    from recognizer import models as store
    from recognizer.onnx import sha256_file
    from recognizer.plate.province import CLASSES, ProvinceClassifier

    entry = store.find_entry("province_cls")
    assert entry.source == "trained" and entry.file == "trained/province_cls.onnx"
    assert "train_province.py" in entry.training and "crops" in entry.data
    path = store.require(entry)  # present and matching its sha256
    assert sha256_file(path) == entry.sha256
    cls = ProvinceClassifier(store.load("province_cls")[0])
    crops = [_imread(DATA / "crops" / f) for f in _PROVINCE_KNOWN]
    probs = cls.predict_plates([(c, False) for c in crops])
    assert probs.shape == (len(crops), len(CLASSES))
    assert np.allclose(probs.sum(1), 1.0, atol=1e-4)
    assert [CLASSES[k] for k in probs.argmax(1)] == [f[0] for f in _PROVINCE_KNOWN]


@needs_models
@needs_data
def test_non_anhui_crops_read_exactly(recognizer: PlateRecognizer) -> None:
    files = [f for f in files_in(DATA / "crops", "*.jpg") if not f.name.startswith("皖")][:10]
    hits = sum(recognizer.read_crop(_imread(f)).text == re.sub(r"_\d+$", "", f.stem) for f in files)
    assert hits >= 9


def test_rank_candidates_inserts_faint_province() -> None:
    # The greedy path skipped a faint province; the blank frames before the text hold it.
    pos = _alts(*[[(c, 0.95)] for c in "HJS834"])
    cands = grammar.rank_candidates(pos, leading=[("津", 0.05), ("湘", 0.01)])
    assert cands[0].text == "津HJS834"


class _RowsReader(_FakeReader):
    """Reads a two-row plate's top row (the crop `top_row` cuts from the two-row warp) as
    `top`, and every other line as `rest`."""

    def __init__(self, top: str, rest: str) -> None:
        super().__init__("main", [rest])
        self.top, self.rest = top, rest

    def read_batch(self, crops: Sequence[np.ndarray]) -> list[Reading]:
        out = []
        for crop in crops:
            self.texts = [self.top if crop.shape[:2] == (32, 112) else self.rest]
            out += super().read_batch([crop])
        return out


def test_a_two_row_read_that_lost_its_top_row_reads_the_top_row_alone() -> None:
    square = np.array([[10, 10], [50, 10], [50, 40], [10, 40]], np.float32)  # two-row shape
    det = PlateDetection(np.array([10, 10, 50, 40], np.float32), square, 0.9)
    (r,) = PlateRecognizer(_FakeDetector([det]), _RowsReader("苏C", "25829"), None).read(
        _blue_frame()
    )
    assert (r.text, r.pattern_valid) == ("苏C25829", True)
    # A top row that reads as no province and letter leaves the read as it was.
    (r2,) = PlateRecognizer(_FakeDetector([det]), _RowsReader("//", "25829"), None).read(
        _blue_frame()
    )
    assert (r2.text, r2.pattern_valid) == ("25829", False)


def test_the_province_patch_reaches_past_corners_cut_into_the_glyph() -> None:
    from recognizer.plate.province import VIEW_MARGIN, province_patch, province_view

    # A plate 440 px wide whose "province glyph" (a bright bar) spans 4-13% of its width.
    frame = np.zeros((300, 800, 3), np.uint8)
    frame[100:240, 180:620] = (160, 70, 15)
    frame[120:220, 198:237] = 255
    true = np.array([[180, 100], [620, 100], [620, 240], [180, 240]], np.float32)
    cut = true + np.array([[48, 0], [0, 0], [0, 0], [48, 0]], np.float32)  # 11% cut off
    glyph = province_patch(province_view(frame, true, False), False, margin=VIEW_MARGIN)
    seen = province_patch(province_view(frame, cut, False), False, margin=VIEW_MARGIN)
    bright = (glyph > 0.9).sum()
    assert bright > 0.1 * glyph.size
    assert (seen > 0.9).sum() > 0.5 * bright  # most of the glyph is still in the window

    # The line the reader reads from the cut corners keeps a sliver of the glyph.
    def bright_columns(line: np.ndarray) -> int:
        return int((line[20:28].min(axis=(0, 2)) > 240).sum())

    assert bright_columns(warp_plate(frame, cut)) < 0.35 * bright_columns(warp_plate(frame, true))


class _WideReader(_FakeReader):
    """Reads 皖 on the plate's line, 湘 (surer) on a line wider than the warp."""

    def __init__(self) -> None:
        super().__init__("main", ["皖A12345"], first=0.5)
        self.widths: list[int] = []

    def read_batch(self, crops: Sequence[np.ndarray]) -> list[Reading]:
        self.widths += [c.shape[1] for c in crops]
        out = super().read_batch(crops)
        return [
            r if c.shape[1] <= 176 else replace(r, text="湘A12345")
            for c, r in zip(crops, out, strict=True)
        ]

    def log_likelihoods(self, reading: Reading, texts: Sequence[str]) -> np.ndarray:
        own, other = (0.95, 0.001) if reading.text[0] == "湘" else (0.6, 0.01)
        return np.log([own if t == reading.text else other for t in texts])


def test_a_frame_plates_province_is_read_again_on_a_wider_line() -> None:
    uniform = _FakeProvince("皖", p=1 / len(PROVINCES))  # no opinion
    for margin, text in ((0.0, "皖A12345"), (0.08, "湘A12345")):
        reader = _WideReader()
        rec = PlateRecognizer(
            _FakeDetector([_det(10)]), reader, None, province=uniform,  # type: ignore[arg-type]
            reader_view_margin=margin, province_weight=1.0,
        )  # fmt: skip
        assert rec.read(_blue_frame())[0].text == text
        # The wider line: the warp's width with the margin either side, read only when asked.
        assert reader.widths[1:] == ([round(176 * (1 + 2 * margin))] if margin else [])
    # A sure province asks for no second line; nor does a crop (its margin is its own).
    sure = _FakeReader("main", ["皖A12345"], first=0.99)
    rec = PlateRecognizer(_FakeDetector([_det(10)]), sure, None, province=uniform)  # type: ignore[arg-type]
    assert rec.read(_blue_frame())[0].text == "皖A12345" and sure.calls == 1
    widths = []
    for margin in (0.0, 0.08):
        crop_reader = _WideReader()
        rec = PlateRecognizer(None, crop_reader, None, province=uniform, reader_view_margin=margin)  # type: ignore[arg-type]
        rec.read_crop(_blue_frame())
        widths.append(crop_reader.widths)
    assert widths[0] == widths[1]


@needs_models
@needs_data
def test_a_line_reads_the_same_beside_a_wider_one(recognizer: PlateRecognizer) -> None:
    # PP-OCRv4 mixes the whole padded line: padded to a wider companion's width, 7 of 200
    # real crops stretched to 270 px read another text than alone.
    reader = recognizer.reader
    changed = []
    for path in files_in(DATA / "crops", "*.jpg")[:60]:
        crop = _imread(path)
        h = crop.shape[0]
        line = cv2.resize(crop, (270 * h // 48, h))
        wider = cv2.resize(crop, (330 * h // 48, h))
        narrow = crop  # 94x24: padded to the reader's 256 px
        alone = [reader.read(x) for x in (line, narrow)]
        together = reader.read_batch([line, wider, narrow])
        for a, b in zip(alone, (together[0], together[2]), strict=True):
            same = a.text == b.text and np.allclose(a.char_probs, b.char_probs, atol=1e-4)
            if not same:
                changed.append((path.name, a.text, b.text))
    assert not changed, changed
