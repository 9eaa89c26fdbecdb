"""Sim-to-real audio augmentation: each effect against a known answer, the whole chain's
contract (shape, dtype, finiteness, seeding, no global RNG) and its config."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from conftest import SR
from scldm import InputError
from scldm.audio import augment
from scldm.audio.augmentation import (
    NOISE_EXPONENTS,
    add_noise,
    apply_gain,
    babble,
    codec_round_trip,
    coloured_noise,
    mu_law,
    narrowband,
    reverberate,
    room_impulse,
    telephone,
)
from scldm.config import AugmentConfig, load_config

ALL = AugmentConfig(
    noise_p=0.5, reverb_p=0.5, narrowband_p=0.5, telephone_p=0.5, codec_p=0.5, gain_p=0.5
)
ONE_EACH = {
    "noise": AugmentConfig(noise_p=1.0),
    "reverb": AugmentConfig(reverb_p=1.0),
    "narrowband": AugmentConfig(narrowband_p=1.0),
    "telephone": AugmentConfig(telephone_p=1.0),
    "codec": AugmentConfig(codec_p=1.0),
    "gain": AugmentConfig(gain_p=1.0, gain_db=(-20.0, -1.0)),
}


def speech_like(batch: int, seconds: float, seed: int = 0) -> torch.Tensor:
    """(B, S) sums of 14 harmonics of a voice-like f0 with a 3 Hz syllable envelope, -23 dBFS."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(round(seconds * SR)) / SR
    f0 = 90 + 150 * torch.rand(batch, 1, generator=g)
    wave = sum(torch.sin(2 * torch.pi * f0 * h * t) / h for h in range(1, 15))
    wave = wave * (1 + 0.8 * torch.sin(2 * torch.pi * 3 * t))
    return wave * 10 ** (-23 / 20) / wave.pow(2).mean(-1, keepdim=True).sqrt()


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def db(power: torch.Tensor) -> torch.Tensor:
    return 10 * torch.log10(power)


def band_power(wave: torch.Tensor, low: float, high: float) -> torch.Tensor:
    spectrum = torch.fft.rfft(wave).abs().pow(2)  # (B, F)
    freqs = torch.fft.rfftfreq(wave.shape[-1], 1 / SR)
    return spectrum[:, (freqs >= low) & (freqs < high)].sum(-1)


# --- The chain: contract ---------------------------------------------------------------------


@pytest.mark.parametrize("effect", list(ONE_EACH))
def test_each_effect_keeps_shape_dtype_and_finiteness(effect):
    wave = speech_like(3, 0.5)
    wave[1] = 0.0  # a silent clip must not make NaNs
    out = augment(wave, SR, ONE_EACH[effect], gen())
    assert out.shape == wave.shape and out.dtype == wave.dtype and out.device == wave.device
    assert torch.isfinite(out).all() and out.abs().max() <= 1.0
    assert not torch.equal(out[0], wave[0])


def test_float64_input_stays_float64():
    wave = speech_like(2, 0.25).double()
    assert augment(wave, SR, ALL, gen()).dtype == torch.float64


def test_disabled_config_returns_the_input():
    wave = speech_like(2, 0.25)
    assert not AugmentConfig().enabled
    assert augment(wave, SR, AugmentConfig(), gen()) is wave


def test_same_seed_same_output_different_seed_different():
    wave = speech_like(6, 0.5)
    first = augment(wave, SR, ALL, gen(3))
    assert torch.equal(first, augment(wave, SR, ALL, gen(3)))
    assert not torch.equal(first, augment(wave, SR, ALL, gen(4)))
    assert torch.equal(wave, speech_like(6, 0.5))  # the input is untouched


def test_draws_only_from_the_generator():
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    states = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
    augment(speech_like(4, 0.25), SR, ALL, gen())
    assert torch.equal(torch.get_rng_state(), states[0])
    assert np.array_equal(np.random.get_state()[1], states[1])
    assert random.getstate() == states[2]


# --- Noise -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["white", "pink", "brown", "babble"])
def test_noise_is_added_at_the_drawn_snr(kind):
    wave = speech_like(5, 0.5)
    cfg = AugmentConfig(noise_p=1.0, snr_db=(7.0, 7.0), noise_kinds=(kind,))
    out = augment(wave, SR, cfg, gen())
    snr = db(wave.pow(2).mean(-1) / (out - wave).pow(2).mean(-1))
    assert torch.allclose(snr, torch.full_like(snr, 7.0), atol=0.5), snr


def test_add_noise_per_clip_snr():
    wave, noise = speech_like(3, 0.25), torch.randn(3, 4000, generator=gen())
    snr_db = torch.tensor([0.0, 10.0, 25.0])
    out = add_noise(wave, noise, snr_db)
    measured = db(wave.pow(2).mean(-1) / (out - wave).pow(2).mean(-1))
    assert torch.allclose(measured, snr_db, atol=0.5)


@pytest.mark.parametrize("kind", ["white", "pink", "brown"])
def test_coloured_noise_slope_per_octave(kind):
    exponent = NOISE_EXPONENTS[kind]
    noise = coloured_noise(torch.full((4,), exponent), SR, SR, gen())
    assert torch.allclose(noise.pow(2).mean(-1), torch.ones(4), atol=1e-4)
    per_hz = [band_power(noise, f, 2 * f).mean() / f for f in (500.0, 1000.0, 2000.0)]
    slopes = [db(b / a) for a, b in zip(per_hz, per_hz[1:], strict=False)]
    for slope in slopes:  # power spectral density ∝ 1/f^x: -3x dB per octave
        assert abs(slope + 3.01 * exponent) < 0.5


