"""Wen et al.: the official networks, the GAN loop, the pipeline and `scldm train-baseline wen`
(a complete run, exact resume, a loud stop on NaN, clear errors)."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file

from baseline_fixtures import tiny_wen_pipeline
from conftest import write_wav
from scldm.baselines import pipeline_class
from scldm.baselines.wen import (
    FACE_EMBEDDING_PRESETS,
    GENERATOR_PRESETS,
    VOICE_ENCODER_PRESETS,
    WenFaceEmbedding,
    WenGenerator,
    WenPipeline,
    WenVoiceEncoder,
    heads,
)
from scldm.cli import main
from scldm.data.synthvox.attributes import sample_speaker
from scldm.data.synthvox.voice import synthesize_clip
from scldm.errors import InputError
from scldm.losses import bce_gan_loss

TINY = ["--config", "tiny"]


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def speech(seconds: float = 1.0, speaker: int = 0) -> np.ndarray:
    """A SynthVox utterance: speech webrtcvad keeps (a pure tone it may drop)."""
    return synthesize_clip(sample_speaker(0, speaker), 0, seconds=seconds)


# --- networks ----------------------------------------------------------------------------------


def test_base_networks_have_the_official_sizes():
    """config.py's widths: e 2.67 M, G 12.19 M, f 3.31 M parameters; 64 px faces; a 64-d
    embedding from any number of frames."""
    e, g, f = WenVoiceEncoder(), WenGenerator(), WenFaceEmbedding()
    assert (_count(e), _count(g), _count(f)) == (2_670_720, 12_191_875, 3_310_720)
    assert g.image_size == f.image_size == 64
    with torch.no_grad():
        emb = e.eval().embed(torch.randn(2, 64, 301))
        faces = g(emb)
        assert emb.shape == (2, 64) and torch.allclose(emb.norm(dim=1), torch.ones(2))
        assert faces.shape == (2, 3, 64, 64)
        assert f(faces).shape == (2, 64)
    d, c = heads(64, 1251)
    assert d.bias is None and c.bias is None and c.out_features == 1251


@pytest.mark.parametrize(
    ("preset", "size", "counts"),
    [("small", 64, (0.21e6, 0.96e6, 0.31e6)), ("tiny", 32, None)],
)
def test_presets_fit_together(preset, size, counts):
    e = WenVoiceEncoder(**VOICE_ENCODER_PRESETS[preset]).eval()
    g = WenGenerator(**GENERATOR_PRESETS[preset])
    f = WenFaceEmbedding(**FACE_EMBEDDING_PRESETS[preset])
    bands = e.config.in_channels
    faces = g(e.embed(torch.randn(3, bands, 7)))
    assert faces.shape == (3, 3, size, size) and f(faces).shape[0] == 3
    if counts:  # a quarter of the official widths (BASELINES.md §3)
        for net, want in zip((e, g, f), counts, strict=True):
            assert abs(_count(net) - want) / want < 0.03, (type(net).__name__, _count(net))


def test_bce_gan_loss_is_the_official_sigmoid_then_bce():
    logits = torch.tensor([[-3.0], [0.2], [4.0]])
    for real in (True, False):
        target = torch.full_like(logits, float(real))
        official = F.binary_cross_entropy(torch.sigmoid(logits), target)
        torch.testing.assert_close(bce_gan_loss(logits, real), official)
    assert math.isclose(bce_gan_loss(torch.zeros(4, 1), True).item(), math.log(2), rel_tol=1e-6)


# --- the pipeline ------------------------------------------------------------------------------


def test_pipeline_round_trip_is_bitwise_and_json_plus_safetensors(tmp_path):
    pipe = tiny_wen_pipeline()
    wav = write_wav(tmp_path / "v.wav", speech(1.5))
    pipe.save_pretrained(tmp_path / "p")
    files = [p for p in (tmp_path / "p").rglob("*") if p.is_file()]
    assert files and all(p.suffix in (".json", ".safetensors") for p in files)
    cls = pipeline_class("WenPipeline")
    loaded = cls.from_pretrained(tmp_path / "p")
    loaded.save_pretrained(tmp_path / "q")
    again = cls.from_pretrained(tmp_path / "q")
    a, b, c = (
        p(str(wav), num_images_per_prompt=2, output_type="pt").images for p in (pipe, loaded, again)
    )
    assert torch.equal(b, c) and torch.equal(b[0], b[1])  # deterministic: K identical faces
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert a.shape == (2, 3, 32, 32) and 0 <= a.min() and a.max() <= 1
    assert loaded.method["name"] == "wen" and loaded.method["deterministic"]


def test_pipeline_reads_each_voice_whole_and_refuses_silence(tmp_path):
    pipe = tiny_wen_pipeline()
    short, long = speech(1.0, 1), speech(2.5, 2)
    faces = pipe([short, long, str(write_wav(tmp_path / "s.wav", short))], output_type="pt")
    assert faces.images.shape == (3, 3, 32, 32)
    torch.testing.assert_close(faces.images[0], faces.images[2], rtol=0, atol=1e-6)
    silent = write_wav(tmp_path / "silent.wav", np.zeros(16_000, np.float32))
    with pytest.raises(InputError, match="silent.wav") as err:
        pipe(str(silent))
    assert "\n" not in str(err.value)
    with pytest.raises(InputError, match="output_type"):
        pipe(short, output_type="jpg")


def test_generate_and_the_generator_interface_take_a_wen_pipeline(tmp_path, capsys):
    from scldm.evaluation.generators import BaselineGenerator, load_generator

    tiny_wen_pipeline().save_pretrained(tmp_path / "wen")
    voice = write_wav(tmp_path / "v.wav", speech(1.5, 4))
    model = load_generator(tmp_path / "wen")
    assert isinstance(model, BaselineGenerator) and model.name == "wen" and model.deterministic
    assert model.image_size == 32 and model.num_parameters > 0
    out = tmp_path / "out"
    args = ["generate", str(voice), "--model", str(tmp_path / "wen"), "-o", str(out)]
    assert main([*args, "--num-images", "2"]) == 0
    a, b = (np.asarray(Image.open(out / f"v_{k}.png")) for k in (0, 1))
    assert a.shape == (32, 32, 3) and np.array_equal(a, b)  # deterministic: identical
    assert main([*args, "--guidance", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "is a Wen et al. pipeline, which has no --guidance" in err


# --- train-baseline ----------------------------------------------------------------------------


@pytest.fixture
def data(synthvox30) -> Path:
    return synthvox30


def _train(data: Path, out: Path, *extra: str) -> int:
    args = ["train-baseline", "wen", "--data", str(data), "--out", str(out)]
    return main([*args, *TINY, *extra])


def test_train_baseline_writes_a_complete_run(data, tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(data, run) == 0
    assert "wen done" in capsys.readouterr().out
    for phase, names in (
        ("voice", ("scalars.jsonl", "curves.png", "checkpoints/step_0000004", "export")),
        ("gan", ("scalars.jsonl", "curves.png", "samples/step_0000004.png")),
    ):
        for name in names:
            assert (run / phase / name).exists(), f"{phase}/{name}"
    final = run / "gan" / "checkpoints" / "step_0000004"
    for part in ("model", "ema", "optimizer", "face_embedding", "discriminator", "classifier"):
        assert (final / f"{part}.safetensors").is_file(), part
    for part in ("face_embedding", "discriminator", "classifier"):
        assert (final / f"{part}_optimizer.safetensors").is_file(), part
    assert {"voice", "gan"} <= json.loads((run / "metrics.json").read_text()).keys()
    index = json.loads((run / "pipeline" / "model_index.json").read_text())
    assert index["_class_name"] == "WenPipeline"
    assert any("speaker classifier" in d for d in index["method"]["deviations"])
    pipe = WenPipeline.from_pretrained(run / "pipeline")
    wav = write_wav(tmp_path / "v.wav", speech(1.0, 3))
    assert pipe(str(wav), output_type="pt").images.shape == (1, 3, 32, 32)


@pytest.fixture(scope="module")
def four(synthvox30, tmp_path_factory) -> Path:
    """The first 4 training speakers of `synthvox30`, 2 clips each, as a train-only dataset."""
    data, root = synthvox30, tmp_path_factory.mktemp("four")
    rows = [json.loads(line) for line in (data / "manifest.jsonl").read_text().splitlines()]
    speakers = sorted({r["speaker_id"] for r in rows if r["split"] == "train"})[:4]
    kept = [r for r in rows if r["speaker_id"] in speakers]
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    for folder in ("audio", "faces"):
        (root / folder).symlink_to(data / folder)
    return root


def test_voice_phase_separates_four_speakers(four, tmp_path):
    """e's pre-training as a speaker classifier: every training clip (its whole 2 s segment,
    the crops it trained on being 0.5-1 s) is assigned its own speaker."""
    run = tmp_path / "run"
    assert _train(four, run, "--set", "voice.steps=200", "--set", "train.max_steps=0") == 0
    pipe = WenPipeline.from_pretrained(run / "pipeline")
    rows = [json.loads(line) for line in (four / "manifest.jsonl").read_text().splitlines()]
    speakers = sorted({r["speaker_id"] for r in rows})
    label = torch.tensor([speakers.index(r["speaker_id"]) for r in rows])
    state = load_file(run / "voice" / "checkpoints" / "step_0000200" / "model.safetensors")
    head = F.normalize(state["head.weight"], dim=1)  # SpeakerClassifier's cosine classifier
    with torch.no_grad():
        segments = torch.stack([pipe.frontend.load(four / r["audio"]) for r in rows])
        embedding = pipe.voice_encoder.embed(pipe.frontend(segments))
    assert torch.equal((embedding @ head.T).argmax(1), label)


class _SpeakerCode(torch.nn.Module):
    """A frozen stand-in for e: the unit vector of the first bands' time average, so that the
    test's filterbanks (speaker k: band k at 1, the rest 0) give speaker k the unit vector e_k."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def embed(self, fbank: torch.Tensor) -> torch.Tensor:
        return F.normalize(F.pad(fbank.mean(-1), (0, self.dim - fbank.shape[1])), dim=1)


