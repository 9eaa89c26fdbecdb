"""The evaluation protocol: hand-checked scoring functions, and `evaluate` end to end with a
perfect model, a voice-blind model and stand-in feature/attribute networks whose answers are
known."""

from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from scldm.data.manifest import read_manifest
from scldm.errors import InputError
from scldm.evaluation.demo_report import demo_report
from scldm.evaluation.evaluate import EvalSettings, evaluate, plan_clips
from scldm.evaluation.metrics import (
    age_errors,
    bootstrap_ci,
    feature_distances,
    gender_hits,
    pooled_hits,
    pooled_recall,
    speaker_means,
    summarise,
)
from scldm.faces import load_face_tensor

# --- scoring functions --------------------------------------------------------------------


def test_feature_distances_hand_checked():
    a = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    b = torch.tensor([[0.0, 0.0 + 4.0], [0.0, 2.0]])
    d = feature_distances(a, b, normalise=False)
    assert d["l1"].tolist() == pytest.approx([3.0, 3.0])
    assert d["l2"].tolist() == pytest.approx([3.0, math.sqrt(5)])
    # cos(a0, b0) = 16 / 20 = 0.8 → 20; a1 ⟂ b1 → 100
    assert d["cos"].tolist() == pytest.approx([20.0, 100.0])
    n = feature_distances(a, b, normalise=True)
    assert n["l2"].tolist() == pytest.approx([math.sqrt(2 * 0.2), math.sqrt(2)])
    assert n["cos"].tolist() == pytest.approx(d["cos"].tolist())  # scale-free
    same = feature_distances(a, 7 * a, normalise=True)
    assert same["l1"].abs().max() < 1e-9 and same["cos"].abs().max() < 1e-9


def test_attribute_scores_leave_unknowns_out():
    assert np.array_equal(
        gender_hits(["f", "m", None, "f"], ["f", "f", "m", None]),
        np.array([1.0, 0.0, np.nan, np.nan]),
        equal_nan=True,
    )
    assert np.array_equal(
        age_errors([30, None, 50.5], [40, 20, 50]), np.array([10, np.nan, 0.5]), equal_nan=True
    )


def test_speaker_means_count_each_speaker_once():
    vals, ids = speaker_means(np.array([1.0, 1.0, 1.0, 0.0, np.nan]), ["a", "a", "a", "b", "c"])
    assert ids == ["a", "b"] and vals.tolist() == [1.0, 0.0]
    s = summarise(np.array([1.0, 1.0, 1.0, 0.0, np.nan]), ["a", "a", "a", "b", "c"])
    assert s["value"] == 0.5 and s["speakers"] == 2 and s["items"] == 4 and s["missing"] == 1


def test_bootstrap_interval_brackets_the_mean_and_shrinks_with_more_speakers():
    rng = np.random.default_rng(0)
    small = rng.normal(size=20)
    big = rng.normal(size=2000)
    m, lo, hi = bootstrap_ci(small)
    assert lo < m < hi
    mb, lob, hib = bootstrap_ci(big)
    assert hib - lob < (hi - lo) / 5  # ~1/sqrt(100) = 1/10 of the width
    assert lob < 0 < hib  # the true mean, 0
    c = np.full(10, 3.0)
    assert bootstrap_ci(c) == (3.0, 3.0, 3.0)
    assert all(math.isnan(v) for v in bootstrap_ci(np.array([])))


def test_pooled_hits_average_to_pooled_recall():
    g = torch.Generator().manual_seed(0)
    keys = torch.randn(150, 8, generator=g)
    query = keys + 0.8 * torch.randn(150, 8, generator=g)
    hits = pooled_hits(query, keys, pool_size=100, num_pools=20, seed=3)
    ref = pooled_recall(query, keys, pool_size=100, num_pools=20, seed=3)
    # a speaker's hit rate is averaged over the pools it was in; weighting differs slightly
    assert np.nanmean(hits[1]) == pytest.approx(ref["R@1"], abs=0.03)
    assert np.nanmean(hits[10]) == pytest.approx(ref["R@10"], abs=0.03)
    perfect = pooled_hits(keys, keys, pool_size=100)
    assert np.nanmin(perfect[1]) == 1.0


# --- evaluate end to end ------------------------------------------------------------------


class PixelFeatures:
    """Stand-in feature network: the face downsampled to 4 × 4 (48-d)."""

    name = "pixels"
    convention = {"network": "4x4 average pool of the image (test stand-in)"}

    def __call__(self, faces):
        f = torch.nn.functional.adaptive_avg_pool2d(faces, 4).flatten(1)
        return f, torch.ones(len(faces), dtype=torch.bool)


