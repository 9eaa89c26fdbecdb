"""The GE2E speech side: its mel front end against librosa, its backbone against Resemblyzer,
speaker discrimination on real and SynthVox voices, the head's shapes, freezing, the choice of
speech side in a config, and SCLDM trained and saved end to end with it."""

from __future__ import annotations

import glob
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tone
from scldm.audio import MelFrontend, load_audio, slaney_mel_filters
from scldm.data.manifest import read_manifest
from scldm.data.synthvox import sample_speaker, synthesize_clip
from scldm.errors import InputError
from scldm.models import (
    GE2E_PRESETS,
    SPEECH_ENCODER_PRESETS,
    GE2ESpeechEncoder,
    SpeechEncoder,
    build_speech,
    component_class,
)
from scldm.models.ge2e import default_weights, real_speech_mean

needs_weights = pytest.mark.skipif(
    default_weights() is None, reason="GE2E weights absent: pip install --no-deps resemblyzer"
)
ASTERISK = Path("/usr/share/asterisk/sounds")
# real speakers of the Debian asterisk sound packs (`make test` installs the en and it packs)
REAL = {"Allison": "en_US_f_Allison", "Carlo": "it_IT_m_Carlo", "Menardi": "it_IT_f_Menardi"}


@pytest.fixture(scope="module")
def ge2e() -> GE2ESpeechEncoder:
    if default_weights() is None:
        pytest.skip("GE2E weights absent: pip install --no-deps resemblyzer")
    model = GE2ESpeechEncoder(**GE2E_PRESETS["tiny"])
    model.load_backbone()
    return model.eval()


def utterance_embeddings(model, frontend, paths) -> torch.Tensor:
    """(N, 256): the L2-normalised mean of each file's GE2E partial embeddings."""
    with torch.no_grad():
        waves = torch.stack([frontend.load(p) for p in paths])
        partials = model.partials(frontend(waves))
    return torch.nn.functional.normalize(partials.mean(1), dim=-1)


# --- Front end ---------------------------------------------------------------------------------


def test_mel_filters_and_powers_match_librosa():
    librosa = pytest.importorskip("librosa")
    reference = librosa.filters.mel(sr=16000, n_fft=400, n_mels=40)
    np.testing.assert_allclose(slaney_mel_filters(16000, 400, 40), reference, atol=1e-8)
    wave = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
    ours = MelFrontend(target_dbfs=None)(torch.from_numpy(wave))[0].numpy()
    theirs = librosa.feature.melspectrogram(y=wave, sr=16000, n_fft=400, hop_length=160, n_mels=40)
    assert ours.shape == theirs.shape == (40, 101)
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-6 * theirs.max())


def test_quiet_voices_are_raised_to_the_target_level_and_loud_ones_kept():
    frontend = MelFrontend()
    voice = torch.from_numpy(tone(180.0, 1.0)) * 0.001  # far below -30 dBFS
    quiet, quieter = frontend(voice), frontend(voice * 0.1)
    torch.testing.assert_close(quiet, quieter, rtol=1e-4, atol=1e-6 * float(quiet.max()))
    loud = voice / voice.abs().max() * 0.9  # above -30 dBFS: untouched
    torch.testing.assert_close(frontend(loud), MelFrontend(target_dbfs=None)(loud))


def test_prepare_keeps_the_speech_and_loops_it_to_the_segment():
    frontend = MelFrontend(segment_seconds=2.0)
    voice = synthesize_clip(sample_speaker(0, 0), 0, seconds=1.0)
    silence_first = np.concatenate([np.zeros(16000, np.float32), voice])
    out = frontend.prepare(silence_first)
    assert out.shape == (32000,) and out.dtype == torch.float32
    assert float(out[:1600].abs().max()) > 0.01  # VAD removed the leading second of silence
    kept = MelFrontend(segment_seconds=2.0, vad_mode=None).prepare(silence_first)
    assert float(kept[:16000].abs().max()) == 0.0
    with pytest.raises(InputError, match="too short"):
        frontend.prepare(np.ones(100, np.float32))


# --- Backbone ----------------------------------------------------------------------------------


def test_the_backbone_is_resemblyzers_voice_encoder(ge2e):
    pytest.importorskip("librosa")
    resemblyzer = pytest.importorskip("resemblyzer")
    reference = resemblyzer.VoiceEncoder(device="cpu", verbose=False)
    voice = synthesize_clip(sample_speaker(0, 1), 0, seconds=4.0)
    wave = resemblyzer.preprocess_wav(voice, source_sr=16000)[: 159 * 160]
    mel = resemblyzer.audio.wav_to_mel_spectrogram(wave)  # (160, 40), one partial
    with torch.no_grad():
        expected = reference(torch.from_numpy(mel)[None])[0]
        ours = ge2e.partials(MelFrontend(vad_mode=None)(torch.from_numpy(wave)))
    assert ours.shape == (1, 1, 256)
    torch.testing.assert_close(ours[0, 0], expected, atol=1e-5, rtol=0)


