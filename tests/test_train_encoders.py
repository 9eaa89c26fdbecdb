"""Stage 1 end to end with the tiny preset: the command's outputs, determinism, exact resume in a
fresh process, and a 2-process CPU run through accelerate (gloo)."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch
from safetensors.torch import load_file

from scldm.audio import SpectrogramFrontend
from scldm.cli import main
from scldm.data.synthvox import prepare_synthvox
from scldm.evaluation.stage1 import PROBE_ALPHAS, linear_probes
from scldm.models import FaceDecoder, FaceEncoder, SpeechEncoder
from scldm.training.checkpoint import (
    load_optimizer_state,
    optimizer_from_files,
    optimizer_to_files,
)

TINY = ["--config", "tiny", "--set", "optim.schedule=constant"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sv")
    prepare_synthvox(
        out, speakers=40, clips_per_speaker=2, faces_per_speaker=1, image_size=32, workers=1
    )
    return out


def _pretrain(data: Path, out: Path, *extra: str) -> int:
    return main(["pretrain", "--data", str(data), "--out", str(out), *TINY, *extra])


def _cli(*args: str, nproc: int = 1) -> subprocess.CompletedProcess:
    """`scldm ...` in a fresh process (under `accelerate launch` when nproc > 1)."""
    # the same thread count as this process when alone (float sums must match bitwise for the
    # resume test), one thread each when two processes share the cores
    threads = torch.get_num_threads() if nproc == 1 else 1
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    if nproc == 1:
        cmd = [sys.executable, "-m", "scldm", *args]
    else:
        # --multi_gpu selects torch's multi-process launcher; `scldm ... --cpu` then makes
        # Accelerator run each process on the CPU with the gloo backend
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu"]
        cmd += ["--num_processes", str(nproc), "--num_machines", "1", "--mixed_precision", "no"]
        cmd += ["--dynamo_backend", "no", "-m", "scldm", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def _weights(checkpoint: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {n: load_file(checkpoint / f"{n}.safetensors") for n in ("model", "ema")}


def _assert_equal(a: dict, b: dict) -> None:
    for part in a:
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}:{key}"


def test_pretrain_writes_a_complete_run(data, tmp_path, capsys):
    run = tmp_path / "run"
    assert _pretrain(data, run) == 0
    assert "stage 1 done" in capsys.readouterr().out
    assert (run / "config.yaml").is_file() and (run / "log.txt").is_file()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "step_0000002",
        "step_0000004",
    ]
    assert sorted(p.name for p in (run / "samples").glob("*.png"))  # reconstruction grids
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["step"] == 4
    assert 0 < metrics["logit_scale"] <= 100  # exp of the clamped temperature
    # retrieval in pools of tiny's 4 speakers: fractions, a rank within the pool
    for k in (1, 5, 10):
        assert 0 <= metrics[f"test/R@{k}"] <= 1
    assert metrics["test/R@1"] <= metrics["test/R@5"] <= metrics["test/R@10"]
    assert metrics["test/pool_size"] == 4 and 1 <= metrics["test/mean_rank"] <= 4
    assert 0 < metrics["test/recon_mae"] <= 2  # faces in [-1, 1]
    assert math.isfinite(metrics["test/psnr"]) and metrics["test/psnr"] > 0
    assert 0 <= metrics["probe/gender_accuracy"] <= 1
    assert -1 <= metrics["probe/age_r"] <= 1
    for name in ("gender", "age"):
        assert metrics[f"probe/{name}_alpha"] in PROBE_ALPHAS
    # the export loads back with from_pretrained and holds the EMA weights: finite, not
    # constant and of initialisation-like scale (a NaN step or a zeroed export fails here)
    export = run / "export"
    parts = {
        "speech_encoder": SpeechEncoder.from_pretrained(export / "speech_encoder"),
        "face_encoder": FaceEncoder.from_pretrained(export / "face_encoder"),
        "face_decoder": FaceDecoder.from_pretrained(export / "face_decoder"),
    }
    for part, module in parts.items():
        for key, value in module.state_dict().items():
            assert torch.isfinite(value.float()).all(), f"{part}.{key}"
        for key, weight in module.named_parameters():
            if weight.dim() >= 2:
                assert 1e-3 < weight.std().item() < 5, f"{part}.{key}"
    ema = load_file(run / "checkpoints" / "step_0000004" / "ema.safetensors")
    for key, value in parts["speech_encoder"].state_dict().items():
        assert torch.equal(value, ema[f"speech_encoder.{key}"].to(value.dtype)), key
    # tiny's PatchGAN starts at step 2 of 4: its terms are logged from then on only, and the
    # discriminator with its optimizer is part of every checkpoint (not of the export)
    rows = [json.loads(line) for line in (run / "scalars.jsonl").read_text().splitlines()]
    adversarial = {r["step"]: r for r in rows if "train/discriminator" in r}
    assert sorted(adversarial) == [3, 4]
    for row in adversarial.values():
        assert math.isfinite(row["train/adversarial"]) and row["train/feature_matching"] > 0
        assert 0 < row["train/adversarial_weight"] <= 1e4
    for step in ("step_0000002", "step_0000004"):
        files = {p.name for p in (run / "checkpoints" / step).iterdir()}
        assert {"discriminator.safetensors", "discriminator_optimizer.safetensors"} <= files
    assert not (export / "discriminator").exists()


def _two_steps(data: Path, tmp_path: Path, runs: dict[str, list[str]], *common: str) -> dict:
    """Train 2 steps for each named list of extra arguments; their step-2 weights by name."""
    for name, extra in runs.items():
        assert _pretrain(data, tmp_path / name, "--set", "train.max_steps=2", *common, *extra) == 0
    return {n: _weights(tmp_path / n / "checkpoints" / "step_0000002") for n in runs}


def _differs(a: dict, b: dict, prefix: str = "") -> bool:
    """Whether any model weight whose name starts with `prefix` differs between two runs."""
    keys = [k for k in a["model"] if k.startswith(prefix)]
    assert keys, prefix
    return any(not torch.equal(a["model"][k], b["model"][k]) for k in keys)


def test_same_seed_gives_bitwise_identical_weights(data, tmp_path):
    for name in ("a", "b"):
        assert _pretrain(data, tmp_path / name, "--set", "train.max_steps=2") == 0
    a, b = (_weights(tmp_path / n / "checkpoints" / "step_0000002") for n in ("a", "b"))
    _assert_equal(a, b)
    c = tmp_path / "c"
    assert _pretrain(data, c, "--set", "train.max_steps=2", "--set", "train.seed=1") == 0
    other = _weights(c / "checkpoints" / "step_0000002")
    assert not torch.equal(a["model"]["logit_scale"], other["model"]["logit_scale"]) or any(
        not torch.equal(a["model"][k], other["model"][k]) for k in a["model"]
    )


def _to_optimizer_pt(checkpoint: Path) -> None:
    """Rewrite a checkpoint's optimizer state as the optimizer.pt older versions wrote (they
    wrote no digest.json either)."""
    state = optimizer_from_files(
        load_file(checkpoint / "optimizer.safetensors"),
        json.loads((checkpoint / "optimizer.json").read_text()),
    )
    torch.save(state, checkpoint / "optimizer.pt")
    (checkpoint / "optimizer.safetensors").unlink()
    (checkpoint / "optimizer.json").unlink()
    (checkpoint / "digest.json").unlink()


@pytest.mark.parametrize("optimizer_file", ["safetensors", "pt"])
def test_resume_in_a_fresh_process_equals_training_straight(data, tmp_path, optimizer_file):
    """Also from a checkpoint of an older version, whose optimizer state is optimizer.pt."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert _pretrain(data, straight) == 0  # 4 steps, checkpoints at 2 and 4
    assert _pretrain(data, resumed, "--set", "train.max_steps=2") == 0  # "killed" after step 2
    if optimizer_file == "pt":
        _to_optimizer_pt(resumed / "checkpoints" / "step_0000002")
    args = ["pretrain", "--data", str(data), "--out", str(resumed), *TINY, "--resume", "latest"]
    done = _cli(*args)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resumed from" in (resumed / "log.txt").read_text()
    final = "checkpoints/step_0000004"
    _assert_equal(_weights(straight / final), _weights(resumed / final))
    state = json.loads((resumed / final / "state.json").read_text())
    assert state["step"] == 4 and state == json.loads((straight / final / "state.json").read_text())


