"""Speech2Face: the networks of Table 1, the loss of Eq. 1, the pipeline and `scldm
train-baseline speech2face` (a complete run, exact resume, clear errors)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from baseline_fixtures import tiny_speech2face_pipeline
from conftest import tone, write_wav
from scldm.baselines import pipeline_class
from scldm.baselines.speech2face import (
    FACE_DECODER_PRESETS,
    TEACHER_PRESETS,
    VOICE_ENCODER_PRESETS,
    ColeDecoder,
    FaceTeacher,
    Speech2FacePipeline,
    VoiceEncoder,
    num_parameters,
)
from scldm.cli import main
from scldm.errors import InputError
from scldm.losses import s2f_loss

TINY = ["--config", "tiny"]


# --- networks ----------------------------------------------------------------------------------


def test_base_voice_encoder_is_table_1():
    """(2, 257, 598) → 512 × 64 after the time average → 4,096, with the ≈163 M parameters of
    Table 1 (convs 12.2 M, FC 32,768 → 4,096 → 4,096)."""
    with torch.device("meta"):
        voice = VoiceEncoder()
        features = voice.blocks(torch.empty(2, 2, 257, 598))
        out = voice(torch.empty(2, 2, 257, 598))
    assert tuple(features.shape) == (2, 512, 64, 9)
    assert tuple(out.shape) == (2, 4096)
    convs = sum(num_parameters(m) for m in voice.blocks)
    fc = (32768 + 1) * 4096 + (4096 + 1) * 4096 + 2 * 32768  # FC 1, FC 2 and the BN
    assert num_parameters(voice) == convs + fc == 162_807_552


def test_base_teacher_is_vggface_and_base_decoder_makes_224px_faces():
    with torch.device("meta"):
        teacher, decoder = FaceTeacher(), ColeDecoder()
        faces = decoder(torch.empty(2, 4096))
    assert num_parameters(teacher) == 145_002_878  # VGG-16 with fc8 over 2,622 identities
    assert tuple(faces.shape) == (2, 3, 224, 224) and decoder.image_size == 224
    assert decoder.f_dec.out_features == 1000  # Speech2Face's f_dec: R^4096 → R^1000


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_presets_fit_together(preset):
    voice = VoiceEncoder(**VOICE_ENCODER_PRESETS[preset]).eval()
    teacher = FaceTeacher(**TEACHER_PRESETS[preset], num_classes=5).eval()
    decoder = ColeDecoder(**FACE_DECODER_PRESETS[preset]).eval()
    size = teacher.config.image_size
    bins = voice.config.num_freq_bins
    v_s = voice(torch.randn(2, 2, bins, 3))  # shorter than min_frames: looped in time
    v_f, logits = teacher(torch.randn(2, 3, size, size))
    assert v_s.shape == v_f.shape and logits.shape == (2, 5)
    assert (v_f >= 0).all()  # fc7 after ReLU
    assert decoder(v_s).shape == (2, 3, size, size)


def test_vggface_weights_load_in_both_layouts(tmp_path):
    small = {**TEACHER_PRESETS["small"], "batch_norm": False, "num_classes": 7}
    source = FaceTeacher(**small)
    dag = {}
    block, conv = 1, 0
    for layer in source.features:
        if isinstance(layer, torch.nn.MaxPool2d):
            block, conv = block + 1, 0
        elif hasattr(layer, "conv"):
            conv += 1
            dag[f"conv{block}_{conv}.weight"] = layer.conv.weight
            dag[f"conv{block}_{conv}.bias"] = layer.conv.bias
    for name in ("fc6", "fc7", "fc8"):
        dag[f"{name}.weight"] = getattr(source, name).weight
        dag[f"{name}.bias"] = getattr(source, name).bias
    torch.save({k: v.detach().clone() for k, v in dag.items()}, tmp_path / "vgg_face_dag.pth")
    target = FaceTeacher(**small)
    loaded = target.load_vggface(tmp_path / "vgg_face_dag.pth")
    assert len(loaded) == 13 + 3
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(source.eval()(x)[1], target.eval()(x)[1])
    del dag["fc8.bias"]
    torch.save(dag, tmp_path / "broken.pth")
    with pytest.raises(InputError, match="missing fc8.bias"):
        FaceTeacher(**small).load_vggface(tmp_path / "broken.pth")


# --- the loss (Eq. 1) --------------------------------------------------------------------------


def test_s2f_loss_against_a_hand_computation():
    rng = np.random.default_rng(0)
    dec_f, dec_s = rng.normal(size=(2, 3)), rng.normal(size=(2, 3))
    v_f, v_s = rng.normal(size=(2, 4)), rng.normal(size=(2, 4))
    lf, ls = rng.normal(size=(2, 5)), rng.normal(size=(2, 5))
    l1 = np.mean([np.abs(dec_f[i] - dec_s[i]).sum() for i in range(2)])
    unit = lambda v: v / np.linalg.norm(v)  # noqa: E731
    l2 = np.mean([((unit(v_f[i]) - unit(v_s[i])) ** 2).sum() for i in range(2)])

    def softmax(x):
        e = np.exp(x - x.max())
        return e / e.sum()

    h = np.mean([-(softmax(lf[i] / 2) * np.log(softmax(ls[i] / 2))).sum() for i in range(2)])
    weights = {"decoder_l1": 1.0, "feature_l2": 0.025, "distill": 200.0}
    t = lambda a: torch.tensor(a, dtype=torch.float64)  # noqa: E731
    loss, logs = s2f_loss(
        t(dec_f), t(dec_s), t(v_f), t(v_s), t(lf), t(ls), weights=weights, temperature=2.0
    )
    assert math.isclose(logs["decoder_l1"].item(), l1, rel_tol=1e-12)
    assert math.isclose(logs["feature_l2"].item(), l2, rel_tol=1e-12)
    assert math.isclose(logs["distill"].item(), h, rel_tol=1e-12)
    assert math.isclose(loss.item(), l1 + 0.025 * l2 + 200 * h, rel_tol=1e-12)


def test_voice_encoder_overfits_four_pairs():
    """Eq. 1 against a fixed random teacher and decoder drives v_s to v_f: cos > 0.95."""
    torch.manual_seed(0)
    voice = VoiceEncoder(**VOICE_ENCODER_PRESETS["tiny"])
    teacher = FaceTeacher(**TEACHER_PRESETS["tiny"], num_classes=4).eval().requires_grad_(False)
    decoder = ColeDecoder(**FACE_DECODER_PRESETS["tiny"]).eval().requires_grad_(False)
    spec = torch.randn(4, 2, 65, 8)
    v_f = torch.relu(torch.randn(4, 32))  # fc7-like targets: non-negative, norm ≈ 4
    weights = {"decoder_l1": 1.0, "feature_l2": 0.025, "distill": 200.0}
    opt = torch.optim.Adam(voice.parameters(), lr=1e-3, betas=(0.5, 0.999), eps=1e-4)
    for _ in range(500):
        v_s = voice(spec)
        loss, _ = s2f_loss(
            decoder.hidden(v_f), decoder.hidden(v_s), v_f, v_s,
            teacher.classify(v_f), teacher.classify(v_s), weights=weights,
        )  # fmt: skip
        opt.zero_grad()
        loss.backward()
        opt.step()
    voice.eval()
    assert F.cosine_similarity(voice(spec), v_f, dim=1).min() > 0.95


# --- the pipeline ------------------------------------------------------------------------------


def test_pipeline_round_trip_is_bitwise_and_json_plus_safetensors(tmp_path, wav_file):
    pipe = tiny_speech2face_pipeline()
    pipe.save_pretrained(tmp_path / "p")
    files = [p for p in (tmp_path / "p").rglob("*") if p.is_file()]
    assert files and all(p.suffix in (".json", ".safetensors") for p in files)
    cls = pipeline_class("Speech2FacePipeline")
    loaded = cls.from_pretrained(tmp_path / "p")
    loaded.save_pretrained(tmp_path / "q")
    again = cls.from_pretrained(tmp_path / "q")
    a, b, c = (
        p(str(wav_file), num_images_per_prompt=2, output_type="pt").images
        for p in (pipe, loaded, again)
    )
    assert torch.equal(b, c) and torch.equal(b[0], b[1])  # deterministic: K identical faces
    # in memory vs loaded: the same weights; oneDNN may sum in another order for tensors read
    # from a file (alignment), measured ≤ 6e-8
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert a.shape == (2, 3, 32, 32) and 0 <= a.min() and a.max() <= 1
    assert loaded.method["name"] == "speech2face" and loaded.method["deterministic"]
    assert loaded.method["deviations"] == ["untrained test fixture"]


def test_pipeline_takes_waveforms_and_lists_and_refuses_bad_audio(tmp_path, wav_file):
    pipe = tiny_speech2face_pipeline()
    wave = tone(220.0, 0.5)
    out = pipe([wave, str(wav_file)], output_type="np").images
    assert out.shape == (2, 32, 32, 3)
    assert len(pipe(str(wav_file)).images) == 1  # PIL by default
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match="empty file"):
        pipe(str(empty))
    with pytest.raises(InputError, match="too short"):
        pipe(np.zeros(10, np.float32))
    with pytest.raises(InputError, match="output_type"):
        pipe(wave, output_type="jpg")


def test_unknown_baseline_is_refused():
    with pytest.raises(InputError, match="unknown baseline 'wav3pix'"):
        pipeline_class("wav3pix")
    assert pipeline_class("speech2face") is Speech2FacePipeline


# --- train-baseline ----------------------------------------------------------------------------


@pytest.fixture
def data(synthvox30) -> Path:
    return synthvox30


def _train(data: Path, out: Path, *extra: str) -> int:
    args = ["train-baseline", "speech2face", "--data", str(data), "--out", str(out)]
    return main([*args, *TINY, *extra])


def test_train_baseline_writes_a_complete_run(data, tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(data, run) == 0
    assert "speech2face done" in capsys.readouterr().out
    for phase in ("teacher", "decoder", "voice"):
        for name in ("scalars.jsonl", "curves.png", "samples", "checkpoints/step_0000004"):
            assert (run / phase / name).exists(), f"{phase}/{name}"
    assert (run / "teacher" / "export" / "config.json").is_file()
    assert {"teacher", "decoder", "voice"} <= json.loads((run / "metrics.json").read_text()).keys()
    index = json.loads((run / "pipeline" / "model_index.json").read_text())
    assert index["_class_name"] == "Speech2FacePipeline"
    assert any("identity classifier" in d for d in index["method"]["deviations"])
    pipe = Speech2FacePipeline.from_pretrained(run / "pipeline")
    wav = write_wav(tmp_path / "v.wav", tone(300.0, 1.0))
    assert pipe(str(wav), output_type="pt").images.shape == (1, 3, 32, 32)


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    cmd = [sys.executable, "-m", "scldm", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def test_resume_in_a_fresh_process_equals_training_straight(data, tmp_path):
    """Killed after step 2 of the voice phase (the teacher and decoder exported), resumed in a
    fresh process: the voice encoder's weights, EMA and state equal an uninterrupted run's."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert _train(data, straight) == 0
    assert _train(data, resumed, "--set", "train.max_steps=2") == 0
    args = ["train-baseline", "speech2face", "--data", str(data), "--out", str(resumed), *TINY]
    done = _cli(*args, "--resume", "latest")
    assert done.returncode == 0, done.stderr[-2000:]
    log = (resumed / "log.txt").read_text()
    assert "teacher: reusing" in log and "resumed from" in log
    final = "voice/checkpoints/step_0000004"
    for part in ("model", "ema"):
        a = load_file(straight / final / f"{part}.safetensors")
        b = load_file(resumed / final / f"{part}.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), part
    state = json.loads((resumed / final / "state.json").read_text())
    assert state == json.loads((straight / final / "state.json").read_text())


def test_resuming_another_methods_run_is_refused(data, tmp_path, capsys):
    other = tmp_path / "scldm-run"
    other.mkdir()
    (other / "config.yaml").write_text("loss_weights: {loss/mae: 1.0}\nspeech_lr: 0.001\n")
    assert _train(data, other, "--resume", "latest") == 2
    err = capsys.readouterr().err
    assert "is not a Speech2Face run" in err and err.count("\n") == 1


def test_mismatched_widths_are_a_clear_error(data, tmp_path, capsys):
    assert _train(data, tmp_path / "r", "--set", "voice_encoder.embedding_dim=16") == 2
    assert "feature widths must agree" in capsys.readouterr().err
    assert not (tmp_path / "r" / "pipeline").exists()