def test_babble_sums_three_to_five_other_clips():
    t = torch.arange(SR // 2) / SR
    freqs = torch.arange(1, 8) * 400.0  # whole periods in 0.5 s: a roll keeps each sine
    source = torch.sin(2 * torch.pi * freqs[:, None] * t)  # (7, S)
    out = babble(source, torch.tensor([0, 3]), gen())
    assert out.shape == (2, SR // 2)
    for row, own in zip(out, (0, 3), strict=True):
        present = [band_power(row[None], f - 50, f + 50)[0] > 1.0 for f in freqs.tolist()]
        assert not present[own] and 3 <= sum(present) <= 5


# --- Reverberation ---------------------------------------------------------------------------


@pytest.mark.parametrize("rt60", [0.3, 0.8])
def test_reverb_of_an_impulse_decays_at_the_requested_rt60(rt60):
    impulse = torch.zeros(4, SR)
    impulse[:, 0] = 1.0
    rir = room_impulse(torch.full((4,), rt60), torch.full((4,), 5.0), SR, gen())
    out = reverberate(impulse, rir)
    # Schroeder's backward integration of the tail's energy; T20 (-5 to -25 dB) × 3
    edc = out[:, 1:].pow(2).flip(-1).cumsum(-1).flip(-1)
    edc_db = db(edc / edc[:, :1]).mean(0)
    t5, t25 = [int((edc_db > level).sum()) / SR for level in (-5.0, -25.0)]
    assert abs(3 * (t25 - t5) - rt60) < 0.25 * rt60


def test_room_impulse_direct_to_reverberant_ratio():
    rir = room_impulse(torch.tensor([0.5, 0.5]), torch.tensor([0.0, 10.0]), SR, gen())
    drr = db(rir[:, 0] ** 2 / rir[:, 1:].pow(2).sum(-1))
    assert torch.allclose(drr, torch.tensor([0.0, 10.0]), atol=1e-3)


# --- Channel ---------------------------------------------------------------------------------


def test_telephone_keeps_the_band_and_removes_the_rest():
    noise = 0.1 * torch.randn(2, SR, generator=gen())
    out = telephone(noise, SR)
    assert out.shape == noise.shape
    assert (band_power(out, 4000, SR / 2) / band_power(out, 0, SR / 2) < 0.01).all()
    in_band = db(band_power(out, 600, 3000) / band_power(noise, 600, 3000))
    assert (in_band.abs() < 1.0).all()  # the pass band is kept, μ-law noise is small


def test_narrowband_removes_what_is_above_4_khz_and_keeps_the_fundamental():
    noise = 0.1 * torch.randn(2, SR, generator=gen())
    out = narrowband(noise, SR)
    assert out.shape == noise.shape and out.dtype == noise.dtype
    assert (band_power(out, 4100, SR / 2) / band_power(out, 0, SR / 2) < 0.001).all()
    # the low band, where a voice's fundamental lies, is kept (the telephone removes it)
    for low, high in ((60, 300), (300, 3400)):
        kept = db(band_power(out, low, high) / band_power(noise, low, high))
        assert (kept.abs() < 0.5).all()
    phone = telephone(noise, SR)
    assert (db(band_power(phone, 60, 200) / band_power(noise, 60, 200)) < -10).all()


@pytest.mark.parametrize("codec", ["mp3", "vorbis"])
def test_codec_round_trip_is_close_but_lossy(codec):
    wave = speech_like(1, 1.0)[0]
    out = codec_round_trip(wave, SR, codec, 0.99)
    assert out.shape == wave.shape and out.dtype == wave.dtype
    assert np.corrcoef(wave.numpy(), out.numpy())[0, 1] > 0.9
    assert not torch.equal(out, wave)


def test_mu_law_quantises_to_its_levels_at_g711_snr():
    tone = 0.1 * torch.sin(2 * torch.pi * 440 * torch.arange(8000) / 8000)
    coded = mu_law(tone)
    assert torch.equal(mu_law(coded), coded)  # the expanded levels are fixed points
    assert len(torch.unique(mu_law(torch.linspace(-1, 1, 10_000)))) == 256
    snr = db(tone.pow(2).mean() / (coded - tone).pow(2).mean())
    assert 30 < snr < 45  # G.711: about 38 dB over a wide range of levels


# --- Level -----------------------------------------------------------------------------------


def test_gain_changes_level_exactly_and_clips_loud_input():
    quiet = speech_like(2, 0.25)
    out = apply_gain(quiet, torch.tensor([-12.0, 6.0]))
    assert torch.allclose(
        db(out.pow(2).mean(-1) / quiet.pow(2).mean(-1)), torch.tensor([-12.0, 6.0])
    )
    loud = apply_gain(0.9 * torch.sin(torch.linspace(0, 100, 4000))[None], 10.0)
    assert loud.abs().max() == 1.0 and (loud.abs() == 1.0).float().mean() > 0.3


# --- Config ----------------------------------------------------------------------------------


def test_config_loads_ranges_from_yaml_lists_and_rejects_bad_values():
    cfg = load_config(AugmentConfig, {"noise_p": 0.5, "snr_db": [5, 30], "codecs": ["mp3"]})
    assert cfg.snr_db == (5.0, 30.0) and cfg.codecs == ("mp3",) and cfg.enabled
    for bad in ({"noise_p": 2}, {"codecs": ["aac"]}, {"snr_db": [30, 5]}, {"rt60": [0.5]}):
        with pytest.raises(InputError):
            load_config(AugmentConfig, bad)