class LookupAttributes:
    """Stand-in estimator that knows every true face of the data set by its pixels: it
    answers that face's labels, and None for any other image (a face it cannot find)."""

    name = "lookup"
    convention = {"estimator": "exact pixel lookup (test stand-in)"}

    def __init__(self, data: Path, size: int):
        self.table = {}
        for r in read_manifest(data):
            for f in [r["face"], *r.get("faces", [])]:
                try:
                    key = self._key(load_face_tensor(data / f, size))
                except InputError:  # a damaged image: nobody's face
                    continue
                self.table[key] = {k: r[k] for k in ("gender", "age", "background")}

    @staticmethod
    def _key(face):
        return hashlib.sha1(((face + 1) * 127.5).round().byte().numpy().tobytes()).hexdigest()

    def __call__(self, faces):
        found = [self.table.get(self._key(f)) for f in faces]
        return {
            k: [None if x is None else x[k] for x in found] for k in ("gender", "age", "background")
        }


class CopyTrueFace:
    """A perfect model: the clip's own true face."""

    name = "copy"
    settings = {"kind": "true face"}

    def __init__(self, data: Path, size: int):
        self.size = self.image_size = size
        self.face = {data / r["audio"]: data / r["face"] for r in read_manifest(data)}

    def __call__(self, audio, generators):
        return torch.stack([load_face_tensor(self.face[a], self.size) for a in audio])


class GreyFace(CopyTrueFace):
    """A voice-blind model: the same grey image for every voice."""

    name = "grey"
    settings = {"kind": "grey"}

    def __call__(self, audio, generators):
        noise = [0.01 * torch.randn(3, self.size, self.size, generator=g) for g in generators]
        return torch.stack(noise)


def _expected_counts(data: Path, *, max_clips: int | None = None, num_images: int = 1) -> dict:
    """`evaluate`'s counts for the train split, from the manifest itself: its first `max_clips`
    clips, their speakers, the images made, and the clips whose speaker has another image."""
    rows = read_manifest(data, split="train")[:max_clips]
    images: dict[str, set[str]] = {}
    for r in read_manifest(data):
        images.setdefault(r["speaker_id"], set()).update([r["face"], *r.get("faces", [])])
    return {
        "clips": len(rows),
        "speakers": len({r["speaker_id"] for r in rows}),
        "generated_images": len(rows) * num_images,
        "floor_clips": sum(len(images[r["speaker_id"]]) > 1 for r in rows),
    }


def _run(data, out, generator, *, name="lookup", **kw):
    size = generator.image_size
    settings = EvalSettings(split="train", bootstrap=200, **kw)
    return evaluate(
        generator,
        data,
        out,
        features={"pixels": PixelFeatures()},
        attributes={name: LookupAttributes(data, size)},
        settings=settings,
        progress=False,
    )


def test_perfect_model_scores_zero_distance_and_full_agreement(tiny_stage1, tmp_path):
    data, _ = tiny_stage1
    res = _run(data, tmp_path / "ev", CopyTrueFace(data, 32))
    f = res["features"]["pixels"]
    assert f["model"]["cos/l2norm/clip"]["value"] == pytest.approx(0, abs=1e-9)
    assert f["model"]["R@1"]["value"] == 1.0
    # the floor (another image of the speaker) is further than the copy, chance further still
    assert f["floor"]["cos/l2norm/clip"]["value"] > 0.1
    assert f["chance"]["cos/l2norm/clip"]["value"] > f["floor"]["cos/l2norm/clip"]["value"]
    expected = _expected_counts(data, num_images=EvalSettings().num_images)
    assert expected["speakers"] >= 2 and expected["floor_clips"] > 0  # a real check
    assert {k: res["counts"][k] for k in expected} == expected
    a = res["attributes"]["lookup"]
    assert a["model"]["gender_acc"]["value"] == 1.0
    assert a["model"]["age_mae"]["value"] == 0.0
    assert a["floor"]["gender_acc"]["value"] == 1.0
    assert a["floor"]["background_acc"]["value"] == 1.0  # extras are scored too
    # chance pairs different speakers: gender agreement near 1/2, never perfect
    assert 0.2 < a["chance"]["gender_acc"]["value"] < 0.8
    for cond in ("model", "floor", "chance"):
        lo, hi = a[cond]["gender_acc"]["ci"]
        assert lo <= a[cond]["gender_acc"]["value"] <= hi
    saved = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert saved["features"]["pixels"]["convention"] == PixelFeatures.convention
    assert "bootstrap" in saved["conventions"]["aggregation"]
    report = (tmp_path / "ev" / "report.md").read_text()
    assert "| floor |" in report and "| chance |" in report and "samples.png" in report
    assert (tmp_path / "ev" / "samples.png").is_file() and (
        tmp_path / "ev" / "metrics.png"
    ).is_file()