def test_resume_rejects_a_folder_that_is_not_a_checkpoint(data, tmp_path, capsys):
    assert _pretrain(data, tmp_path / "r", "--resume", str(tmp_path)) == 2
    assert "not a checkpoint folder" in capsys.readouterr().err


def test_training_windows_are_random_crops_and_the_export_keeps_the_whole_segment(data, tmp_path):
    crops = {"none": "null", "whole": "0.5", "window": "0.4"}  # tiny: 0.5 s segments
    runs = {name: ["--set", f"train_crop_seconds={crop}"] for name, crop in crops.items()}
    w = _two_steps(data, tmp_path, runs)
    _assert_equal(w["none"], w["whole"])  # a window as long as the segment is no crop at all
    assert _differs(w["none"], w["window"])
    frontend = SpectrogramFrontend.from_pretrained(tmp_path / "window" / "export" / "frontend")
    assert frontend.config.segment_seconds == 0.5  # inference embeds the whole segment


def test_recon_fraction_decodes_part_of_each_batch(data, tmp_path):
    """1.0 is the default (every face); 0.5 trains the decoder on half of each batch, which
    changes the weights."""
    runs = {
        "default": [],
        "all": ["--set", "recon_fraction=1.0"],
        "half": ["--set", "recon_fraction=0.5"],
    }
    w = _two_steps(data, tmp_path, runs)
    _assert_equal(w["default"], w["all"])
    assert _differs(w["default"], w["half"], "face_decoder.")


