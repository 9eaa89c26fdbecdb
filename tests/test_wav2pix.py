"""Wav2Pix: the raw-waveform front end, the official networks and losses, seeded dropout at
inference, the pipeline and `scldm train-baseline wav2pix` (a complete run, learning on four
speakers, exact resume, clear errors)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from baseline_fixtures import tiny_wav2pix_pipeline
from conftest import tone, write_wav
from scldm.audio import WaveformFrontend
from scldm.baselines import pipeline_class
from scldm.baselines.pipeline import image_generators
from scldm.baselines.wav2pix import (
    DISCRIMINATOR_PRESETS,
    ENCODER_PRESETS,
    GENERATOR_PRESETS,
    AuxiliaryClassifier,
    Wav2PixDiscriminator,
    Wav2PixGenerator,
    Wav2PixPipeline,
    Wav2PixSpeechEncoder,
    build,
)
from scldm.cli import main
from scldm.errors import InputError
from scldm.losses import batch_feature_matching_loss, lsgan_loss

TINY = ["--config", "tiny"]


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _voice(seconds: float = 1.0, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(round(seconds * 16_000)) * 0.1).astype(
        np.float32
    )


def _seeded(*seeds: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


# --- the front end -----------------------------------------------------------------------------


def test_frontend_normalises_by_the_peak_then_pre_emphasises():
    """[0, 2, −4, 1] → /4 → [0, .5, −1, .25] → y[i] = x[i] − .95·x[i−1]; a silent window
    stays zero instead of dividing by 0."""
    fe = WaveformFrontend()
    out = fe(torch.tensor([[0.0, 2.0, -4.0, 1.0], [0.0, 0.0, 0.0, 0.0]]))
    want = torch.tensor([[0.0, 0.5, -1.0 - 0.95 * 0.5, 0.25 + 0.95], [0.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(out, want)


def test_frontend_reads_the_centre_second_and_loops_short_audio(tmp_path):
    fe = WaveformFrontend()
    ramp = np.arange(40_000, dtype=np.float32) / 40_000
    centre = fe.utterance(ramp)
    assert centre.shape == (16_000,) and centre[0] == ramp[12_000]  # (40,000 − 16,000) / 2
    short = fe.utterance(ramp[:6_000])  # looped to 1 s first
    assert torch.equal(short[:6_000], short[6_000:12_000])
    item = fe.load(write_wav(tmp_path / "short.wav", ramp[:8_000]))  # a training item: 6 s
    assert item.shape == (96_000,) and torch.equal(item[:8_000], item[8_000:16_000])


def test_frontend_training_windows_are_seeded_and_inside_each_clip():
    fe = WaveformFrontend(seconds=0.5, segment_seconds=2.0)
    clips = torch.arange(3 * 32_000, dtype=torch.float32).reshape(3, 32_000)
    a = fe.crops(clips, torch.Generator().manual_seed(1))
    b = fe.crops(clips, torch.Generator().manual_seed(1))
    assert a.shape == (3, 8_000) and torch.equal(a, b)
    steps = a.diff(dim=1)
    assert torch.all(steps == 1)  # contiguous windows of each clip's own samples
    assert torch.equal(a[:, 0] // 32_000, torch.arange(3).float())


def test_silent_audio_is_refused_in_one_line(tmp_path):
    fe = WaveformFrontend()
    silent = write_wav(tmp_path / "silent.wav", np.zeros(16_000, np.float32))
    for item in (silent, str(silent), np.zeros(16_000, np.float32)):
        with pytest.raises(InputError, match="every sample is zero") as err:
            fe.utterance(item)
        assert "\n" not in str(err.value)
    with pytest.raises(InputError, match="silent.wav"):
        fe.load(silent)


# --- networks and losses -----------------------------------------------------------------------


def test_networks_have_the_official_sizes():
    """The official models/ at 64 px (the classes' defaults) and 128 px (preset base): encoder
    11.50 M with a 4,096-wide flatten at 1 s, G 3.80 M / 13.24 M, D 2.77 M / 11.16 M."""
    e, g, d = Wav2PixSpeechEncoder(), Wav2PixGenerator(), Wav2PixDiscriminator()
    assert (_count(e), _count(g), _count(d)) == (11_495_424, 3_804_160, 2_765_824)
    assert e.flatten_size == 4096 and g.image_size == d.image_size == 64
    g128 = Wav2PixGenerator(**GENERATOR_PRESETS["base"])
    d128 = Wav2PixDiscriminator(**DISCRIMINATOR_PRESETS["base"])
    assert (_count(g128), _count(d128)) == (13_241_344, 11_162_624)
    assert g128.image_size == d128.image_size == 128
    aux = AuxiliaryClassifier(128, 10)
    assert _count(aux) == 128 * 200 + 200 + 2 * 200 + 200 * 10 + 10 + 2 * 10
    with torch.no_grad():
        z = e.eval()(torch.randn(2, 16_000))
        faces = g.eval()(z)
        scores, phi = d(faces, z)
    assert z.shape == (2, 128) and faces.shape == (2, 3, 64, 64)
    assert faces.abs().max() <= 1 and scores.shape == (2,) and phi.shape == (2, 512, 4, 4)


@pytest.mark.parametrize(("preset", "size"), [("small", 64), ("tiny", 32)])
def test_presets_fit_together(preset, size):
    nets = build(
        {
            "speech_encoder": ENCODER_PRESETS[preset],
            "generator": GENERATOR_PRESETS[preset],
            "discriminator": DISCRIMINATOR_PRESETS[preset],
        }
    )
    e, g, d = (nets[k].eval() for k in ("speech_encoder", "generator", "discriminator"))
    with torch.no_grad():
        z = e(torch.randn(3, e.config.samples))
        scores, _ = d(g(z), z)
    assert g(z).shape == (3, 3, size, size) and scores.shape == (3,)


def test_initialisation_is_the_official_weights_init():
    """N(0, 0.02) for plain convolutions and linear layers, N(1, 0.02) for batch-norm scales;
    spectrally normalised layers keep PyTorch's default (the official function misses them)."""
    torch.manual_seed(0)
    e, d = Wav2PixSpeechEncoder(), Wav2PixDiscriminator()
    for w in (e.convs[-3].weight, e.fc[0].weight, d.head.weight):
        assert abs(w.std().item() - 0.02) < 0.002
    bn = e.convs[-2]
    assert abs(bn.weight.mean().item() - 1) < 0.01 and torch.all(bn.bias == 0)
    sn = d.features[-2].parametrizations.weight.original  # PyTorch's kaiming-uniform default
    bound = 1 / (sn[0].numel() ** 0.5)
    assert sn.abs().max() <= bound and sn.std() > 0.5 * bound


def test_spectral_norm_normalises_each_weight_reshaped_by_its_first_dimension():
    """As the official `SpectralNorm` (weight.view(weight.shape[0], −1)), transposed
    convolutions included: after power iterations in training, σ of that matrix is 1."""
    g = Wav2PixGenerator(**GENERATOR_PRESETS["tiny"])
    with torch.no_grad():
        for _ in range(30):
            g(torch.randn(2, 16))
    g.eval()
    for conv in g.convs:
        w = conv.weight
        sigma = torch.linalg.matrix_norm(w.reshape(w.shape[0], -1), ord=2)
        assert abs(sigma.item() - 1) < 1e-3, sigma


def test_discriminator_is_conditioned_by_concatenating_the_tiled_embedding():
    d = Wav2PixDiscriminator(**DISCRIMINATOR_PRESETS["tiny"]).eval()
    faces, z = torch.randn(2, 3, 32, 32), torch.randn(2, 16)
    with torch.no_grad():
        s1, phi1 = d(faces, z)
        s2, phi2 = d(faces, z + 1)
    assert torch.equal(phi1, phi2) and not torch.allclose(s1, s2)  # z enters after φ
    w = d.head.weight  # (1, C + 16, 4, 4): the score is linear in z through the tiled part
    torch.testing.assert_close(s2 - s1, w[0, -16:].sum((1, 2)).expand(2, -1).sum(1))


def test_lsgan_and_feature_matching_losses_are_the_official_terms():
    scores = torch.tensor([0.9, 0.0, 2.0])
    assert lsgan_loss(scores, 0.9).item() == pytest.approx((0 + 0.81 + 1.21) / 3)
    assert lsgan_loss(scores, 0.0).item() == pytest.approx((0.81 + 0 + 4) / 3)
    fake = torch.tensor([[1.0, 2.0], [3.0, 4.0]])  # batch means [2, 3]
    real = torch.tensor([[0.0, 0.0], [2.0, 2.0]])  # batch means [1, 1]
    assert batch_feature_matching_loss(fake, real).item() == pytest.approx((1 + 4) / 2)


# --- seeded dropout and the pipeline -----------------------------------------------------------


def test_seeded_faces_do_not_depend_on_the_batch_and_differ_across_seeds():
    pipe = tiny_wav2pix_pipeline()
    voice = _voice(1.0)
    three = pipe([voice] * 3, generator=_seeded(1, 2, 3), output_type="pt").images
    alone = pipe([voice], generator=_seeded(2), output_type="pt").images
    torch.testing.assert_close(three[1], alone[0], rtol=0, atol=1e-6)
    assert (three[0] - three[1]).abs().max() > 1e-4  # dropout masks differ with the seed
    again = pipe([voice], num_images_per_prompt=3, generator=_seeded(1, 2, 3), output_type="pt")
    torch.testing.assert_close(again.images, three, rtol=0, atol=1e-6)
    one = pipe([voice], num_images_per_prompt=2, generator=torch.Generator().manual_seed(0))
    assert len(one.images) == 2
    with pytest.raises(InputError, match="got 2 generators for 3 images"):
        pipe([voice] * 3, generator=_seeded(1, 2), output_type="pt")


def test_dropout_off_gives_a_deterministic_variant(tmp_path):
    pipe = tiny_wav2pix_pipeline(dropout_at_inference=False)
    faces = pipe([_voice()], num_images_per_prompt=2, generator=_seeded(1, 2), output_type="pt")
    assert torch.equal(faces.images[0], faces.images[1]) and pipe.method["deterministic"]
    on = tiny_wav2pix_pipeline()
    assert not on.method["deterministic"]
    on.save_pretrained(tmp_path / "p")  # the switch also works when loading a saved pipeline
    off = Wav2PixPipeline.from_pretrained(tmp_path / "p", dropout_at_inference=False)
    assert off.method["deterministic"]


def test_image_generators_split_one_source_into_per_image_seeds():
    a = image_generators(torch.Generator().manual_seed(5), 3)
    b = image_generators(torch.Generator().manual_seed(5), 3)
    draws = [torch.rand(2, generator=g) for g in a]
    assert all(torch.equal(x, torch.rand(2, generator=g)) for x, g in zip(draws, b, strict=True))
    assert not torch.equal(draws[0], draws[1])
    given = _seeded(1, 2)
    assert image_generators(given, 2) == given


def test_pipeline_round_trip_is_bitwise_and_json_plus_safetensors(tmp_path):
    pipe = tiny_wav2pix_pipeline()
    wav = write_wav(tmp_path / "v.wav", _voice(1.5))
    pipe.save_pretrained(tmp_path / "p")
    files = [p for p in (tmp_path / "p").rglob("*") if p.is_file()]
    assert files and all(p.suffix in (".json", ".safetensors") for p in files)
    cls = pipeline_class("Wav2PixPipeline")
    loaded = cls.from_pretrained(tmp_path / "p")
    loaded.save_pretrained(tmp_path / "q")
    again = cls.from_pretrained(tmp_path / "q")
    a, b, c = (
        p(str(wav), num_images_per_prompt=2, generator=_seeded(3, 4), output_type="pt").images
        for p in (pipe, loaded, again)
    )
    assert torch.equal(b, c) and a.shape == (2, 3, 32, 32) and 0 <= a.min() and a.max() <= 1
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert loaded.method["name"] == "wav2pix" and not loaded.method["deterministic"]


def test_generate_makes_seeded_faces_and_refuses_diffusion_options(tmp_path, capsys):
    from scldm.evaluation.generators import BaselineGenerator, load_generator

    tiny_wav2pix_pipeline().save_pretrained(tmp_path / "w2p")
    # a voiced sound: `generate` refuses noise as holding no speech
    voice = write_wav(tmp_path / "v.wav", tone(150.0, 1.5) + _voice(1.5, 4) * 0.1)
    model = load_generator(tmp_path / "w2p")
    assert isinstance(model, BaselineGenerator) and model.name == "wav2pix"
    assert not model.deterministic and model.image_size == 32
    args = ["generate", str(voice), "--model", str(tmp_path / "w2p"), "--num-images", "2"]
    assert main([*args, "-o", str(tmp_path / "a")]) == 0
    assert main([*args, "-o", str(tmp_path / "b")]) == 0
    a0, a1, b0 = (
        np.asarray(Image.open(tmp_path / d / f"v_{k}.png"))
        for d, k in (("a", 0), ("a", 1), ("b", 0))
    )
    assert a0.shape == (32, 32, 3) and np.array_equal(a0, b0)  # seeded: repeatable
    assert not np.array_equal(a0, a1)  # dropout: the K faces of a voice differ
    assert main([*args, "-o", str(tmp_path / "c"), "--steps", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "is a Wav2Pix pipeline, which has no --steps" in err
    silent = write_wav(tmp_path / "silent.wav", np.zeros(16_000, np.float32))
    out = tmp_path / "d"
    assert main(["generate", str(silent), "--model", str(tmp_path / "w2p"), "-o", str(out)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "scldm: error" in line]
    assert len(err) == 1 and "silent.wav: is silent: every sample is zero" in err[0]
    assert not out.exists() or not any(out.glob("*.png"))


# --- train-baseline ----------------------------------------------------------------------------


def _train(data: Path, out: Path, *extra: str) -> int:
    args = ["train-baseline", "wav2pix", "--data", str(data), "--out", str(out)]
    return main([*args, *TINY, *extra])


def test_train_baseline_writes_a_complete_run(synthvox30, tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(synthvox30, run) == 0
    assert "wav2pix done" in capsys.readouterr().out
    for name in ("scalars.jsonl", "curves.png", "samples/step_0000004.png"):
        assert (run / "gan" / name).exists(), name
    final = run / "gan" / "checkpoints" / "step_0000004"
    for part in ("model", "optimizer", "discriminator", "discriminator_optimizer", "rng_0"):
        assert (final / f"{part}.safetensors").is_file(), part
    metrics = json.loads((run / "metrics.json").read_text())["gan"]
    assert {"val/l1", "val/face_R@1", "val/chance_R@1"} <= metrics.keys()
    index = json.loads((run / "pipeline" / "model_index.json").read_text())
    assert index["_class_name"] == "Wav2PixPipeline" and index["dropout_at_inference"]
    assert any("running statistics" in d for d in index["method"]["deviations"])
    pipe = Wav2PixPipeline.from_pretrained(run / "pipeline")
    wav = write_wav(tmp_path / "v.wav", _voice(1.0, 3))
    assert pipe(str(wav), generator=_seeded(0), output_type="pt").images.shape == (1, 3, 32, 32)


@pytest.fixture(scope="module")
def four(synthvox30, tmp_path_factory) -> Path:
    """The first 4 training speakers of `synthvox30`, 2 clips each, as a train-only dataset."""
    root = tmp_path_factory.mktemp("four")
    rows = [json.loads(line) for line in (synthvox30 / "manifest.jsonl").read_text().splitlines()]
    speakers = sorted({r["speaker_id"] for r in rows if r["split"] == "train"})[:4]
    kept = [r for r in rows if r["speaker_id"] in speakers]
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    for folder in ("audio", "faces"):
        (root / folder).symlink_to(synthvox30 / folder)
    return root


@pytest.mark.slow  # about a minute: a GAN learns slowly
def test_four_speakers_pairs_are_learnt(four, tmp_path):
    """On 4 speakers' pairs (1,000 steps; the generating side at 1e-3), the generating side
    learns its voices' faces and speakers: over the last 50 steps the L1 to the true faces is
    under 0.8 of the first 10 steps' (measured: 0.57-0.75) and the auxiliary classifier names
    80 % of the voices (chance 25 %; measured 90-100 %).

    Measured in training mode (batch statistics, as the official predict()). With the
    pipeline's running statistics the tiny model's faces are not reliably nearest their own
    speaker's (4/8 to 2/8 clips across runs): with batches that always hold all 4 speakers,
    the encoder learns contrasts within the batch, which running statistics lose."""
    run = tmp_path / "run"
    sets = ["train.max_steps=1000", "train.eval_every=500", "optim.lr=1e-3"]
    assert _train(four, run, *(a for s in sets for a in ("--set", s))) == 0
    rows = [json.loads(line) for line in (run / "gan" / "scalars.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "train/g_l1" in r]
    first = np.mean([r["train/g_l1"] for r in steps[:10]])
    last = np.mean([r["train/g_l1"] for r in steps[-50:]])
    accuracy = np.mean([r["train/g_accuracy"] for r in steps[-50:]])
    assert last < 0.8 * first and accuracy > 0.8, (first, last, accuracy)


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    cmd = [sys.executable, "-m", "scldm", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def test_resume_in_a_fresh_process_equals_training_straight(synthvox30, tmp_path):
    """Stopped at step 2 and resumed in a fresh process: both players, both optimizers and the
    state equal an uninterrupted run's, bitwise (crops and dropout masks come from each step's
    seeded generators, not from the global RNG a fresh loader draws from)."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert _train(synthvox30, straight) == 0
    assert _train(synthvox30, resumed, "--set", "train.max_steps=2") == 0
    args = ["train-baseline", "wav2pix", "--data", str(synthvox30), "--out", str(resumed), *TINY]
    done = _cli(*args, "--resume", "latest")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resumed from" in (resumed / "log.txt").read_text()
    final = "gan/checkpoints/step_0000004"
    for part in ("model", "optimizer", "discriminator", "discriminator_optimizer"):
        a = load_file(straight / final / f"{part}.safetensors")
        b = load_file(resumed / final / f"{part}.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), part
    state = json.loads((resumed / final / "state.json").read_text())
    assert state == json.loads((straight / final / "state.json").read_text())


def test_resuming_another_methods_run_is_refused(synthvox30, tmp_path, capsys):
    other = tmp_path / "wen-run"
    other.mkdir()
    (other / "config.yaml").write_text("voice_encoder: {preset: tiny}\nvoice_scale: 30.0\n")
    assert _train(synthvox30, other, "--resume", "latest") == 2
    err = capsys.readouterr().err
    assert "is not a Wav2Pix run" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("generator.embedding_dim=8", "the generator reads 8"),
        ("frontend.seconds=0.5", "the front end cuts 8000-sample windows and the speech"),
        ("frontend.seconds=7.0", "frontend: need 0 < seconds ≤ segment_seconds"),
        ("data.image_size=64", "data.image_size 64"),
        ("speech_encoder.preset=huge", "speech_encoder.preset: unknown 'huge'"),
    ],
)
def test_inconsistent_settings_are_a_clear_error(synthvox30, tmp_path, capsys, override, message):
    assert _train(synthvox30, tmp_path / "r", "--set", override) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "r").exists()


@pytest.mark.slow  # two CPU processes through `accelerate launch`
def test_two_processes_through_accelerate(synthvox30, tmp_path):
    """The GAN under DDP with 2 processes (batch norm in the generating side): both players
    identical on both processes at the end, one RNG file per process, a pipeline."""
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu"]
    cmd += ["--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no"]
    cmd += ["--dynamo_backend", "no", "-m", "scldm", "train-baseline", "wav2pix"]
    cmd += ["--data", str(synthvox30), "--out", str(run), *TINY, "--cpu"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (run / "log.txt").read_text().count("parameters identical on all 2 processes") == 2
    checkpoint = run / "gan" / "checkpoints" / "step_0000004"
    assert {"rng_0.safetensors", "rng_1.safetensors"} <= {p.name for p in checkpoint.iterdir()}
    assert (run / "pipeline" / "model_index.json").is_file()
