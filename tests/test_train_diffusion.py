"""Stage 2 end to end with the tiny presets: `scldm train` on cached latents, the exported
pipeline, `scldm generate` (on a trained and on a tiny random pipeline), and cache reuse across
runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from conftest import random_tiny_pipeline, tone, write_wav
from scldm.cli import main
from scldm.data.manifest import write_manifest
from scldm.diffusion.pipeline import SpeechToFacePipeline
from scldm.errors import InputError


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory) -> Path:
    """A saved SpeechToFacePipeline of tiny random components (32 px), sampling in 2 steps."""
    pipe = random_tiny_pipeline()
    pipe.set_sampling(num_inference_steps=2)
    path = tmp_path_factory.mktemp("pipeline")
    pipe.save_pretrained(path)
    return path


def test_train_then_generate(tiny_stage1, tmp_path, capsys, caplog):
    data, enc = tiny_stage1
    run = tmp_path / "ldm"
    args = ["train", "--encoders", str(enc), "--data", str(data), "--out", str(run)]
    assert main([*args, "--config", "tiny"]) == 0
    assert "stage 2 done" in capsys.readouterr().out
    assert (run / "config.yaml").is_file() and (run / "curves.png").is_file()
    grids = sorted((run / "samples").glob("*.png"))
    assert grids  # true face | generated faces, per validation voice
    assert Image.open(grids[-1]).size[0] > 3 * 32
    scalars = [json.loads(line) for line in (run / "scalars.jsonl").read_text().splitlines()]
    assert [r["step"] for r in scalars] == [1, 2, 3, 4]

    pipe = SpeechToFacePipeline.from_pretrained(run / "pipeline")
    assert pipe.face_decoder.config.scaling_factor != 1.0  # the training latents' scale
    assert pipe.prior.latent.abs().sum() > 0 and pipe.sampling.prior_scale == 0.01

    # a second stage-2 run reuses the latent cache of the first; with decoder.steps it ships a
    # refined decoder in place of the stage-1 one; a v-predicting UNet's pipeline samples v
    again = tmp_path / "ldm2"
    argv = ["train", "--encoders", str(enc), "--data", str(data), "--out", str(again)]
    argv += ["--config", "tiny", "--set", "train.max_steps=1", "--set", "decoder.steps=2"]
    argv += ["--set", "scheduler.prediction_type=v_prediction"]
    assert main(argv) == 0
    log = (again / "log.txt").read_text()
    assert "reusing the latent cache" in log and "refined the face decoder" in log
    v_pipe = SpeechToFacePipeline.from_pretrained(again / "pipeline")
    refined = v_pipe.face_decoder
    assert refined.config.scaling_factor == pipe.face_decoder.config.scaling_factor
    assert not torch.equal(refined.conv_out.weight, pipe.face_decoder.conv_out.weight)
    assert pipe.scheduler.config.prediction_type == "epsilon"
    assert v_pipe.scheduler.config.prediction_type == "v_prediction"
    assert v_pipe.scheduler.config.beta_schedule == pipe.scheduler.config.beta_schedule
    capsys.readouterr()

    voices = sorted((data / "audio").glob("*/0.wav"))[:2]
    out = tmp_path / "faces"
    gen = ["generate", *map(str, voices), "--model", str(run / "pipeline"), "-o", str(out)]
    assert main([*gen, "--num-images", "2", "--steps", "3", "--seed", "5"]) == 0
    # trained on SynthVox: the export says so, and generate says it once
    meta = json.loads((run / "pipeline" / "unet" / "scldm_meta.json").read_text())
    assert meta["training_data"] == {"path": str(data.resolve()), "name": "SynthVox",
                                     "synthetic": True}  # fmt: skip
    notes = [r for r in caplog.records if "synthetic voices only" in r.getMessage()]
    assert len(notes) == 1 and "SynthVox's synthetic voices only" in notes[0].getMessage()
    printed = capsys.readouterr().out.split()
    assert len(printed) == 5 and printed[-1].endswith("grid.png")
    name = f"{voices[0].parent.name}_0"  # two files named 0.wav: the folder joins the name
    first = np.asarray(Image.open(out / f"{name}_0.png"))
    assert first.shape == (32, 32, 3)
    # the same seed gives the same faces
    assert (
        main([*gen, "--num-images", "2", "--steps", "3", "--seed", "5", "-o", str(tmp_path / "b")])
        == 0
    )
    assert np.array_equal(first, np.asarray(Image.open(tmp_path / "b" / f"{name}_0.png")))
    assert not np.array_equal(first, np.asarray(Image.open(out / f"{name}_1.png")))
    # a lower temperature gives other faces; a negative one is one line, exit 2, no output
    cold = ["--num-images", "2", "--steps", "3", "--seed", "5", "--temperature", "0.3"]
    assert main([*gen, *cold, "-o", str(tmp_path / "c")]) == 0
    assert not np.array_equal(first, np.asarray(Image.open(tmp_path / "c" / f"{name}_0.png")))
    capsys.readouterr()
    assert main([*gen, "--temperature", "-1", "-o", str(tmp_path / "d")]) == 2
    assert "--temperature must be ≥ 0" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_generate_writes_the_image_the_pipeline_gives(tiny_pipeline, tmp_path, capsys):
    voice = write_wav(tmp_path / "voice.wav", tone(220.0, 0.7))
    out = tmp_path / "out"
    argv = ["generate", str(voice), "--model", str(tiny_pipeline), "-o", str(out)]
    assert main([*argv, "--seed", "7", "--num-images", "1"]) == 0
    assert capsys.readouterr().out.split() == [str(out / "voice_0.png")]
    pipe = SpeechToFacePipeline.from_pretrained(tiny_pipeline)
    expected = pipe(str(voice), generator=torch.Generator().manual_seed(7)).images[0]
    assert np.array_equal(np.asarray(Image.open(out / "voice_0.png")), np.asarray(expected))


def test_generate_sampling_options_are_the_pipeline_arguments(tiny_pipeline, tmp_path):
    """--prior-scale (and its alias --lam), --steps, --guidance and --temperature reach the
    pipeline call as prior_scale, num_inference_steps, guidance_scale and temperature."""
    voice = write_wav(tmp_path / "voice.wav", tone(220.0, 0.7))
    pipe = SpeechToFacePipeline.from_pretrained(tiny_pipeline)
    options = ["--steps", "3", "--guidance", "2", "--temperature", "0.5"]
    kwargs = {"num_inference_steps": 3, "guidance_scale": 2.0, "temperature": 0.5}
    images = {}
    for flag in ("--prior-scale", "--lam"):
        out = tmp_path / flag.strip("-")
        argv = ["generate", str(voice), "--model", str(tiny_pipeline), "-o", str(out)]
        assert main([*argv, "--seed", "3", *options, flag, "0"]) == 0
        images[flag] = np.asarray(Image.open(out / "voice_0.png"))
    g = torch.Generator().manual_seed(3)
    expected = pipe(str(voice), generator=g, prior_scale=0.0, **kwargs).images[0]
    assert np.array_equal(images["--prior-scale"], np.asarray(expected))
    assert np.array_equal(images["--lam"], images["--prior-scale"])
    g = torch.Generator().manual_seed(3)
    saved_scale = pipe(str(voice), generator=g, **kwargs).images[0]  # λ 0.5 from the folder
    assert not np.array_equal(images["--lam"], np.asarray(saved_scale))


def test_generate_rejects_bad_input(tiny_pipeline, tmp_path, capsys):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio at all")
    good = write_wav(tmp_path / "good.wav", tone(220.0, 0.7))
    model = ["--model", str(tiny_pipeline), "-o", str(tmp_path / "o")]
    for audio, problem in [
        (bad, "bad.wav: "),  # read by the real pipeline: it names the file and the problem
        (tmp_path / "missing.wav", "missing.wav: no such file"),
    ]:
        assert main(["generate", str(audio), str(good), *model]) == 2
        err = capsys.readouterr().err  # diffusers' loading bar (\r-separated), then one line
        last = err.rstrip("\n").split("\n")[-1].split("\r")[-1]
        assert last.startswith("scldm: error: ") and problem in last, err
        assert err.count("scldm: error") == 1 and "Traceback" not in err, err
        assert not (tmp_path / "o").exists()  # the bad file is named before any output
    assert main(["generate", str(good), "--model", str(tmp_path), "-o", str(tmp_path / "o")]) == 2
    assert "not a pipeline folder" in capsys.readouterr().err


def test_generate_data_picks_one_clip_per_speaker(tiny_pipeline, tmp_path, capsys):
    data = tmp_path / "data"
    rows = []
    for i, spk in enumerate(["b", "a", "c"]):
        for clip in (0, 1):
            write_wav(data / "audio" / spk / f"{clip}.wav", tone(200.0 + 50 * i + clip, 0.6))
            audio, face = f"audio/{spk}/{clip}.wav", f"faces/{spk}/{clip}.jpg"
            rows.append({"speaker_id": spk, "audio": audio, "face": face, "split": "test"})
    write_manifest([{**r, "gender": None, "age": None, "source": "folder"} for r in rows], data)
    model = ["--model", str(tiny_pipeline), "--seed", "3"]
    assert (
        main(
            ["generate", "--data", str(data), "--speakers", "2", *model, "-o", str(tmp_path / "p")]
        )
        == 0
    )
    picked = capsys.readouterr().out.split()
    voices = [str(data / "audio/a/0.wav"), str(data / "audio/b/0.wav")]
    assert main(["generate", *voices, *model, "-o", str(tmp_path / "f")]) == 0
    named = capsys.readouterr().out.split()
    assert [Path(p).name for p in picked] == [Path(p).name for p in named]
    assert [Path(p).name for p in picked] == ["a_0_0.png", "b_0_0.png", "grid.png"]
    for p, n in zip(picked, named, strict=True):
        assert np.array_equal(np.asarray(Image.open(p)), np.asarray(Image.open(n)))


def test_seeded_runs_agree_whether_the_cache_was_built_or_read(tiny_stage1, tmp_path):
    data, enc = tiny_stage1
    fresh = tmp_path / "enc"  # a stage-1 run without caches, so the first run builds them
    shutil.copytree(enc / "export", fresh / "export")
    unets = []
    for name in ("built", "read"):
        argv = [
            "train",
            "--encoders",
            str(fresh),
            "--data",
            str(data),
            "--out",
            str(tmp_path / name),
        ]
        assert main([*argv, "--config", "tiny", "--set", "train.max_steps=2"]) == 0
        unets.append(
            load_file(tmp_path / name / "pipeline/unet/diffusion_pytorch_model.safetensors")
        )
    assert "reusing the latent cache" in (tmp_path / "read" / "log.txt").read_text()
    for k, v in unets[0].items():
        assert torch.equal(v, unets[1][k]), k


def test_the_unet_takes_its_latent_shape_from_stage_1():
    from scldm.training.diffusion import unet_config_for

    filled = unet_config_for({"preset": "small"}, (4, 16, 16))
    assert filled == {"preset": "small", "sample_size": 16, "in_channels": 4, "out_channels": 4}
    with pytest.raises(
        InputError, match=r"unet.sample_size is 8 but the stage-1 latents are 4×16×16"
    ):
        unet_config_for({"preset": "small", "sample_size": 8}, (4, 16, 16))


def test_two_processes_equal_one_process_with_the_same_global_batch(tiny_stage1, tmp_path):
    """`accelerate launch --num_processes 2` (CPU, gloo) with batch 2 per process trains the
    UNet that one process with batch 4 does, within float tolerance: the same clips per step,
    and t, ε and the condition dropout drawn for the global batch, each process keeping its
    rows. Rank 0 builds the latent cache (removed first) while rank 1 waits, then reads it."""
    from test_train_encoders import _cli

    data, enc = tiny_stage1
    encoders = Path(shutil.copytree(enc, tmp_path / "enc", ignore=shutil.ignore_patterns("cache")))
    base = ["train", "--encoders", str(encoders), "--data", str(data), "--config", "tiny", "--cpu"]
    one = _cli(*base, "--out", str(tmp_path / "one"), "--set", "train.batch_size=4", nproc=1)
    assert one.returncode == 0, one.stderr[-3000:]
    shutil.rmtree(encoders / "cache")
    two = _cli(*base, "--out", str(tmp_path / "two"), "--set", "train.batch_size=2", nproc=2)
    assert two.returncode == 0, two.stderr[-3000:]
    log = (tmp_path / "two" / "log.txt").read_text()
    assert "global batch 4" in log and "parameters identical on all 2 processes" in log
    assert (encoders / "cache").is_dir()
    one_rows = (tmp_path / "one" / "scalars.jsonl").read_text().splitlines()
    two_rows = (tmp_path / "two" / "scalars.jsonl").read_text().splitlines()
    for r1, r2 in zip(one_rows, two_rows, strict=True):  # the same loss at every step
        assert json.loads(r1)["train/loss"] == pytest.approx(json.loads(r2)["train/loss"], 1e-5)
    final = "checkpoints/step_0000004"
    for part in ("model", "ema"):
        a = load_file(tmp_path / "one" / final / f"{part}.safetensors")
        b = load_file(tmp_path / "two" / final / f"{part}.safetensors")
        assert a.keys() == b.keys()
        diff = torch.cat([(a[k] - b[k]).abs().flatten() for k in a])
        # summed in another order, the gradients differ in the last bits; Adam turns that into
        # at most a step's worth (lr 1e-3) on the few weights whose gradient is ~0
        assert diff.max() < 1e-3 and (diff > 1e-5).float().mean() < 1e-4, part
    # not trivially equal: another seed trains another UNet
    other = _cli(*base, "--out", str(tmp_path / "seed1"), "--set", "train.batch_size=4",
                 "--set", "train.seed=1", nproc=1)  # fmt: skip
    assert other.returncode == 0, other.stderr[-3000:]
    a = load_file(tmp_path / "one" / final / "model.safetensors")
    c = load_file(tmp_path / "seed1" / final / "model.safetensors")
    assert max((a[k] - c[k]).abs().max().item() for k in a) > 1e-3
