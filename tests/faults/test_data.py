"""Fault injection for the data side (issue 24): an unreadable clip or a damaged face image in a
prepared data set is skipped and counted by the loaders, the latent cache and `scldm evaluate`,
never a crash. (Two processes with unequal batches: tests/test_train_encoders.py.)"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from scldm.audio import SpectrogramFrontend
from scldm.data.datasets import SpeechFaceDataset, collate
from scldm.data.manifest import read_manifest
from scldm.errors import InputError
from scldm.evaluation.evaluate import plan_clips
from scldm.training.latents import build_cache, load_encoders
from test_datasets import prepared  # noqa: F401
from test_evaluate import GreyFace, _expected_counts, _run


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("in_memory", [False, True])
def test_an_unreadable_clip_is_skipped_and_logged_not_a_crash(
    prepared,  # noqa: F811
    caplog,
    workers,
    in_memory,
):
    # a clip damaged after `scldm prepare`: batches leave it out, the rest train as before
    (prepared / "audio/spk2/1.wav").write_bytes(b"not a wav file at all")
    ds = SpeechFaceDataset(prepared, "train", frontend=SpectrogramFrontend(segment_seconds=0.5))
    if in_memory:
        with caplog.at_level("WARNING"):
            ds.load_into_memory(num_workers=workers, progress=False)
        assert "1 of 6 train clips are unreadable" in caplog.text and "spk2/1.wav" in caplog.text
    bad = next(i for i, r in enumerate(ds.rows) if r["audio"] == "audio/spk2/1.wav")
    loader = DataLoader(ds, batch_size=4, collate_fn=collate, num_workers=workers)
    batches = list(loader)
    indices = torch.cat([b["index"] for b in batches]).tolist()
    assert sorted(indices) == [i for i in range(len(ds)) if i != bad]
    assert all(len(b["waveform"]) == len(b["index"]) == len(b["attributes"]) for b in batches)
    # a batch of nothing but unreadable clips is None, for the loops to skip
    assert collate([ds[bad]]) is None


def test_the_cache_leaves_out_a_clip_damaged_after_prepare(tiny_stage1, tmp_path):
    # copies: the fixture's data and stage-1 run (with its cache) stay intact for other tests
    data, run = (Path(shutil.copytree(p, tmp_path / p.name)) for p in tiny_stage1)
    rows = read_manifest(data, split="train")
    (data / rows[5]["face"]).write_bytes(b"not a png")
    cache = build_cache(
        load_encoders(run), data, "train", batch_size=4, num_workers=2, rebuild=True
    )
    cached = cache.tensors["row"].tolist()
    assert len(cache) == len(rows) - 1
    assert sorted(cached) == [i for i in range(len(rows)) if i != 5]


def test_a_clip_the_model_cannot_use_is_skipped_and_counted(tiny_stage1, tmp_path):
    """One clip's audio refused (as a damaged file would be): the others are generated in its
    batch and scored, it is left out and counted; rerunning skips it again."""
    data, _ = tiny_stage1
    bad = data / read_manifest(data, split="train")[2]["audio"]

    class Refusing(GreyFace):
        def __call__(self, audio, generators):
            if bad in [Path(a) for a in audio]:
                raise InputError(bad, "not a readable audio file (test)")
            return super().__call__(audio, generators)

    out = tmp_path / "ev"
    for _ in range(2):
        res = _run(data, out, Refusing(data, 32), max_clips=6, num_images=2)
        want = _expected_counts(data, max_clips=6, num_images=2)
        assert res["counts"]["skipped_clips"] == 1 and res["counts"]["clips"] == want["clips"] - 1
        assert len(list((out / "images").glob("*.png"))) == want["generated_images"] - 2
    assert "(1 skipped: audio the model cannot use)" in (out / "report.md").read_text()


def test_a_damaged_true_face_leaves_its_clip_out_and_is_counted(tiny_stage1, tmp_path):
    """A face image damaged after `scldm prepare`: the clip that shows it is left out, it is
    never anyone's floor or chance reference, and the report counts it."""
    data = tmp_path / "data"
    shutil.copytree(tiny_stage1[0], data)
    rows = read_manifest(data, split="train")[:6]
    damaged = data / rows[1]["face"]
    damaged.write_bytes(damaged.read_bytes()[:40])  # a PNG cut short
    unreadable: dict[str, str] = {}
    clips = plan_clips(data, "train", max_clips=6, seed=0, unreadable=unreadable)
    assert list(unreadable) == [str(damaged)]
    referenced = (
        {c.face for c in clips} | {c.other_face for c in clips} | {c.chance_face for c in clips}
    )
    assert damaged not in referenced
    assert [c.row for c in clips] == [0, 2, 3, 4, 5] and [c.index for c in clips] == list(range(5))
    res = _run(data, tmp_path / "ev", GreyFace(data, 32), max_clips=6)
    assert res["counts"]["unreadable_faces"] == 1 and res["counts"]["clips"] == 5
    report = (tmp_path / "ev" / "report.md").read_text()
    assert "(1 damaged face image(s) left out, with their clips)" in report
