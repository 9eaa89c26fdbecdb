"""SpeechEncoder: shapes for any length, time-only pooling, gradient flow, save/load."""

from __future__ import annotations

import pytest
import torch

from conftest import tone
from scldm.audio import SpectrogramFrontend
from scldm.models.speech_encoder import SPEECH_ENCODER_PRESETS, SpeechEncoder

TINY_FRONTEND = {"n_fft": 128, "win_length": 128, "hop_length": 64, "segment_seconds": 0.5}


def tiny_spectrogram(batch: int, frames: int = 124) -> torch.Tensor:
    return torch.randn(batch, 2, 65, frames)


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("frames", [124, 20, 3])
@pytest.mark.parametrize("use_cbam", [True, False])
def test_speech_encoder_tiny_shapes(batch, frames, use_cbam):
    model = SpeechEncoder(**SPEECH_ENCODER_PRESETS["tiny"], use_cbam=use_cbam)
    out = model(tiny_spectrogram(batch, frames))
    cfg = model.config
    assert out.embedding.shape == (batch, cfg.embedding_dim)
    assert out.tokens.shape == (batch, model.num_tokens(frames), cfg.token_dim)
    assert torch.isfinite(out.embedding).all() and torch.isfinite(out.tokens).all()


def test_speech_encoder_tiny_preset_is_small_and_takes_the_tiny_front_end():
    model = SpeechEncoder(**SPEECH_ENCODER_PRESETS["tiny"])
    assert sum(p.numel() for p in model.parameters()) < 15_000
    spec = SpectrogramFrontend(**TINY_FRONTEND)(torch.from_numpy(tone(440.0, 0.5)))
    assert spec.shape == (1, 2, 65, 124)
    assert model(spec).tokens.shape == (1, 15, 16)


@pytest.mark.parametrize("seconds, tokens", [(1.0, 3), (6.0, 18)])
def test_speech_encoder_small_on_real_front_end(seconds, tokens):
    spec = SpectrogramFrontend()(torch.from_numpy(tone(220.0, seconds)))  # (1, 2, 257, T)
    model = SpeechEncoder(**SPEECH_ENCODER_PRESETS["small"]).eval()
    with torch.no_grad():
        out = model(spec)
    assert out.embedding.shape == (1, 128)
    assert out.tokens.shape == (1, tokens, 128)


def test_speech_encoder_base_is_speech2face_table_1():
    """6 s → 598 frames → 512 channels × 64 frequency bins × 9 time steps (REFERENCES.md §1.3)."""
    model = SpeechEncoder().eval()
    assert model.out_freq_bins == 64
    assert model.num_tokens(598) == 9 and model.num_tokens(98) == 1
    convs = [
        m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (4, 4)
    ]
    assert [c.out_channels for c in convs] == [64, 64, 128, 128, 128, 256, 512, 512, 512]
    assert [c.stride for c in convs][-3:] == [(1, 1), (2, 2), (2, 2)]
    pools = [m for m in model.modules() if isinstance(m, torch.nn.MaxPool2d)]
    assert len(pools) == 4 and all(p.kernel_size == (1, 2) for p in pools)  # time only
    with torch.no_grad():
        out = model(torch.randn(1, 2, 257, 598))
    assert out.embedding.shape == (1, 512) and out.tokens.shape == (1, 9, 512)


def test_speech_encoder_pools_time_not_frequency():
    """Doubling the length doubles the tokens; the frequency size never depends on T."""
    model = SpeechEncoder(**SPEECH_ENCODER_PRESETS["tiny"])
    assert model.num_tokens(248) == 2 * model.num_tokens(124) + 1
    with torch.no_grad():
        assert model(tiny_spectrogram(1, 248)).tokens.shape[1] == model.num_tokens(248)


def test_speech_encoder_tokens_see_a_local_time_window():
    """Receptive field via a one-hot output gradient: token 0 depends on the start of the
    spectrogram only, and on every frequency bin there."""
    model = SpeechEncoder(**SPEECH_ENCODER_PRESETS["tiny"], use_cbam=False).eval()
    spec = tiny_spectrogram(1, 124).requires_grad_(True)
    model(spec).tokens[0, 0].sum().backward()
    per_frame = spec.grad.abs().sum(dim=(0, 1, 2))  # (T,)
    per_bin = spec.grad.abs().sum(dim=(0, 1, 3))  # (F,)
    assert per_frame[:4].gt(0).all() and per_frame[40:].eq(0).all()
    assert per_bin.gt(0).float().mean() > 0.9


def test_speech_encoder_gradient_reaches_every_parameter():
    model = SpeechEncoder(**SPEECH_ENCODER_PRESETS["tiny"])
    out = model(tiny_spectrogram(3))
    loss = (out.embedding * torch.randn_like(out.embedding)).sum()
    loss = loss + (out.tokens * torch.randn_like(out.tokens)).sum()
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_speech_encoder_rejects_wrong_frequency_bins():
    model = SpeechEncoder(**SPEECH_ENCODER_PRESETS["tiny"])
    with pytest.raises(ValueError, match="65"):
        model(torch.randn(1, 2, 64, 124))


def test_speech_encoder_rejects_mismatched_block_lists():
    with pytest.raises(ValueError, match="one entry per block"):
        SpeechEncoder(channels=(4, 8), strides=(1,), time_pools=(1, 1))


def test_speech_encoder_save_load_round_trip(tmp_path):
    model = SpeechEncoder(**SPEECH_ENCODER_PRESETS["tiny"])
    model(tiny_spectrogram(4))  # move the BatchNorm statistics away from their initial values
    model.eval()
    model.save_pretrained(tmp_path)
    loaded = SpeechEncoder.from_pretrained(tmp_path).eval()
    assert tuple(loaded.config.channels) == model.config.channels
    spec = tiny_spectrogram(2)
    with torch.no_grad():
        a, b = model(spec), loaded(spec)
    assert torch.equal(a.embedding, b.embedding) and torch.equal(a.tokens, b.tokens)