@pytest.mark.skipif(
    not all((ASTERISK / f).is_dir() for f in REAL.values()), reason="asterisk sounds absent"
)
def test_embeddings_of_the_same_real_speaker_are_closer_than_of_different_ones(ge2e):
    frontend = MelFrontend()

    def utterance(files: list[str]) -> torch.Tensor:  # prompts one after another, ≈6 s
        return frontend.prepare(np.concatenate([load_audio(f) for f in files]))

    waves = []
    for folder in REAL.values():
        files = sorted(glob.glob(str(ASTERISK / folder / "*.wav")))
        waves += [utterance(files[i : i + 6]) for i in (0, 40, 80)]  # 3 utterances a speaker
    with torch.no_grad():
        partials = ge2e.partials(frontend(torch.stack(waves)))
    emb = torch.nn.functional.normalize(partials.mean(1), dim=-1).view(len(REAL), 3, -1)
    pair = ~torch.eye(3, dtype=torch.bool)
    for a in range(len(REAL)):
        same = float((emb[a] @ emb[a].T)[pair].mean())
        for b in range(len(REAL)):
            if b != a:
                assert same > float((emb[a] @ emb[b].T).mean()) + 0.1, (a, b)


def test_embeddings_of_the_same_synthvox_speaker_are_closer(ge2e, synthvox30):
    rows = read_manifest(synthvox30, split=None)
    by_speaker: dict[str, list[Path]] = {}
    for row in rows:
        by_speaker.setdefault(row["speaker_id"], []).append(synthvox30 / row["audio"])
    pairs = [paths[:2] for paths in list(by_speaker.values())[:8]]
    emb = utterance_embeddings(ge2e, MelFrontend(), [p for pair in pairs for p in pair])
    first, second = emb[0::2], emb[1::2]  # (8, 256) each, row i = speaker i
    sims = first @ second.T
    same, different = sims.diag(), sims[~torch.eye(8, dtype=torch.bool)]
    assert float(same.mean()) > float(different.mean()) + 0.05
    assert (sims.argmax(1) == torch.arange(8)).float().mean() >= 0.75  # speaker identification


def test_a_missing_or_foreign_weights_file_is_one_clear_error(tmp_path):
    model = GE2ESpeechEncoder(**GE2E_PRESETS["tiny"])
    with pytest.raises(InputError, match="no such GE2E weights file"):
        model.load_backbone(tmp_path / "nope.pt")
    foreign = tmp_path / "other.pt"
    torch.save({"model_state": {"conv.weight": torch.zeros(2)}}, foreign)
    with pytest.raises(InputError, match="is not a GE2E checkpoint"):
        model.load_backbone(foreign)


# --- Head, freezing ----------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["tiny", "small", "base"])
def test_the_heads_outputs_have_the_paper_encoders_shapes(preset):
    ge2e = GE2ESpeechEncoder(**GE2E_PRESETS[preset]).eval()
    mel = MelFrontend()(torch.randn(2, 96000) * 0.1)  # 6 s
    out = ge2e(mel)
    paper = SPEECH_ENCODER_PRESETS[preset] or {"token_dim": 512, "embedding_dim": 512}
    assert (
        out.tokens.shape
        == (2, ge2e.num_tokens(mel.shape[-1]), paper["token_dim"])
        == (
            2,
            6,
            paper["token_dim"],
        )
    )
    assert out.embedding.shape == (2, paper["embedding_dim"])
    short = ge2e(MelFrontend()(torch.randn(1, 8000) * 0.1))  # 0.5 s: looped to 1 partial
    assert short.tokens.shape == (1, 1, paper["token_dim"])


@pytest.mark.parametrize(
    ("layers", "trained"), [(0, set()), (1, {"linear"}), (2, {"linear", "l2"})]
)
def test_trainable_layers_choose_what_of_the_backbone_learns(layers, trained):
    model = GE2ESpeechEncoder(**GE2E_PRESETS["tiny"], trainable_layers=layers)
    out = model(MelFrontend()(torch.randn(2, 32000) * 0.1))
    (out.embedding.square().sum() + out.tokens.square().sum()).backward()
    for name, param in model.named_parameters():
        backbone = name.startswith(("lstm.", "linear."))
        if not backbone:
            assert param.grad is not None, name
            continue
        part = "linear" if name.startswith("linear.") else name.rsplit("_", 1)[-1]
        assert (param.grad is not None and param.grad.abs().sum() > 0) == (part in trained), name