def test_gan_loop_teaches_g_each_voices_identity(four, tmp_path):
    """The two-player loop alone (voices given as orthogonal codes): after it, c recognises
    each generated face's speaker, and the generated faces differ by speaker."""
    from scldm.audio import FbankFrontend
    from scldm.baselines.wen import build, heads
    from scldm.config import WenConfig, load_config, resolve_preset
    from scldm.data.datasets import SpeechFaceDataset
    from scldm.training.gan import Players, train_gan
    from scldm.training.loop import make_accelerator
    from scldm.training.phases import Phases
    from scldm.training.wen import D_NETS, Filterbanks, WenGan

    run = tmp_path / "gan"
    cfg = load_config(
        WenConfig,
        resolve_preset("baselines/wen", "tiny"),
        [f"data.root={four}", f"train.output_dir={run}", "train.log_every=50"],
    )
    torch.manual_seed(0)
    nets = build(
        {
            "voice_encoder": VOICE_ENCODER_PRESETS["tiny"],
            "generator": GENERATOR_PRESETS["tiny"],
            "face_embedding": FACE_EMBEDDING_PRESETS["tiny"],
        }
    )
    frontend = FbankFrontend(**cfg.frontend)
    accelerator = make_accelerator(cfg.train, run, cpu=True)
    dataset = SpeechFaceDataset(four, "train", frontend=frontend, image_size=32)
    banks = Filterbanks(dataset, frontend, accelerator)
    dataset.drop_audio()
    label = torch.tensor(dataset.speaker_index)
    banks.banks.zero_()
    banks.banks[torch.arange(len(label)), label] = 1.0
    d, c = heads(32, 4)
    g_nets = {"generator": nets["generator"], "face_embedding": nets["face_embedding"]}
    trained = train_gan(
        Phases(accelerator, cfg, run, dataset),
        "gan",
        WenGan(cfg, banks, accelerator),
        nets={**g_nets, "discriminator": d, "classifier": c},
        players=Players(d=D_NETS, g=("generator",), exported="generator"),
        optims=dict.fromkeys(["generator", *D_NETS], cfg.optim),
        frozen={"voice_encoder": _SpeakerCode(32)},
        steps=400,
        batch_size=4,
        resume=None,
    )
    with torch.no_grad():
        faces = trained["generator"](torch.eye(32)[:4])
        predicted = trained["classifier"](trained["face_embedding"](faces)).argmax(1)
    assert torch.equal(predicted, torch.arange(4)), predicted
    assert (faces[None] - faces[:, None]).abs().mean((2, 3, 4)).fill_diagonal_(1).min() > 0.05


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    cmd = [sys.executable, "-m", "scldm", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.parametrize("killed_at", [2, 0], ids=["gan-step-2", "before-the-gan"])
def test_resume_in_a_fresh_process_equals_training_straight(data, tmp_path, killed_at):
    """Killed at GAN step 2, or after e's export before the GAN's first checkpoint, resumed in
    a fresh process: every network, optimizer and the state equal an uninterrupted run's,
    bitwise (d and c included, which the second case initialises afresh)."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert _train(data, straight) == 0
    assert _train(data, resumed, "--set", f"train.max_steps={killed_at}") == 0
    if not killed_at:  # as if killed before the GAN saved anything
        shutil.rmtree(resumed / "gan")
    args = ["train-baseline", "wen", "--data", str(data), "--out", str(resumed), *TINY]
    done = _cli(*args, "--resume", "latest")
    assert done.returncode == 0, done.stderr[-2000:]
    log = (resumed / "log.txt").read_text()
    assert "voice: reusing" in log and ("resumed from" in log) == bool(killed_at)
    final = "gan/checkpoints/step_0000004"
    parts = ["model", "ema", "face_embedding", "discriminator", "classifier", "optimizer"]
    parts += ["face_embedding_optimizer", "discriminator_optimizer", "classifier_optimizer"]
    for part in parts:
        a = load_file(straight / final / f"{part}.safetensors")
        b = load_file(resumed / final / f"{part}.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), part
    state = json.loads((resumed / final / "state.json").read_text())
    assert state == json.loads((straight / final / "state.json").read_text())


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(
    data, tmp_path, capsys, monkeypatch
):
    """G's loss turns NaN at step 3: exit status 1, one line naming the step and the last good
    checkpoint (step 2), which stays on disk; nothing of step 3 is saved, no pipeline exported.
    Resuming from that checkpoint with the loss healthy again finishes the run."""
    from scldm.training import wen

    healthy = wen.WenGan.g_loss

    def g_loss(self, nets, batch, fake, state):
        loss, logs = healthy(self, nets, batch, fake, state)
        return (loss * float("nan"), logs) if state.step == 2 else (loss, logs)

    monkeypatch.setattr(wen.WenGan, "g_loss", g_loss)
    run = tmp_path / "nan"
    assert _train(data, run) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if "scldm: error" in line]
    good = run / "gan" / "checkpoints" / "step_0000002"
    assert len(err) == 1 and err[0].startswith("scldm: error: gan: g = nan at step 3")
    assert f"the last good checkpoint is {good}" in err[0]
    assert sorted(p.name for p in good.parent.iterdir()) == ["step_0000002"]
    assert not (run / "pipeline").exists()
    monkeypatch.setattr(wen.WenGan, "g_loss", healthy)
    assert _train(data, run, "--resume", str(good)) == 0
    assert (run / "pipeline" / "model_index.json").is_file()


def test_resuming_another_methods_run_is_refused(data, tmp_path, capsys):
    other = tmp_path / "s2f-run"
    other.mkdir()
    (other / "config.yaml").write_text("teacher: {mode: identity}\ntemperature: 2.0\n")
    assert _train(data, other, "--resume", "latest") == 2
    err = capsys.readouterr().err
    assert "is not a Wen et al. run" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("generator.embedding_dim=16", "the generator reads 16"),
        ("frontend.num_filters=8", "the front end makes 8 filters"),
        ("crop_frames=[20,400]", "crop_frames [20, 400] must satisfy"),
        ("data.image_size=64", "data.image_size 64"),
    ],
)
def test_inconsistent_settings_are_a_clear_error(data, tmp_path, capsys, override, message):
    assert _train(data, tmp_path / "r", "--set", override) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "r").exists()


@pytest.mark.slow  # two CPU processes through `accelerate launch`
def test_two_processes_through_accelerate(data, tmp_path):
    """Both phases under DDP with 2 processes: every network identical on both at the end,
    the GAN's five checkpointed parts and one RNG file per process."""
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu"]
    cmd += ["--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no"]
    cmd += ["--dynamo_backend", "no", "-m", "scldm", "train-baseline", "wen"]
    cmd += ["--data", str(data), "--out", str(run), *TINY, "--cpu"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    log = (run / "log.txt").read_text()
    assert log.count("parameters identical on all 2 processes") == 5  # e + the GAN's four
    checkpoint = run / "gan" / "checkpoints" / "step_0000004"
    assert {p.name for p in checkpoint.iterdir()} >= {
        "model.safetensors",
        "classifier.safetensors",
        "discriminator_optimizer.safetensors",
        "rng_0.safetensors",
        "rng_1.safetensors",
    }
    assert (run / "pipeline" / "model_index.json").is_file()