def test_unfound_faces_are_counted_not_scored(tiny_stage1, tmp_path):
    data, _ = tiny_stage1
    res = _run(data, tmp_path / "ev", GreyFace(data, 32), max_clips=10)
    a = res["attributes"]["lookup"]
    made = _expected_counts(data, max_clips=10, num_images=EvalSettings().num_images)
    assert made["generated_images"] > 0
    assert a["not_found"]["model"] == made["generated_images"]  # the lookup knows no grey face
    assert math.isnan(a["model"]["gender_acc"]["value"])
    assert a["model"]["gender_acc"]["missing"] == made["generated_images"]
    assert a["floor"]["gender_acc"]["value"] == 1.0


def test_generation_is_cached_resumable_and_settings_checked(tiny_stage1, tmp_path):
    data, _ = tiny_stage1
    out = tmp_path / "ev"
    gen = GreyFace(data, 32)
    _run(data, out, gen, max_clips=6, num_images=2)
    images = sorted((out / "images").glob("*.png"))
    assert len(images) == _expected_counts(data, max_clips=6, num_images=2)["generated_images"] > 0
    first = {p.name: p.read_bytes() for p in images}
    images[3].unlink()  # an interrupted run: one image missing
    calls = []
    orig = gen.__call__

    class Counting(GreyFace):
        def __call__(self, audio, generators):
            calls.append(len(audio))
            return orig(audio, generators)

    _run(data, out, Counting(data, 32), max_clips=6, num_images=2)
    assert calls == [1]  # only the missing face is made again, and it is identical
    assert {p.name: p.read_bytes() for p in sorted((out / "images").glob("*.png"))} == first
    with pytest.raises(InputError, match="other settings"):
        _run(data, out, gen, max_clips=6, num_images=2, seed=1)


def test_chance_pairs_every_clip_with_another_speaker(tiny_stage1):
    data, _ = tiny_stage1
    clips = plan_clips(data, "train", max_clips=None, seed=0)
    owner = {data / f: r["speaker_id"] for r in read_manifest(data) for f in r["faces"]}
    assert all(owner[c.chance_face] != c.speaker for c in clips)
    assert all(owner[c.other_face] == c.speaker and c.other_face != c.face for c in clips)
    with pytest.raises(InputError, match="split"):
        plan_clips(data, "nosuchsplit", max_clips=None, seed=0)


def test_demo_report_puts_generated_floor_and_chance_side_by_side(tiny_stage1, tmp_path):
    data, run = tiny_stage1
    demo = tmp_path / "demo"
    _run(data, demo / "eval", CopyTrueFace(data, 32), name="synthvox", max_clips=12)
    (demo / "encoders").symlink_to(run)
    path = demo_report(demo)
    text = path.read_text()
    gender = next(line for line in text.splitlines() if "| gender |" in line)
    assert gender.startswith("| linked") and gender.count("1.000 [1.000, 1.000]") == 2
    assert "| face-only (not in the voice) | background |" in text
    assert "![samples](samples.png)" in text and (demo / "samples.png").is_file()
    assert "## Stage 1" in text


def test_cli_evaluate_refuses_bad_input_in_one_line(tiny_stage1, tmp_path, capsys):
    from scldm.cli import main

    data, _ = tiny_stage1
    args = ["evaluate", "--data", str(data), "-o", str(tmp_path / "ev")]
    assert main([*args, "--model", str(tmp_path)]) == 2
    assert "not a pipeline folder" in capsys.readouterr().err
    (tmp_path / "model_index.json").write_text("{}")
    assert main([*args, "--model", str(tmp_path), "--features", "nosuch"]) == 2
    err = capsys.readouterr().err
    assert "unknown face features 'nosuch'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "ev").exists()  # nothing half-written


# --- scoring size, diversity, per-speaker values, the method's record ----------------------


def test_pairwise_diversity_known_answers():
    from scldm.evaluation.metrics import pairwise_diversity

    f = torch.tensor(
        [
            [[1.0, 0.0], [3.0, 0.0], [2.0, 0.0]],  # one direction, any scale: 0
            [[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]],  # pairs 100, 200, 100 → 133.33
            [[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]],  # face 3 missed: the one pair left, 100
            [[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]],  # one face found: no pair
        ]
    )
    found = torch.tensor([[1, 1, 1], [1, 1, 1], [1, 1, 0], [0, 1, 0]], dtype=torch.bool)
    d = pairwise_diversity(f, found)
    assert d[:3].tolist() == pytest.approx([0.0, 400 / 3, 100.0])
    assert math.isnan(d[3])


class Recording(PixelFeatures):
    """PixelFeatures that records the image sizes it was given."""

    def __init__(self):
        self.sizes = set()

    def __call__(self, faces):
        self.sizes.add(tuple(faces.shape[-2:]))
        return super().__call__(faces)