# --- The real direction ----------------------------------------------------------------------


def test_the_real_direction_is_removed_from_every_partial_and_saved(tmp_path):
    torch.manual_seed(0)
    mel = MelFrontend()(torch.randn(2, 32000) * 0.1)
    plain = GE2ESpeechEncoder(**GE2E_PRESETS["tiny"]).eval()
    model = GE2ESpeechEncoder(**GE2E_PRESETS["tiny"], remove_real_direction=True).eval()
    model.load_state_dict(plain.state_dict(), strict=False)
    assert "real_direction" not in plain.state_dict()
    with torch.no_grad():  # unset (zero), it removes nothing: bitwise the plain encoder
        assert torch.equal(model.partials(mel), plain.partials(mel))
        before = plain.partials(mel)
    training, real = torch.randn(256), torch.randn(256)
    gap = model.set_real_direction(training, real)
    u = model.real_direction
    assert gap == pytest.approx(float((real - training).norm()), rel=1e-6)
    assert torch.allclose(u, (real - training) / (real - training).norm(), atol=1e-6)
    with torch.no_grad():
        after = model.partials(mel)
    assert float((after @ u).abs().max()) < 1e-6  # nothing left along u
    # and nothing else changed: what was removed is exactly the component along u
    assert torch.allclose(before - after, (before @ u)[..., None] * u, atol=1e-6)
    model.save_pretrained(tmp_path / "enc")
    loaded = GE2ESpeechEncoder.from_pretrained(tmp_path / "enc").eval()
    assert torch.equal(loaded.real_direction, u)
    with torch.no_grad():
        assert torch.equal(loaded.partials(mel), after)
    with pytest.raises(ValueError, match="remove_real_direction=False"):
        plain.set_real_direction(training, real)
    with pytest.raises(ValueError, match="coincide"):
        model.set_real_direction(real, real)


def test_a_bad_real_speech_file_is_one_clear_error(tmp_path):
    mean = real_speech_mean()  # the shipped one
    assert mean.shape == (256,) and torch.isfinite(mean).all() and 0.2 < float(mean.norm()) <= 1
    for text in ("not json", '{"mean": [[1, 2], [3, 4]]}', '{"average": [1]}'):
        bad = tmp_path / "bad.json"
        bad.write_text(text)
        with pytest.raises(InputError, match="bad.json") as e:
            real_speech_mean(bad)
        assert "\n" not in str(e.value)


@needs_weights
@pytest.mark.skipif(
    not all((ASTERISK / f).is_dir() for f in REAL.values()), reason="asterisk sounds absent"
)
def test_the_shipped_real_direction_points_from_synthvox_to_other_real_voices(synthvox30):
    """The shipped mean comes from KTuberling's voices; Asterisk's speakers are not among them.
    Along u, every one of their utterances lies further towards "real" than any SynthVox clip."""
    model = GE2ESpeechEncoder(**GE2E_PRESETS["tiny"], remove_real_direction=True)
    model.load_backbone()
    model.eval()
    frontend = MelFrontend()
    synth = [synthvox30 / r["audio"] for r in read_manifest(synthvox30, split="train")[:24]]
    real = [p for f in REAL.values() for p in sorted((ASTERISK / f).glob("*.wav"))[:40:5]]
    with torch.no_grad():
        synth_mean = model.partials(frontend(torch.stack([frontend.load(p) for p in synth])))
        model.set_real_direction(synth_mean.flatten(0, 1).mean(0), real_speech_mean())
    u = model.real_direction
    plain = GE2ESpeechEncoder(**GE2E_PRESETS["tiny"])
    plain.load_backbone()
    plain.eval()
    along = {
        name: utterance_embeddings(plain, frontend, paths) @ u
        for name, paths in (("synth", synth), ("real", real))
    }
    assert float(along["real"].min()) > float(along["synth"].max())


# --- The choice in a config; SCLDM end to end ------------------------------------------------