def test_autoencoder_lr_is_its_own_learning_rate(data, tmp_path):
    """autoencoder_lr equal to face_lr is the same training as none; another value changes the
    decoder's weights."""
    runs = {
        "none": [],
        "same": ["--set", "autoencoder_lr=0.001"],
        "own": ["--set", "autoencoder_lr=0.01"],
    }
    w = _two_steps(data, tmp_path, runs, "--set", "face_lr=0.001")
    for key in w["none"]["model"]:
        torch.testing.assert_close(w["same"]["model"][key], w["none"]["model"][key])
    assert _differs(w["none"], w["own"], "face_decoder.")


def test_recon_region_weighs_a_box_of_the_face(data, tmp_path):
    """recon_region weight 1 is the default (every pixel alike); weight 8 on the eye band
    changes what the decoder learns."""
    runs = {
        "default": [],
        "uniform": ["--set", "recon_region.weight=1.0"],
        "eyes": ["--set", "recon_region.weight=8.0"]
        + ["--set", "recon_region.box=[0.34375,0.25,0.53125,0.75]"],
    }
    w = _two_steps(data, tmp_path, runs)
    _assert_equal(w["default"], w["uniform"])
    assert _differs(w["default"], w["eyes"], "face_decoder.")


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("recon_region.box=[0.5,0,0.5,1]", "recon_region.box: expected (top, left, bottom, right)"),
        ("recon_region.weight=0", "recon_region.weight: expected > 0, got 0"),
    ],
)
def test_a_bad_recon_region_is_a_clear_error(data, tmp_path, capsys, setting, message):
    assert _pretrain(data, tmp_path / "r", "--set", setting) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and not (tmp_path / "r").exists()


def test_training_from_memory_is_training_from_disk(data, tmp_path):
    """data.in_memory decodes the clips once up front; the training is bitwise the same."""
    w = _two_steps(data, tmp_path, {"disk": [], "ram": ["--set", "data.in_memory=true"]})
    _assert_equal(w["disk"], w["ram"])


@pytest.mark.parametrize("fraction", ["0", "1.5"])
def test_recon_fraction_outside_0_1_is_a_clear_error(data, tmp_path, capsys, fraction):
    assert _pretrain(data, tmp_path / "r", "--set", f"recon_fraction={fraction}") == 2
    err = capsys.readouterr().err
    assert f"recon_fraction {fraction} must lie in (0, 1]" in err
    assert "Traceback" not in err and not (tmp_path / "r").exists()


def test_training_window_longer_than_the_segment_is_a_clear_error(data, tmp_path, capsys):
    # tiny: 0.5 s segments, trained on 0.4 s windows (so the tests above run the crop path)
    assert _pretrain(data, tmp_path / "r", "--set", "train_crop_seconds=0.8") == 2
    err = capsys.readouterr().err
    assert "train_crop_seconds 0.8 must lie in (0, segment_seconds 0.5]" in err
    assert "Traceback" not in err and not (tmp_path / "r").exists()


