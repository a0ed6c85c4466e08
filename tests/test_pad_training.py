"""Issue 27: the synthetic presentation-attack generator, the recipe's folds and thresholds,
and `scripts/train_pad.py --data DIR` on a site's own (here: generated) frames."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pytest

from benchmarks import pad_model as pm
from devtools import pad_synth as ps
from recognizer.face.liveness import build_liveness
from recognizer.onnx import sha256_file
from tests.conftest import dataset, files_in


def _portrait(seed: int = 0) -> np.ndarray:
    """A colourful stand-in photo (no face needed for the generator's own properties)."""
    rng = np.random.default_rng(seed)
    img = cv2.resize(rng.integers(0, 255, (12, 10, 3), dtype=np.uint8), (200, 240))
    cv2.ellipse(img, (100, 110), (55, 75), 0, 0, 360, (90, 140, 200), -1)
    return img


@pytest.mark.parametrize("make", [ps.make_print, ps.make_replay])
def test_the_generator_is_seeded_and_makes_camera_frames(make) -> None:  # type: ignore[no-untyped-def]
    photo = _portrait()
    a = make(photo, np.random.default_rng((27, 1)))
    b = make(photo, np.random.default_rng((27, 1)))
    c = make(photo, np.random.default_rng((27, 2)))
    assert a.shape == (*ps.FRAME, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b), "same seed, same frame"
    assert not np.array_equal(a, c), "another seed, another frame"


def test_a_print_compresses_the_gamut_and_a_replay_shows_a_pixel_grid() -> None:
    photo = np.zeros((300, 300, 3), np.uint8)
    photo[:, :150] = (0, 0, 255)  # saturated red and pure black
    for k in range(5):
        medium, mask = ps.make_medium_print(photo, np.random.default_rng((3, k)))
        inside = medium[mask > 0.99]
        assert inside.min() >= 5, "print blacks are never the photo's black"
        assert inside.max() <= 255 + 80  # white paper plus at most a sheen
    flat = np.full((120, 120, 3), 200, np.uint8)
    screen, _ = ps.make_medium_replay(flat, np.random.default_rng(5))
    h, w = screen.shape[:2]
    centre = screen[h // 3 : 2 * h // 3, w // 3 : 2 * w // 3]
    # A flat grey photo on a screen is no longer flat: sub-pixel stripes and gaps.
    assert centre.std() > 10
    assert np.std(flat) == 0


def test_bona_fide_variants_keep_the_photo() -> None:
    photo = _portrait(1)
    v = ps.bona_fide_variant(photo, np.random.default_rng(9))
    back = cv2.resize(v, photo.shape[1::-1], interpolation=cv2.INTER_AREA)
    assert np.mean(np.abs(back.astype(float) - photo)) < 25


def test_no_two_synthetic_frames_of_a_photo_share_a_random_stream() -> None:
    from benchmarks.pad_corpus import stream

    # The streams the shipped corpus drew (two variants, two prints, two replays) stay put:
    # the reference model's sha256 depends on them.
    assert [stream("variant", k) for k in range(2)] == [0, 50]
    assert [stream("print", k) for k in range(2)] == [1, 2]
    assert [stream("replay", k) for k in range(2)] == [100, 101]
    # Larger counts (a third variant met the first replay's stream before) stay distinct.
    drawn = [(kind, k) for kind in ("variant", "print", "replay") for k in range(120)]
    assert len({stream(kind, k) for kind, k in drawn}) == len(drawn)


def test_inner_folds_are_disjoint_by_set_and_by_subject() -> None:
    source = np.array(["nuaa"] * 6 + ["lfw10"] * 4 + ["misc"] * 2)
    group = np.array(
        [f"nuaa/{i}" for i in (1, 1, 2, 3, 4, 5)]
        + ["lfw10/a", "lfw10/a", "lfw10/b", "lfw10/c"]
        + ["misc/x", "misc/y"]
    )
    folds = pm.inner_folds(source, group, {"lfw10", "misc"})
    assert set(folds[source == "lfw10"]) == {"set:lfw10"}
    assert set(folds[source == "misc"]) == {"set:misc"}
    nuaa = folds[source == "nuaa"]
    assert len(set(nuaa)) == 3 and nuaa[0] == nuaa[1]  # a subject never split
    for g in set(group):
        assert len(set(folds[group == g])) == 1


def test_the_live_threshold_protects_the_worst_source() -> None:
    # Source "a" is easy; source "b"'s attacks reach 0.7. Pooled, b's attacks are too few to
    # move the threshold; per source, b's APCER weighs as much as a's BPCER.
    live = np.array([True] * 100 + [False] * 100 + [True] * 10 + [False] * 10)
    parts = [(0.6, 1, 100), (0, 0.3, 100), (0.8, 1, 10), (0.1, 0.7, 10)]
    scores = np.concatenate([np.linspace(*p) for p in parts])
    source = np.array(["a"] * 200 + ["b"] * 20)

    def worst(t: float) -> float:
        b_apcer = np.mean(scores[(source == "b") & ~live] >= t)
        a_bpcer = np.mean(scores[(source == "a") & live] < t)
        return float(max(b_apcer, a_bpcer))

    pooled = pm.pick_thresholds(scores, live)
    th = pm.pick_thresholds(scores, live, source)
    assert pooled.live < th.live
    assert worst(th.live) <= 0.1 < 0.2 <= worst(pooled.live)
    assert th.attack <= th.live


def test_head_weights_balance_classes_and_sources_within_the_head() -> None:
    live = np.array([True, True, False, False, True, True, False, False, True])
    source = np.array(["nuaa"] * 4 + ["s1"] * 3 + ["s2"] * 2)
    # Head S: the face sets' samples and, at a share of 0.25, NUAA's bona fide.
    mask = (source != "nuaa") | live
    w = pm.head_weights(live, source, mask, {"nuaa": 0.25})
    assert np.isclose(w[mask].mean(), 1.0) and (w[~mask] == 0).all()
    assert np.isclose(w[live].sum(), w[~live].sum()), "each class half"
    s1, s2, nuaa = (w[live & (source == s)].sum() for s in ("s1", "s2", "nuaa"))
    assert np.isclose(s1, s2) and np.isclose(nuaa / s1, 0.25)
    assert np.isclose(w[~live & (source == "s1")].sum(), w[~live & (source == "s2")].sum())
    # Without shares every source of a class weighs the same.
    site = pm.head_weights(live, source, np.ones(len(live), bool))
    assert np.isclose(site[live].sum(), site[~live].sum())
    assert np.isclose(site[~live & (source == "nuaa")].sum(), site[~live & (source == "s1")].sum())


def test_two_heads_export_to_one_graph_that_scores_as_predict() -> None:
    rng = np.random.default_rng(3)
    n = pm._n_features()

    def head(scale: float) -> pm.Classifier:
        return pm.Classifier(
            rng.standard_normal(n), 1 + rng.random(n), scale * rng.standard_normal(n), 0.3
        )

    clf = pm.TwoHeads(head(0.05), head(0.08))
    model = pm.session(pm.build_graph(clf, {"live_threshold": "0.5"}))
    assert model.output_names[:2] == ["liveness", "features"]
    crops = rng.integers(0, 255, (4, 3, pm.SIZE, pm.SIZE)).astype(np.float32)
    live, feats = model.run(crops)[:2]
    assert live.shape == (4, 1)
    expected = pm.predict(clf, feats.astype(np.float64))
    assert np.allclose(live[:, 0], expected, atol=1e-4)
    both = np.stack([pm.predict(clf.synthetic, feats), pm.predict(clf.real, feats)])
    assert np.allclose(expected, both.min(0)), "attack if either head says attack"


def _site_folder(root: Path) -> Path:
    """A site's frames: live, print and replay folders per subject, generated from sample
    photos (three identities of lfw10)."""
    people = sorted(p for p in dataset("faces", "lfw10").iterdir() if p.is_dir())[:4]
    site = root / "site"
    for i, person in enumerate(people):
        for j, path in enumerate(files_in(person, "*.jpg")[:4]):
            photo = cv2.imread(str(path))
            rng = np.random.default_rng((i, j))
            frames = {
                "live": ps.bona_fide_variant(photo, rng),
                "print": ps.make_print(photo, rng),
                "replay": ps.make_replay(photo, rng),
            }
            for kind, frame in frames.items():
                out = site / kind / person.name / f"{j}.jpg"
                out.parent.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(out), frame)
    return site


def test_train_pad_retrains_on_a_sites_own_folder(tmp_path: Path) -> None:
    from scripts import train_pad

    site = _site_folder(tmp_path)
    out1, out2 = tmp_path / "a.onnx", tmp_path / "b.onnx"
    cache = tmp_path / "cache"
    assert train_pad.main(["--data", str(site), "--out", str(out1), "--cache", str(cache)]) == 0
    assert train_pad.main(["--data", str(site), "--out", str(out2), "--cache", str(cache)]) == 0
    assert sha256_file(out1) == sha256_file(out2), "one command, one model"
    stage = build_liveness(model_path=out1, model_sha256=sha256_file(out1))
    meta = stage.model.metadata
    assert meta["data"] == "site data: site" and meta["held_out"] == ""
    assert "live" in meta["samples"] and "replay" in meta["samples"]
    assert stage.thresholds.attack <= stage.thresholds.live
    assert float(meta["context"]) == pm.CONTEXT


def _toy_corpus(fitted: np.ndarray | None = None):  # type: ignore[no-untyped-def]
    """A toy corpus (no pixels): three sources of three people, each with two bona fide
    photos, a print and a replay; the attacks are the synthetic ones."""
    from benchmarks.pad_corpus import Corpus

    rows = [
        (src, f"{src}/{person}", kind)
        for src in ("s1", "s2", "s3")
        for person in range(3)
        for kind in ("live", "live", "print", "replay")
    ]
    source, group, kind = (np.array(col) for col in zip(*rows, strict=True))
    n = len(rows)
    return Corpus(source, group, kind, kind != "live", np.zeros((n, 3, 1, 1), np.uint8), 0, fitted)


def test_cross_attack_models_are_scored_on_the_attack_they_never_saw() -> None:
    from benchmarks import pad_eval as pe

    rng = np.random.default_rng(0)
    corpus = _toy_corpus()
    kind, n = corpus.kind, len(corpus)
    # One feature says "attack"; a second separates prints from replays.
    x = np.stack([(kind == "live") + 0.1 * rng.standard_normal(n), (kind == "print") * 1.0], 1)
    folds = pe.cross_attack(corpus, x, k=0)
    prints_only = [f for f in folds if f.protocol == "prints only"]
    replays_only = [f for f in folds if f.protocol == "replays only"]
    assert len(prints_only) == len(replays_only) == 3
    for f in prints_only:
        assert f.apcer_replay.total == 3 and f.apcer_print.total == 0
    for f in replays_only:
        assert f.apcer_print.total == 3 and f.apcer_replay.total == 0


def test_fold_models_leave_their_set_out_and_the_bench_scores_each_set_with_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from benchmarks import fusion, pad_folds
    from benchmarks.pad_corpus import Corpus

    rng = np.random.default_rng(1)
    kinds, sources, groups, syn = [], [], [], []
    for src in ("nuaa", "s1", "s2"):
        for person in range(3):
            for kind in ("live", "live", "print", "replay"):
                kinds.append(kind)
                sources.append(src)
                groups.append(f"{src}/{person}")
                syn.append(src != "nuaa" and kind != "live")
    kind = np.array(kinds)
    # Bona fide crops are bright and noisy, attacks darker and smoother.
    crops = rng.integers(0, 60, (len(kind), 3, pm.SIZE, pm.SIZE)).astype(np.uint8)
    crops[kind == "live"] += 120
    corpus = Corpus(np.array(sources), np.array(groups), kind, np.array(syn), crops, 0)
    monkeypatch.setattr(pad_folds.pc, "cached", lambda *a, **k: corpus)
    models = pad_folds.leave_set_out_models(
        tmp_path, lambda img: [], pad_root=None, faces_root=tmp_path
    )
    assert set(models) == {"s1", "s2"}, "one model per face set whose attacks are synthetic"
    for name, path in models.items():
        stage = build_liveness(model_path=path, model_sha256=sha256_file(path))
        meta = stage.model.metadata
        assert meta["left_out"] == name and name not in meta["sources"].split(",")
        assert stage.thresholds.attack <= stage.thresholds.live
    again = pad_folds.leave_set_out_models(
        tmp_path, lambda img: [], pad_root=None, faces_root=tmp_path
    )
    assert again == models, "cached"
    monkeypatch.setattr(pad_folds, "_recipe", lambda: b"an edited recipe")
    edited = pad_folds.leave_set_out_models(
        tmp_path, lambda img: [], pad_root=None, faces_root=tmp_path
    )
    assert set(edited) == set(models) and not set(edited.values()) & set(models.values()), (
        "a changed recipe trains the fold models again"
    )

    class Faces:
        liveness = "shipped"

    faces, seen = Faces(), []

    def decide(ev: fusion.Event) -> str:
        seen.append(faces.liveness)
        return "outcome"

    fold = fusion._FoldLiveness(decide, faces, models)  # type: ignore[arg-type]
    root = tmp_path / "faces"
    for face in (root / "s1/a/a_1.jpg", root / "grey/b/b_1.jpg", root / "s2/c/c_1.jpg"):
        assert fold(fusion.Event("genuine", "x", None, face)) == "outcome"
        assert faces.liveness == "shipped", "restored after every event"
    assert seen[0] is fold.stages["s1"] and seen[2] is fold.stages["s2"]
    assert seen[1] == "shipped", "a set without a fold model (grey) keeps the shipped model"


def test_faces_cropped_with_a_shrunk_context_are_scored_but_never_trained_on() -> None:
    from benchmarks import pad_eval as pe

    rng = np.random.default_rng(2)
    n = len(_toy_corpus())
    fitted = np.arange(n) % 4 == 1  # one bona fide photo per person is a tight one
    corpus = _toy_corpus(fitted)
    kind = corpus.kind
    x = np.stack([(kind == "live") + 0.1 * rng.standard_normal(n), rng.standard_normal(n)], 1)
    assert np.array_equal(corpus.trainable, ~fitted)
    assert np.array_equal(corpus.subset(np.arange(n) < 8).trainable, ~fitted[:8])
    train = corpus.source != "s1"
    trained = pe.fit(corpus, x, train)
    assert len(trained.oof_scores) == int((train & ~fitted).sum()), "never trained on"
    test = ~train
    fold, _ = pe.report("leave set out", "s1", corpus, x, trained, test)
    # ...but scored where left out: every real bona fide face of s1, tight ones included.
    assert fold.bpcer.total == int((test & (kind == "live")).sum())
    older = dataclasses.replace(corpus, fitted=None)
    assert older.trainable.all(), "a corpus without the flag trains on every sample"