def test_the_speech_side_is_chosen_by_type():
    frontend, encoder = build_speech({"segment_seconds": 0.5}, {"preset": "tiny"})
    assert isinstance(encoder, SpeechEncoder) and type(frontend).__name__ == "SpectrogramFrontend"
    with pytest.raises(InputError, match="speech_encoder.type: unknown 'wav2vec'"):
        build_speech({}, {"type": "wav2vec"})
    with pytest.raises(InputError, match="speech_encoder.preset: unknown 'huge'"):
        build_speech({}, {"type": "ge2e", "preset": "huge"})
    with pytest.raises(InputError, match="MelFrontend.* keyword argument .power."):
        build_speech({"power": 0.3}, {"type": "ge2e", "preset": "tiny"})


GE2E_TINY = """
data: {image_size: 32}
frontend: {segment_seconds: 2.0}
train_crop_seconds: 1.7
speech_encoder: {type: ge2e, preset: tiny}
face_encoder: {preset: tiny}
face_decoder: {preset: tiny}
optim: {warmup_steps: 0}
train: {max_steps: 3, batch_size: 4, log_every: 1, eval_every: 3, save_every: 3, ema_decay: 0.9}
eval: {pool_size: 4, max_clips: 16, grid_size: 4}
"""


@needs_weights
@pytest.mark.parametrize("remove", [False, True], ids=["plain", "real-direction"])
def test_scldm_with_ge2e_trains_saves_and_generates(synthvox30, tmp_path, remove):
    from scldm.cli import main
    from scldm.diffusion import SpeechToFacePipeline

    config = tmp_path / "ge2e-tiny.yaml"
    config.write_text(
        GE2E_TINY.replace("preset: tiny}", f"preset: tiny, remove_real_direction: {remove}}}", 1)
    )
    enc, ldm = tmp_path / "enc", tmp_path / "ldm"
    data = ["--data", str(synthvox30)]
    assert main(["pretrain", *data, "--out", str(enc), "--config", str(config)]) == 0
    assert component_class(enc / "export" / "frontend") is MelFrontend
    assert component_class(enc / "export" / "speech_encoder") is GE2ESpeechEncoder
    # the backbone stayed GE2E's (frozen) and is saved with the model
    saved = GE2ESpeechEncoder.from_pretrained(enc / "export" / "speech_encoder")
    fresh = GE2ESpeechEncoder(**GE2E_PRESETS["tiny"])
    fresh.load_backbone()
    for key, value in fresh.state_dict().items():
        if key.startswith(("lstm.", "linear.")):
            assert torch.equal(saved.state_dict()[key], value), key
    if remove:  # a real-speech mean of the wrong size: one line naming the file, nothing trained
        short = tmp_path / "short.json"
        short.write_text('{"mean": [0.1, 0.2]}')
        bad = ["pretrain", *data, "--out", str(tmp_path / "bad"), "--config", str(config)]
        assert main([*bad, "--set", f"ge2e_real_speech={short}"]) == 2
        assert not (tmp_path / "bad").exists()
    if remove:  # set from the training clips before the first step: a unit vector towards real
        u = saved.real_direction
        assert float(u.norm()) == pytest.approx(1.0, abs=1e-5)
        clips = [synthvox30 / r["audio"] for r in read_manifest(synthvox30, split="train")[:16]]
        frontend = MelFrontend(segment_seconds=2.0)
        with torch.no_grad():
            training = fresh.partials(frontend(torch.stack([frontend.load(p) for p in clips])))
        assert float(real_speech_mean() @ u) > float(training.flatten(0, 1).mean(0) @ u) + 0.1
    assert main(["prior", "--encoders", str(enc), "--data", str(synthvox30)]) == 0
    args = ["train", "--encoders", str(enc), "--data", str(synthvox30), "--out", str(ldm)]
    assert main([*args, "--config", "tiny", "--set", "train.max_steps=2"]) == 0
    pipe = SpeechToFacePipeline.from_pretrained(ldm / "pipeline")
    pipe.set_progress_bar_config(disable=True)
    assert isinstance(pipe.frontend, MelFrontend)
    assert pipe.speech_encoder.config.remove_real_direction == remove
    if remove:
        assert torch.equal(pipe.speech_encoder.real_direction, saved.real_direction)
    voice = synthvox30 / read_manifest(synthvox30, split="test")[0]["audio"]
    kwargs = {"num_inference_steps": 2, "output_type": "pt"}
    first = pipe(str(voice), generator=torch.Generator().manual_seed(0), **kwargs).images
    pipe.save_pretrained(tmp_path / "again")
    loaded = SpeechToFacePipeline.from_pretrained(tmp_path / "again")
    loaded.set_progress_bar_config(disable=True)
    again = loaded(str(voice), generator=torch.Generator().manual_seed(0), **kwargs).images
    assert first.shape == (1, 3, 32, 32) and torch.equal(first, again)
