"""The liveness stage: the committed model (hash, and scores on frames of a subject it was
never trained on), the context crop, thresholds and user models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from recognizer import models as model_store
from recognizer.face.liveness import (
    PAD_VALUE,
    SHIPPED_MODEL,
    SHRUNK,
    LivenessStage,
    LivenessThresholds,
    build_liveness,
    context_box,
    context_crop,
    fitted_context,
    outside_fraction,
)
from recognizer.face.pipeline import build_face_pipeline
from recognizer.face.types import LivenessDecision, Selection
from recognizer.imaging import decode
from recognizer.onnx import ModelError, sha256_file
from tests.conftest import dataset, files_in, missing

HELD_OUT = "0001"  # scripts/train_pad.py never trains on it


def _frames(kind: str, step: int) -> list[Path]:
    return files_in(dataset("pad", "nuaa", kind, HELD_OUT), "*.jpg")[::step]


@pytest.fixture(scope="module")
def stage() -> LivenessStage:
    entry = model_store.find_entry(SHIPPED_MODEL)
    if model_store.state(entry) is not model_store.ModelState.OK:
        missing(f"trained model {entry.file} absent or altered; `git checkout -- models/`")
    return build_liveness()


@pytest.fixture(scope="module")
def pipeline():  # type: ignore[no-untyped-def]
    for name in ("yunet", "sface"):
        if model_store.state(model_store.find_entry(name)) is not model_store.ModelState.OK:
            missing(f"model {name} not fetched; run `recognizer models fetch`")
    return build_face_pipeline()


def test_the_committed_model_is_the_trained_one() -> None:
    entry = model_store.find_entry(SHIPPED_MODEL)
    assert entry.source == "trained" and entry.file.startswith("trained/")
    assert "train_pad.py" in entry.training and "NUAA" in entry.data
    path = model_store.DEFAULT_MODELS_DIR / entry.file
    assert path.is_file(), "models/trained/ is committed, never fetched"
    assert sha256_file(path) == entry.sha256
    stage = build_liveness()
    meta = stage.model.metadata
    assert HELD_OUT in meta["held_out"].split(",")
    assert "evaluation" in entry.licence.lower() and "pad_ref.md" in entry.licence
    assert (path.parent / "pad_ref.md").is_file(), "the model card ships beside the model"
    assert stage.thresholds.attack <= stage.thresholds.live


def test_held_out_live_frames_score_above_print_frames(stage: LivenessStage, pipeline) -> None:  # type: ignore[no-untyped-def]
    scores: dict[str, list[float]] = {"live": [], "print": []}
    for kind in scores:
        for path in _frames(kind, 12):
            (found,) = pipeline.analyze(decode(path.read_bytes()), Selection.LARGEST)
            assert found.liveness is not None
            scores[kind].append(found.liveness.score)
    live, prints = np.array(scores["live"]), np.array(scores["print"])
    assert len(live) >= 5 and len(prints) >= 10
    # Every sampled live frame of the unseen subject outscores every print frame of it.
    assert live.min() > prints.max(), (live, prints)
    assert np.mean(live >= stage.thresholds.live) >= 0.8
    # No print of the unseen subject is LIVE: with liveness required it never pays (ATTACK
    # is DENY, UNCERTAIN is STEP_UP; the attack threshold keeps DENY rare for live users).
    assert np.all(prints < stage.thresholds.live), prints


def test_the_crop_keeps_context_and_pads_outside_the_image_with_grey() -> None:
    img = np.full((100, 200, 3), 10, np.uint8)
    box = np.array([0, 0, 40, 20], np.float32)  # at the corner: most of the crop is outside
    x0, y0, side = context_box(box, 2.5)
    assert side == 100 and (x0, y0) == (-30, -40)
    crop = context_crop(img, box, (64, 64), 2.5)
    assert crop.shape == (64, 64, 3) and crop.dtype == np.uint8
    assert crop[0, 0, 0] == PAD_VALUE and crop[-1, -1, 0] == 10


def test_thresholds_make_three_decisions() -> None:
    t = LivenessThresholds(0.3, 0.6)
    assert t.decide(0.1) is LivenessDecision.ATTACK
    assert t.decide(0.3) is LivenessDecision.UNCERTAIN
    assert t.decide(0.6) is LivenessDecision.LIVE
    with pytest.raises(ValueError):
        LivenessThresholds(0.7, 0.6)


def test_a_user_model_runs_only_with_its_sha256(stage: LivenessStage, tmp_path: Path) -> None:
    user = tmp_path / "my_pad.onnx"
    user.write_bytes(stage.model.path.read_bytes())
    with pytest.raises(ModelError, match="sha256"):
        build_liveness(model_path=user)
    with pytest.raises(ModelError, match="sha256 mismatch"):
        build_liveness(model_path=user, model_sha256="0" * 64)
    mine = build_liveness(
        model_path=user,
        model_sha256=sha256_file(user),
        thresholds=LivenessThresholds(0.2, 0.8),
    )
    assert mine.info is not None and mine.info.version == "user"
    assert mine.thresholds == LivenessThresholds(0.2, 0.8)
    img = np.zeros((200, 200, 3), np.uint8)
    face = type("F", (), {"box": np.array([50, 50, 150, 150], np.float32)})()
    (a,) = mine.assess(img, [face])
    (b,) = stage.assess(img, [face])
    assert a.score == pytest.approx(b.score)


def test_a_user_model_needs_its_sha256_in_the_config() -> None:
    from recognizer.config import load_config

    with pytest.raises(ValueError, match="liveness_model_sha256"):
        load_config(env={}, liveness_model="/tmp/pad.onnx")
    with pytest.raises(ValueError, match="liveness_model_sha256"):
        load_config(env={}, liveness_model_sha256="ab" * 32)
    cfg = load_config(env={"RECOGNIZER_ENROLL_REQUIRE_LIVENESS": "true"})
    assert cfg.enroll_require_liveness and not cfg.liveness_model


def _face(x1: float, y1: float, x2: float, y2: float):  # type: ignore[no-untyped-def]
    return type("F", (), {"box": np.array([x1, y1, x2, y2], np.float32)})()


def test_without_the_evidence_a_face_is_uncertain_never_an_attack(stage: LivenessStage) -> None:
    # Thresholds at 1: every face the model decides on is ATTACK, so UNCERTAIN below can only
    # come from the missing evidence.
    strict = LivenessStage(stage.model, LivenessThresholds(1.0, 1.0))
    rng = np.random.default_rng(0)
    colour = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
    grey = np.repeat(colour[..., :1], 3, axis=2)
    middle, corner, tiny = (
        _face(270, 190, 370, 290),
        _face(-30, -30, 70, 70),  # cut by the frame: even a tight crop is half outside
        _face(300, 200, 330, 230),
    )
    decided, in_corner, small = strict.assess(colour, [middle, corner, tiny])
    assert decided.decision is LivenessDecision.ATTACK and not decided.missing
    assert in_corner.decision is LivenessDecision.UNCERTAIN and "outside" in in_corner.missing
    assert small.decision is LivenessDecision.UNCERTAIN and "smaller" in small.missing
    (no_colour,) = strict.assess(grey, [middle])
    assert no_colour.decision is LivenessDecision.UNCERTAIN and "colour" in no_colour.missing
    (one_channel,) = strict.assess(grey[..., 0], [middle])
    assert one_channel.decision is LivenessDecision.UNCERTAIN
    # The score is still the model's, reported for the audit.
    assert 0.0 <= in_corner.score <= 1.0


def test_grayscale_sample_faces_are_uncertain_never_attack(stage: LivenessStage, pipeline) -> None:  # type: ignore[no-untyped-def]
    seen = 0
    for name in ("lfw_subset", "att_orl"):
        people = sorted(p for p in dataset("faces", name).iterdir() if p.is_dir())[:6]
        for person in people:
            path = files_in(person)[0]
            found = pipeline.analyze(decode(path.read_bytes()), Selection.LARGEST)
            for f in found:
                assert f.liveness is not None
                assert f.liveness.decision is LivenessDecision.UNCERTAIN, (path, f.liveness)
                seen += 1
    assert seen >= 6


def test_a_face_near_the_frame_edge_is_cropped_with_the_context_the_frame_holds() -> None:
    shape = (250, 250, 3)
    edge = np.array([25, 20, 225, 220], np.float32)  # a tight web photo: 1.6x leaves it
    assert outside_fraction(shape, edge, 1.6) > 0.3
    c = fitted_context(shape, edge, 1.6, 1.2)
    assert 1.2 <= c < 1.6 and outside_fraction(shape, edge, c) <= 0.3
    # The largest that fits: one step more context would leave the frame by too much.
    assert outside_fraction(shape, edge, c + 0.05) > 0.3
    middle = np.array([100, 100, 150, 150], np.float32)
    assert fitted_context(shape, middle, 1.6, 1.2) == 1.6  # room: never shrunk
    assert fitted_context(shape, edge, 1.6, 1.6) == 1.6  # a model without min_context
    cut = np.array([-60, -60, 60, 60], np.float32)
    assert fitted_context(shape, cut, 1.6, 1.2) == 1.2  # nothing fits: the smallest


def test_a_tight_photo_is_judged_where_a_model_without_min_context_says_uncertain(
    stage: LivenessStage,
) -> None:
    # Thresholds at 0: every face the model decides on is LIVE, so the decision shows
    # whether the evidence was judged missing.
    lenient = LivenessThresholds(0.0, 0.0)
    fitted = LivenessStage(stage.model, lenient, context=1.6, min_context=1.2)
    fixed = LivenessStage(stage.model, lenient, context=1.6, min_context=1.6)
    rng = np.random.default_rng(1)
    photo = rng.integers(0, 255, (250, 250, 3), dtype=np.uint8)
    edge, cut = _face(25, 20, 225, 220), _face(-60, -60, 60, 60)
    judged, still_cut = fitted.assess(photo, [edge, cut])
    assert judged.decision is LivenessDecision.LIVE and not judged.missing
    assert still_cut.decision is LivenessDecision.UNCERTAIN and "outside" in still_cut.missing
    (unjudged,) = fixed.assess(photo, [edge])
    assert unjudged.decision is LivenessDecision.UNCERTAIN and "outside" in unjudged.missing
    # Thresholds at 1 (every score an attack's): a face judged on a shrunk context is
    # UNCERTAIN, never ATTACK; the same face with the model's own context is an ATTACK.
    strict = LivenessThresholds(1.0, 1.0)
    (tight,) = LivenessStage(stage.model, strict, context=1.6, min_context=1.2).assess(
        photo, [edge]
    )
    assert tight.decision is LivenessDecision.UNCERTAIN and tight.missing == SHRUNK
    middle = _face(100, 100, 150, 150)
    (roomy,) = LivenessStage(stage.model, strict, context=1.6, min_context=1.2).assess(
        photo, [middle]
    )
    assert roomy.decision is LivenessDecision.ATTACK
    # The crop is the fitted one: what the model sees differs from the fixed 1.6x crop.
    assert not np.array_equal(fitted.crops(photo, [edge]), fixed.crops(photo, [edge]))