@pytest.mark.slow  # two CPU processes through `accelerate launch`
def test_two_processes_through_accelerate(data, tmp_path):
    """With negatives gathered across the processes and a quarter of the clips unreadable, so
    that the two ranks' batches differ in size: no stall, no crash, the clips skipped."""
    damaged = tmp_path / "data"
    shutil.copytree(data, damaged)
    wavs = sorted((damaged / "audio").rglob("*.wav"))
    for wav in wavs[::4]:
        wav.write_bytes(b"damaged after prepare")
    run = tmp_path / "ddp"
    args = ["pretrain", "--data", str(damaged), "--out", str(run), *TINY, "--cpu"]
    done = _cli(*args, "--set", "gather_negatives=true", nproc=2)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "skipping unreadable clip" in done.stderr
    log = (run / "log.txt").read_text()
    assert "parameters identical on all 2 processes" in log  # an all-gather at the end
    assert "global batch 8" in log  # 2 processes × batch 4
    checkpoint = run / "checkpoints" / "step_0000004"
    assert sorted(p.name for p in checkpoint.iterdir()) == [
        "digest.json",  # every other file's SHA-256, written last
        "discriminator.safetensors",  # tiny trains the PatchGAN, under DDP like the model
        "discriminator_optimizer.json",
        "discriminator_optimizer.safetensors",
        "ema.safetensors",
        "model.safetensors",
        "optimizer.json",
        "optimizer.safetensors",
        "rng_0.safetensors",
        "rng_1.safetensors",
        "state.json",
    ]
    assert json.loads((run / "metrics.json").read_text())["step"] == 4
    assert not list(run.glob("*.tmp")) and not list((run / "checkpoints").glob(".*"))


def test_linear_probes_choose_the_ridge_strength_on_val():
    """Age is a linear read-out of one of 32 noisy dimensions; with 40 train speakers a weakly
    regularised probe fits the noise, so the strength chosen on val generalises better."""
    from types import SimpleNamespace

    gen = torch.Generator().manual_seed(0)

    def split(n: int):
        age = torch.randint(18, 81, (n,), generator=gen).float()
        speech = torch.randn(2 * n, 32, generator=gen)  # two clips per speaker
        speech[:, 0] += (age.repeat_interleave(2) - 49) / 18  # the age signal
        speech[:, 1] += (torch.arange(n) % 2).repeat_interleave(2) * 8.0  # gender
        rows = [{"gender": "fm"[i % 2], "age": int(a)} for i, a in enumerate(age)]
        ds = SimpleNamespace(
            rows=[r for r in rows for _ in range(2)],
            speaker_index=[i for i in range(n) for _ in range(2)],
        )
        emb = {"speech": speech, "speaker": torch.arange(n).repeat_interleave(2)}
        return emb, ds

    train, val, test = split(40), split(100), split(100)
    chosen = linear_probes(train, test, val)
    with_little_ridge = linear_probes(train, test)  # no val: alpha 1
    assert chosen["probe/gender_accuracy"] >= 0.9
    assert chosen["probe/age_alpha"] > 1.0
    assert chosen["probe/age_r"] > with_little_ridge["probe/age_r"] + 0.02
    assert with_little_ridge["probe/age_alpha"] == 1.0


def test_optimizer_state_round_trips_through_safetensors_and_json():
    """The checkpoint's optimizer files hold the fused AdamW state exactly: the moments as
    tensors (stored contiguous, given back the channels-last layout of their weights), the step
    counts and param_groups as JSON; resuming continues identically."""
    torch.manual_seed(0)

    def model_and_optimizer():
        model = torch.nn.Sequential(torch.nn.Conv2d(4, 3, 3), torch.nn.Conv2d(3, 2, 3))
        model.to(memory_format=torch.channels_last)  # as stage 1 trains
        groups = [
            {"params": list(model[0].parameters()), "lr": 1e-2, "name": "a"},
            {"params": list(model[1].parameters()), "lr": 2e-2, "name": "b"},
        ]
        return model, torch.optim.AdamW(groups, betas=(0.8, 0.9), fused=True)

    def step(model, optimizer):
        model(torch.randn(5, 4, 6, 6)).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    model, optimizer = model_and_optimizer()
    for _ in range(3):
        step(model, optimizer)
    tensors, info = optimizer_to_files(optimizer.state_dict())
    assert all(t.dim() > 0 for t in tensors.values())
    tensors = safetensors.torch.load(safetensors.torch.save(tensors))  # optimizer.safetensors
    info = json.loads(json.dumps(info))  # optimizer.json
    assert info["state"]["0"]["step"] == {"value": 3.0, "dtype": "float32"}
    copy, restored = model_and_optimizer()
    copy.load_state_dict(model.state_dict())
    load_optimizer_state(restored, optimizer_from_files(tensors, info))
    assert restored.param_groups[0]["betas"] == (0.8, 0.9)
    assert [g["name"] for g in restored.param_groups] == ["a", "b"]
    seed = torch.seed()
    step(model, optimizer)
    torch.manual_seed(seed)
    step(copy, restored)
    for a, b in zip(model.parameters(), copy.parameters(), strict=True):
        assert torch.equal(a, b)
