"""Face pipeline: real detectors and embedders on real sample photos, plus fakes for wiring."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from recognizer import models as model_store
from recognizer.face.align import ALIGNED_SIZE, ARCFACE_TEMPLATE, align, similarity_transform
from recognizer.face.calibration import FaceCalibration, compact
from recognizer.face.detector import ScrfdDetector, YuNetDetector
from recognizer.face.embedder import ArcFaceEmbedder, SFaceEmbedder, l2_normalize, to_blob
from recognizer.face.pipeline import FacePipeline, build_face_pipeline
from recognizer.face.quality import QualityConfig, assess, estimate_pose
from recognizer.face.types import Face, Selection
from recognizer.onnx import ModelError
from tests.conftest import files_in, missing, missing_data
from tests.helpers import FakeEmbedder

REPO = Path(__file__).resolve().parents[1]
DATASETS = REPO.parent / "shared" / "datasets"
FACES = DATASETS / "faces"
PROFILE_MODELS = {"default": ("yunet", "sface_cpu"), "insightface": ("scrfd", "arcface_mbf")}


def need_faces(*parts: str) -> Path:
    path = FACES.joinpath(*parts)
    if not path.exists():
        missing_data(path)
    return path


def need_models(profile: str) -> None:
    for name in PROFILE_MODELS[profile]:
        entry = model_store.find_entry(name)
        if model_store.state(entry) is not model_store.ModelState.OK:
            missing(f"model {name} ({entry.file}) not in models/; run `recognizer models fetch`")


def images_of(dataset: str, per_identity: int) -> list[tuple[str, np.ndarray]]:
    out = []
    for ident in sorted(p for p in need_faces(dataset).iterdir() if p.is_dir()):
        for img in files_in(ident)[:per_identity]:
            out.append((ident.name, cv2.imread(str(img), cv2.IMREAD_UNCHANGED)))
    return out


@pytest.fixture(scope="module")
def default_pipeline() -> FacePipeline:
    need_models("default")
    return build_face_pipeline("default")


@pytest.fixture(scope="module")
def insightface_pipeline() -> FacePipeline:
    need_models("insightface")
    return build_face_pipeline("insightface")


@pytest.fixture(scope="module")
def lfw10_default(default_pipeline: FacePipeline) -> list[tuple[str, np.ndarray, list]]:
    """Every lfw10 photo analysed once by the default profile, shared by several tests."""
    return [
        (name, img, default_pipeline.analyze(img, Selection.LARGEST))
        for name, img in images_of("lfw10", 10)
    ]


def scores_by_label(labels: list[str], vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sims = vectors @ vectors.T
    iu = np.triu_indices(len(labels), 1)
    ids = np.asarray(labels)
    same = (ids[:, None] == ids[None, :])[iu]
    return sims[iu][same], sims[iu][~same]


# --- real models on real photos ----------------------------------------------------------


def test_every_lfw10_photo_has_a_face_with_landmarks_inside_its_box(lfw10_default) -> None:  # type: ignore[no-untyped-def]
    assert len(lfw10_default) == 100
    for name, img, found in lfw10_default:
        assert len(found) == 1, name
        face = found[0].face
        x1, y1, x2, y2 = face.box
        h, w = img.shape[:2]
        assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
        lm = face.landmarks
        assert lm.shape == (5, 2)
        assert np.all((lm[:, 0] >= x1) & (lm[:, 0] <= x2) & (lm[:, 1] >= y1) & (lm[:, 1] <= y2))
        assert lm[0, 0] < lm[1, 0], "eyes come image-left first"
        assert lm[3, 1] > lm[2, 1] > lm[0, 1], "mouth below nose below eyes"


def test_default_embeddings_are_unit_norm_and_separate_people(lfw10_default) -> None:  # type: ignore[no-untyped-def]
    labels = [name for name, _, _ in lfw10_default]
    vectors = np.stack([found[0].embedding for _, _, found in lfw10_default])
    assert vectors.dtype == np.float32 and vectors.shape == (100, 128)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    genuine, impostor = scores_by_label(labels, vectors)
    assert np.median(genuine) > np.percentile(impostor, 99.9)
    assert genuine.min() > np.median(impostor)
    assert (genuine > impostor.max()).mean() > 0.9


def test_default_quality_gate_passes_real_enrolment_photos(
    lfw10_default,  # type: ignore[no-untyped-def]
    default_pipeline: FacePipeline,
) -> None:
    rejected = [name for name, _, found in lfw10_default if not found[0].quality.acceptable]
    for name, img in images_of("misc", 10):
        (face,) = default_pipeline.analyze(img, Selection.LARGEST)
        if not face.quality.acceptable:
            rejected.append(name)
    assert rejected == []


def test_insightface_profile_finds_faces_and_separates_people(
    insightface_pipeline: FacePipeline,
) -> None:
    labels, vectors = [], []
    for name, img in images_of("lfw10", 3):
        (face,) = insightface_pipeline.analyze(img, Selection.LARGEST)
        x1, y1, x2, y2 = face.face.box
        lm = face.face.landmarks
        assert np.all((lm[:, 0] >= x1) & (lm[:, 0] <= x2) & (lm[:, 1] >= y1) & (lm[:, 1] <= y2))
        labels.append(name)
        vectors.append(face.embedding)
    emb = np.stack(vectors)
    assert emb.shape == (30, 512) and insightface_pipeline.dim == 512
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    genuine, impostor = scores_by_label(labels, emb)
    assert genuine.mean() > impostor.max()


def test_arcface_batches_like_single_crops(insightface_pipeline: FacePipeline) -> None:
    img = images_of("lfw10", 1)[0][1]
    face = insightface_pipeline.detector.detect(img)[0]
    crop = align(img, face.landmarks)
    other = cv2.flip(crop, 1)
    batch = insightface_pipeline.embedder.embed([crop, other])
    singles = np.concatenate([insightface_pipeline.embedder.embed([c]) for c in (crop, other)])
    np.testing.assert_allclose(batch, singles, atol=1e-4)


def test_padded_retry_finds_the_face_in_a_tight_crop(
    default_pipeline: FacePipeline, insightface_pipeline: FacePipeline
) -> None:
    # This ORL photo is cropped so tightly that YuNet misses it at first sight.
    img = cv2.imread(str(need_faces("att_orl", "ORL_s34", "ORL_s34_0005.png")))
    yunet = default_pipeline.detector
    assert isinstance(yunet, YuNetDetector)
    assert yunet._detect_once(img) == []  # the precondition this test is about
    faces = yunet.detect(img)
    assert len(faces) == 1
    h, w = img.shape[:2]
    x1, y1, x2, y2 = faces[0].box
    assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
    assert (x2 - x1) > 0.5 * w  # it is the face that fills the frame
    # SCRFD misses every ORL crop at first sight; the retry finds them.
    scrfd = insightface_pipeline.detector
    assert isinstance(scrfd, ScrfdDetector)
    orl = cv2.imread(str(need_faces("att_orl", "ORL_s01", "ORL_s01_0001.png")))
    assert scrfd._detect_once(orl) == []
    assert len(scrfd.detect(orl)) == 1


def test_grayscale_input_works(default_pipeline: FacePipeline) -> None:
    name, img = images_of("lfw10", 1)[0]
    grey = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    ref = default_pipeline.analyze(cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR), Selection.LARGEST)
    for variant in (grey, grey[:, :, None]):
        (face,) = default_pipeline.analyze(variant, Selection.LARGEST)
        assert face.embedding.shape == (128,)
        assert float(face.embedding @ ref[0].embedding) > 0.99, name
    # lfw_subset is stored as 1-channel JPEG: decoded unchanged it is 2-D.
    _, stored_grey = images_of("lfw_subset", 1)[0]
    assert stored_grey.ndim == 2
    assert len(default_pipeline.detect(stored_grey, Selection.ALL)) >= 1


def test_blank_images_hold_no_face(
    default_pipeline: FacePipeline, insightface_pipeline: FacePipeline
) -> None:
    for pipe in (default_pipeline, insightface_pipeline):
        for blank in (np.zeros((480, 640, 3), np.uint8), np.full((300, 200), 200, np.uint8)):
            assert pipe.detect(blank, Selection.ALL) == []
            assert pipe.analyze(blank, Selection.ALL) == []


def test_blur_is_reported(default_pipeline: FacePipeline) -> None:
    _, img = images_of("lfw10", 1)[0]
    (sharp,) = default_pipeline.detect(img, Selection.LARGEST)
    (blurred,) = default_pipeline.detect(cv2.GaussianBlur(img, (0, 0), 3), Selection.LARGEST)
    assert sharp[1].acceptable
    assert "BLURRY" in blurred[1].reasons and not blurred[1].acceptable
    assert blurred[1].score < sharp[1].score


def test_missing_model_says_how_to_fetch(tmp_path: Path) -> None:
    shutil.copy(REPO / "models" / "manifest.toml", tmp_path / "manifest.toml")
    with pytest.raises(ModelError, match="recognizer models fetch"):
        build_face_pipeline("default", tmp_path)


# --- alignment and quality on synthetic input --------------------------------------------


def test_align_maps_the_template_onto_itself() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (112, 112, 3), dtype=np.uint8)
    out = align(img, ARCFACE_TEMPLATE)
    assert out.shape == (ALIGNED_SIZE, ALIGNED_SIZE, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[5:-5, 5:-5], img[5:-5, 5:-5])
    # A face twice as large, shifted: the crop is the template-sized view of it.
    big = cv2.resize(img, (224, 224), interpolation=cv2.INTER_NEAREST)
    canvas = np.zeros((400, 400, 3), np.uint8)
    canvas[50:274, 100:324] = big
    crop = align(canvas, ARCFACE_TEMPLATE * 2 + np.array([100, 50], np.float32))
    assert np.abs(crop.astype(int) - img.astype(int)).mean() < 30
    assert align(np.zeros((50, 60), np.uint8), ARCFACE_TEMPLATE).shape == (112, 112, 3)


def test_align_area_averages_a_face_shrunk_more_than_twice() -> None:
    # One-pixel stripes on a face 8x the crop's size: a plain bilinear warp samples one
    # phase of them (aliasing: all white here); area averaging gives their mean, flat grey.
    stripes = np.zeros((1200, 1200, 3), np.uint8)
    stripes[:, ::2] = 255
    landmarks = ARCFACE_TEMPLATE * 8 + np.array([100, 100], np.float32)
    crop = align(stripes, landmarks)
    direct = cv2.warpAffine(stripes, similarity_transform(landmarks), (112, 112))
    assert abs(float(direct.mean()) - 127.5) > 60
    assert crop.std() < 5 and abs(float(crop.mean()) - 127.5) < 5
    # Part of the crop outside the image stays black, as with a plain warp.
    edge = align(stripes, ARCFACE_TEMPLATE * 8 - np.array([300, 0], np.float32))
    assert edge[:, :20].max() == 0 and edge[:, -20:].std() < 5


def test_pose_from_landmarks() -> None:
    frontal = estimate_pose(ARCFACE_TEMPLATE)
    assert abs(frontal.yaw_deg) < 1 and abs(frontal.pitch_deg) < 1 and abs(frontal.roll_deg) < 1
    angle = np.deg2rad(20)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    rolled = estimate_pose(ARCFACE_TEMPLATE @ rot.T)
    assert rolled.roll_deg == pytest.approx(20, abs=0.5)
    assert abs(rolled.yaw_deg) < 1
    turned = ARCFACE_TEMPLATE.copy()
    turned[2, 0] += 15  # nose far towards image right: a strongly turned head
    assert estimate_pose(turned).yaw_deg > 30


def test_quality_reasons_for_a_small_low_score_face() -> None:
    lm = ARCFACE_TEMPLATE / 8 + 10
    face = Face(np.array([8, 8, 24, 24], np.float32), lm.astype(np.float32), 0.3)
    flat = np.full((112, 112, 3), 128, np.uint8)
    q = assess(flat, face, flat, QualityConfig())
    assert not q.acceptable
    assert {"FACE_TOO_SMALL", "BLURRY", "LOW_DETECTOR_SCORE"} <= set(q.reasons)
    assert 0 <= q.score < 0.5


# --- pipeline wiring with fakes ----------------------------------------------------------


class FakeDetector:
    def __init__(self, faces: list[Face]) -> None:
        self.faces = faces

    def detect(self, image_bgr: np.ndarray) -> list[Face]:
        assert image_bgr.ndim == 3 and image_bgr.shape[2] == 3
        return list(self.faces)


class LinearModel:
    """A stand-in ONNX model: a fixed random projection, not mirror-symmetric."""

    def __init__(self, dim: int = 8, batch: int | None = None) -> None:
        self.weights = np.random.default_rng(3).normal(size=(3 * 112 * 112, dim))
        self.batch = batch
        self.calls: list[int] = []

    def run(self, blob: np.ndarray) -> list[np.ndarray]:
        assert self.batch is None or len(blob) == self.batch
        self.calls.append(len(blob))
        return [blob.reshape(len(blob), -1).astype(np.float64) @ self.weights]


@pytest.mark.parametrize("cls", [SFaceEmbedder, ArcFaceEmbedder])
def test_flip_embedding_sums_a_crop_and_its_mirror(cls: type[SFaceEmbedder]) -> None:
    model = LinearModel(batch=None if cls.batched else 1)
    rng = np.random.default_rng(4)
    crops = [rng.integers(0, 255, (112, 112, 3), dtype=np.uint8) for _ in range(3)]
    mirrors = [np.ascontiguousarray(c[:, ::-1]) for c in crops]
    flip, plain = cls(model), cls(model, flip=False)  # type: ignore[arg-type]
    assert (flip.recipe, plain.recipe) == ("+flip", "")

    model.calls.clear()
    vectors = flip.embed(crops)
    # Batched models see originals and mirrors in one run; batch-1 models one run per view.
    assert model.calls == ([6] if cls.batched else [1] * 6)

    def view(c: np.ndarray) -> np.ndarray:
        return model.run(to_blob([c], cls.preprocess))[0]

    raw = np.concatenate([view(c) + view(m) for c, m in zip(crops, mirrors, strict=True)])
    np.testing.assert_allclose(vectors, l2_normalize(raw), atol=1e-5)
    np.testing.assert_allclose(flip.embed(mirrors), vectors, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(plain.embed(mirrors), plain.embed(crops), atol=1e-3)


@pytest.mark.parametrize("cls", [SFaceEmbedder, ArcFaceEmbedder])
@pytest.mark.parametrize("flip", [True, False])
def test_a_front_view_finished_later_is_the_full_embedding(
    cls: type[SFaceEmbedder], flip: bool
) -> None:
    model = LinearModel(batch=None if cls.batched else 1)
    rng = np.random.default_rng(5)
    crops = [rng.integers(0, 255, (112, 112, 3), dtype=np.uint8) for _ in range(3)]
    embedder = cls(model, flip=flip)  # type: ignore[arg-type]
    model.calls.clear()
    front = embedder.front(crops)
    # Half the work of embed when it flips: the crops as they are, no mirrors.
    assert model.calls == ([3] if cls.batched else [1] * 3)
    np.testing.assert_allclose(
        front,
        np.concatenate([model.run(to_blob([c], cls.preprocess))[0] for c in crops]),
        rtol=1e-5,
    )
    model.calls.clear()
    finished = embedder.finish(crops[1:2], front[1:2])
    assert model.calls == ([1] if flip else [])  # only the mirror is still to run
    np.testing.assert_allclose(finished, embedder.embed(crops[1:2]), atol=1e-5)
    assert embedder.front([]).shape == (0, embedder.dim)


def test_real_embedders_see_a_face_and_its_mirror_as_one(default_pipeline: FacePipeline) -> None:
    img = images_of("lfw10", 1)[0][1]
    face = default_pipeline.detector.detect(img)[0]
    crop = align(img, face.landmarks)
    same = default_pipeline.embedder.embed([crop, cv2.flip(crop, 1)])
    np.testing.assert_allclose(same[0], same[1], atol=1e-5)
    assert default_pipeline.embedding_model_name.endswith("+flip")
    # The derived CPU graph computes SFace's function: the template tag stays SFace's.
    assert default_pipeline.embedding_model_name == "sface-2021dec+flip"


def fake_face(x: float, size: float, score: float = 0.9) -> Face:
    lm = ARCFACE_TEMPLATE / 112 * size + np.array([x, 10], np.float32)
    box = np.array([x, 10, x + size, 10 + size], np.float32)
    return Face(box, lm.astype(np.float32), score)


def test_pipeline_selects_and_embeds_in_one_call() -> None:
    small, large = fake_face(10, 60), fake_face(120, 150)
    embedder = FakeEmbedder()
    pipe = FacePipeline(FakeDetector([small, large]), embedder, QualityConfig(), ("v",))
    rng = np.random.default_rng(1)
    img = rng.integers(0, 255, (200, 300), dtype=np.uint8)  # grey: the pipeline converts
    assert pipe.dim == 4 and pipe.model_versions == ("v",)

    (only,) = pipe.analyze(img, Selection.LARGEST)
    assert only.face is large and embedder.calls == [1]
    both = pipe.analyze(img, Selection.ALL)
    assert [a.face for a in both] == [large, small]
    assert embedder.calls == [1, 2], "all selected faces go through one embed call"
    assert both[0].embedding.dtype == np.float32 and both[0].embedding.shape == (4,)

    detected = pipe.detect(img, Selection.ALL)
    assert [f for f, _, _ in detected] == [large, small]
    assert detected[0][1].size_px == pytest.approx(150)
    assert embedder.calls == [1, 2], "detect never embeds"


def test_pipeline_without_faces_does_not_embed() -> None:
    embedder = FakeEmbedder()
    pipe = FacePipeline(FakeDetector([]), embedder, QualityConfig(), ())
    assert pipe.analyze(np.zeros((10, 10, 3), np.uint8), Selection.ALL) == []
    assert embedder.calls == []


# --- calibration ------------------------------------------------------------------------


def write_calibration(path: Path, impostor: object, genuine: object) -> FaceCalibration:
    data = {"threshold": 0.5, "impostor_scores": impostor, "genuine_scores": genuine}
    path.write_text(json.dumps(data), encoding="utf-8")
    return FaceCalibration.load(path)


def test_calibration_fmr_is_monotone_and_floors_honestly(tmp_path: Path) -> None:
    impostor = [0.1, 0.2, 0.2, 0.3]
    cal = write_calibration(tmp_path / "c.json", impostor, [0.4, 0.6, 0.8])
    assert cal.threshold == 0.5 and cal.n_impostor == 4 and cal.n_genuine == 3
    assert cal.fmr_at(0.0) == 1.0
    assert cal.fmr_at(0.1) == 1.0
    assert cal.fmr_at(0.2) == pytest.approx(0.75)
    assert cal.fmr_at(0.3) == pytest.approx(0.25)
    assert cal.fmr_at(0.25) == pytest.approx(0.5)  # interpolated between observed scores
    assert cal.fmr_at(0.31) == pytest.approx(1 / 5)  # above every impostor: 1/(n+1), not 0
    assert cal.fmr_at(1.0) == pytest.approx(1 / 5)
    grid = np.linspace(-1, 1, 401)
    fmr = [cal.fmr_at(s) for s in grid]
    fnmr = [cal.fnmr_at(s) for s in grid]
    assert all(a >= b for a, b in itertools.pairwise(fmr))
    assert all(a <= b for a, b in itertools.pairwise(fnmr))
    assert min(fmr) > 0
    assert cal.fnmr_at(0.4) == 0.0 and cal.fnmr_at(0.9) == 1.0
    assert cal.fnmr_at(0.6) == pytest.approx(1 / 3)
    assert "1/(n_impostor+1)" in cal.score_floor_note


def test_compact_scores_give_the_same_rates(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    impostor = rng.normal(0.0, 0.1, 2000)
    genuine = rng.normal(0.6, 0.1, 300)
    plain = write_calibration(tmp_path / "a.json", impostor.tolist(), genuine.tolist())
    small = write_calibration(tmp_path / "b.json", compact(impostor), compact(genuine))
    assert small.n_impostor == 2000 and small.n_genuine == 300
    for s in (-0.2, 0.0, 0.15, 0.3, 0.5):
        assert small.fmr_at(s) == pytest.approx(plain.fmr_at(s), abs=2e-3)
        assert small.fnmr_at(s) == pytest.approx(plain.fnmr_at(s), abs=5e-3)


@pytest.mark.parametrize("profile", ["default", "insightface"])
def test_shipped_calibration_loads(profile: str) -> None:
    path = REPO / "models" / f"face_calibration_{profile}.json"
    if not path.is_file():
        missing(f"{path.name} absent; run scripts/calibrate_faces.py")
    cal = FaceCalibration.load(path)
    assert 0.2 < cal.threshold < 0.95
    assert cal.fmr_at(cal.threshold) <= 1e-4
    assert cal.fmr_at(cal.threshold) >= 1 / (cal.n_impostor + 1)
    assert cal.fnmr_at(cal.threshold) < 0.2