class DeterministicCopy(CopyTrueFace):
    """A deterministic method (the clip's true face), which records how often it is called."""

    name = "copy-det"
    deterministic = True
    method = {"name": "copy-det", "title": "Copy (test)", "deviations": ["copies the answer"]}

    def __init__(self, data, size):
        super().__init__(data, size)
        self.calls = 0

    def __call__(self, audio, generators):
        self.calls += len(audio)
        return super().__call__(audio, generators)


def test_faces_are_scored_at_the_given_size(tiny_stage1, tmp_path):
    data, _ = tiny_stage1
    stored = Image.open(data / read_manifest(data, split="train")[0]["face"]).size[0]
    small = stored // 2
    gen = CopyTrueFace(data, small)  # a perfect model whose faces are half the stored size
    feats = Recording()
    kw = {"features": {"pixels": feats}, "attributes": {}, "progress": False}
    at = evaluate(
        gen,
        data,
        tmp_path / "a",
        **kw,
        settings=EvalSettings(split="train", bootstrap=50, max_clips=6, image_size=small),
    )
    assert feats.sizes == {(small, small)} and at["scoring"]["image_size"] == small
    assert at["settings"]["image_size"] == small
    # true faces resized to `small` with the same Lanczos as the generated ones: identical
    assert at["features"]["pixels"]["model"]["cos/l2norm/clip"]["value"] == pytest.approx(
        0, abs=1e-9
    )
    feats.sizes.clear()
    default = evaluate(
        gen,
        data,
        tmp_path / "b",
        **kw,
        settings=EvalSettings(split="train", bootstrap=50, max_clips=6),
    )
    assert feats.sizes == {(stored, stored)}  # the data's size: generated faces upsampled
    assert default["scoring"] == default["scoring"] | {
        "image_size": stored,
        "generated_size": small,
    }
    assert default["features"]["pixels"]["model"]["l1/l2norm/clip"]["value"] > 1e-3
    with pytest.raises(InputError, match="image-size"):
        evaluate(gen, data, tmp_path / "c", **kw, settings=EvalSettings(image_size=8))


def test_diversity_is_zero_for_identical_faces_and_positive_for_different_ones(
    tiny_stage1, tmp_path, caplog
):
    data, _ = tiny_stage1
    grey = _run(data, tmp_path / "grey", GreyFace(data, 32), max_clips=6, num_images=3)
    div = grey["features"]["pixels"]["model"]["diversity"]
    assert div["value"] > 0 and div["ci"][0] > 0  # seeded noise: every face differs
    assert grey["features"]["pixels"]["floor"].get("diversity") is None
    one = _run(data, tmp_path / "one", GreyFace(data, 32), max_clips=6, num_images=1)
    assert one["features"]["pixels"]["model"]["diversity"] is None  # n/a with K = 1
    assert "| model |" in (tmp_path / "one" / "report.md").read_text()

    det = DeterministicCopy(data, 32)
    with caplog.at_level(logging.WARNING):
        res = _run(data, tmp_path / "det", det, max_clips=6, num_images=3)
    made = _expected_counts(data, max_clips=6, num_images=1)["generated_images"]
    assert det.calls == made  # one face a clip, copied to the other two files
    assert len(list((tmp_path / "det" / "images").glob("*.png"))) == 3 * made
    assert res["features"]["pixels"]["model"]["diversity"]["value"] == 0.0
    assert len([r for r in caplog.records if "identical" in r.message]) == 1
    assert res["method"]["title"] == "Copy (test)"
    assert res["method"]["deviations"] == ["copies the answer"]
    report = (tmp_path / "det" / "report.md").read_text()
    assert "Copy (test)" in report and "- copies the answer" in report


def test_per_speaker_values_average_to_the_reported_value(tiny_stage1, tmp_path):
    data, _ = tiny_stage1
    res = _run(data, tmp_path / "ev", GreyFace(data, 32), max_clips=8, num_images=2)
    per = json.loads((tmp_path / "ev" / "per_speaker.json").read_text())
    assert per["condition"] == "model"
    values = per["values"]
    speakers = {r["speaker_id"] for r in read_manifest(data, split="train")[:8]}
    checked = 0
    for kind in ("features", "attributes"):
        for name, scored in res[kind].items():
            for metric, summary in scored["model"].items():
                if not isinstance(summary, dict):
                    continue  # pool_size
                spk = values[f"{kind}/{name}/{metric}"]
                assert set(spk) <= speakers and len(spk) == summary["speakers"]
                if spk:
                    assert np.mean(list(spk.values())) == pytest.approx(summary["value"])
                    checked += 1
    assert checked >= 10 and "features/pixels/diversity" in values
    assert "per_speaker" not in json.loads((tmp_path / "ev" / "metrics.json").read_text())
