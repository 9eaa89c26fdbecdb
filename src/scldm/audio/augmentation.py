"""Sim-to-real augmentation of training audio: room reverberation, background noise, level and
clipping, 8 kHz recording, telephone band and lossy codecs, drawn per clip from an explicit
generator.

References: synthetic room impulse responses as exponentially decaying noise after a direct
path (Ko et al. 2017, "A study on data augmentation of reverberant speech for robust speech
recognition"); RT60 as in Schroeder 1965; the telephone channel as ITU-T G.711 (8 kHz, 8-bit
μ-law) behind the 300-3400 Hz band of ITU-T G.712.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable

import numpy as np
import soundfile as sf
import soxr
import torch

from scldm.config import AugmentConfig

NOISE_EXPONENTS = {"white": 0.0, "pink": 1.0, "brown": 2.0}  # power spectral density ∝ 1/f^x
NOISE_FLOOR_HZ = 50.0  # coloured noise is flat below this: no sub-audible rumble in the SNR
TELEPHONE_RATE = 8000
TELEPHONE_BAND = (300.0, 3400.0)
CODEC_FORMATS = {"mp3": ("MP3", "MPEG_LAYER_III"), "vorbis": ("OGG", "VORBIS")}
_LN_1000 = 3 * math.log(10)  # an amplitude decay of 60 dB is a factor e^-ln(1000)
_TINY = 1e-20  # a power below which a clip counts as silent


def _power(x: torch.Tensor) -> torch.Tensor:
    return x.pow(2).mean(-1, keepdim=True)  # (B, 1)


def _uniform(bounds: tuple[float, float], n: int, generator: torch.Generator) -> torch.Tensor:
    low, high = bounds
    return low + (high - low) * torch.rand(n, generator=generator)


def _chosen(p: float, batch: int, generator: torch.Generator) -> torch.Tensor:
    """The indices of the clips that get an effect of probability `p` (nothing drawn at 0)."""
    if p <= 0:
        return torch.zeros(0, dtype=torch.long)
    return (torch.rand(batch, generator=generator) < p).nonzero().squeeze(1)


# --- Noise -----------------------------------------------------------------------------------


def coloured_noise(
    exponent: torch.Tensor,
    num_samples: int,
    sample_rate: int,
    generator: torch.Generator,
    *,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Gaussian noise (B, S) whose power spectral density falls as 1/f^exponent, one exponent
    (B,) per row: 0 white, 1 pink (-3 dB/octave), 2 brown (-6 dB/octave), flat below
    `NOISE_FLOOR_HZ`; zero mean, unit power per row. Shaped in the frequency domain."""
    white = torch.randn(len(exponent), num_samples, generator=generator).to(device)
    freqs = torch.fft.rfftfreq(num_samples, 1 / sample_rate, device=device)
    gain = freqs.clamp(min=NOISE_FLOOR_HZ).pow(-exponent.to(device)[:, None] / 2)  # (B, F)
    gain[:, 0] = 0.0
    noise = torch.fft.irfft(torch.fft.rfft(white) * gain, n=num_samples)
    return noise / _power(noise).sqrt()


def babble(source: torch.Tensor, index: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Babble noise (len(index), S) for the clips `index` of `source` (B, S): each the sum of
    3-5 other clips of the batch (all others when fewer; the clip itself when B = 1), each
    rolled by a random offset, at unit power (zero if those clips are silent)."""
    batch, length = source.shape
    out = torch.zeros(len(index), length, dtype=source.dtype, device=source.device)
    for row, i in enumerate(index.tolist()):
        others = [j for j in range(batch) if j != i] or [i]
        count = min(int(torch.randint(3, 6, (1,), generator=generator)), len(others))
        picks = torch.randperm(len(others), generator=generator)[:count].tolist()
        shifts = torch.randint(0, length, (count,), generator=generator).tolist()
        for j, shift in zip(picks, shifts, strict=True):
            out[row] += source[others[j]].roll(shift)
    return out / _power(out).clamp(min=_TINY).sqrt()


def add_noise(
    wave: torch.Tensor, noise: torch.Tensor, snr_db: torch.Tensor | float
) -> torch.Tensor:
    """`wave` (B, S) plus `noise` (B, S) scaled so that each clip's signal-to-noise ratio
    10·log10(P_wave / P_noise), powers over the whole clip, is `snr_db` (scalar or (B,))."""
    snr = torch.as_tensor(snr_db, dtype=wave.dtype, device=wave.device).reshape(-1, 1)
    scale = (_power(wave) / _power(noise).clamp(min=_TINY) * 10 ** (-snr / 10)).sqrt()
    return wave + scale * noise


def _draw_noise(
    wave: torch.Tensor,
    index: torch.Tensor,
    sample_rate: int,
    kinds: tuple[str, ...],
    generator: torch.Generator,
) -> torch.Tensor:
    """Noise (len(index), S) of a kind drawn per clip among `kinds`."""
    draws = torch.randint(len(kinds), (len(index),), generator=generator).tolist()
    names = [kinds[k] for k in draws]
    noise = torch.empty(len(index), wave.shape[-1], dtype=wave.dtype, device=wave.device)
    coloured = [row for row, name in enumerate(names) if name != "babble"]
    if coloured:
        exponent = torch.tensor([NOISE_EXPONENTS[names[row]] for row in coloured])
        noise[coloured] = coloured_noise(
            exponent, wave.shape[-1], sample_rate, generator, device=wave.device
        ).to(wave.dtype)
    babbled = [row for row, name in enumerate(names) if name == "babble"]
    if babbled:
        noise[babbled] = babble(wave, index[babbled], generator)
    return noise


# --- Reverberation ---------------------------------------------------------------------------


def room_impulse(
    rt60: torch.Tensor,
    drr_db: torch.Tensor,
    sample_rate: int,
    generator: torch.Generator,
    *,
    max_samples: int | None = None,
) -> torch.Tensor:
    """Synthetic room impulse responses (B, L): a unit direct path at sample 0, then Gaussian
    noise whose amplitude decays by 60 dB in `rt60` seconds (B,), scaled so the direct energy
    over the tail's is `drr_db` (B,). L covers the longest RT60 (at most `max_samples`)."""
    length = max(2, math.ceil(float(rt60.max()) * sample_rate))
    length = min(length, max_samples) if max_samples else length
    t = torch.arange(length) / sample_rate
    tail = torch.randn(len(rt60), length, generator=generator)
    tail = tail * torch.exp(-_LN_1000 * t / rt60[:, None])  # (B, L)
    tail[:, 0] = 0.0
    energy = tail.pow(2).sum(-1, keepdim=True).clamp(min=_TINY)
    tail = tail * (10 ** (-drr_db[:, None] / 10) / energy).sqrt()
    tail[:, 0] = 1.0
    return tail


def reverberate(wave: torch.Tensor, rir: torch.Tensor) -> torch.Tensor:
    """`wave` (B, S) convolved with `rir` (B, L) by FFT, trimmed to S samples (the tail past
    the clip is cut, as a recording stops) and brought back to each input clip's power."""
    length = wave.shape[-1]
    size = 1 << (length + rir.shape[-1] - 2).bit_length()  # a power of 2 ≥ S + L - 1
    spectrum = torch.fft.rfft(wave, size) * torch.fft.rfft(rir.to(wave), size)
    wet = torch.fft.irfft(spectrum, size)[:, :length]
    return wet * (_power(wave) / _power(wet).clamp(min=_TINY)).sqrt()


# --- Level -----------------------------------------------------------------------------------


def apply_gain(wave: torch.Tensor, gain_db: torch.Tensor | float) -> torch.Tensor:
    """`wave` (B, S) scaled by `gain_db` (scalar or (B,)), then clipped to [-1, 1]."""
    gain = torch.as_tensor(gain_db, dtype=wave.dtype, device=wave.device).reshape(-1, 1)
    return (wave * 10 ** (gain / 20)).clamp(-1.0, 1.0)


# --- Channel: telephone and codecs -----------------------------------------------------------


def mu_law(x: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """`x` in [-1, 1] quantised to 2^bits μ-law levels and expanded back (G.711's companding)."""
    mu = 2**bits - 1
    x = x.clamp(-1.0, 1.0)
    code = torch.sign(x) * torch.log1p(mu * x.abs()) / math.log1p(mu)
    code = torch.round((code + 1) / 2 * mu) / mu * 2 - 1
    return torch.sign(code) * torch.expm1(code.abs() * math.log1p(mu)) / mu


def band_pass(wave: torch.Tensor, sample_rate: int, order: int = 4) -> torch.Tensor:
    """Zero-phase band-pass of `wave` (B, S) to `TELEPHONE_BAND`: the magnitude of an
    order-`order` Butterworth high-pass and low-pass pair, applied in the frequency domain."""
    low, high = TELEPHONE_BAND
    freqs = torch.fft.rfftfreq(wave.shape[-1], 1 / sample_rate, device=wave.device)
    # at 0 Hz low / 0 = inf, so the gain is exactly 0
    power = 1 / (1 + (low / freqs) ** (2 * order)) / (1 + (freqs / high) ** (2 * order))
    return torch.fft.irfft(torch.fft.rfft(wave) * power.sqrt(), n=wave.shape[-1])


def _resample(wave: torch.Tensor, rate: int, new_rate: int) -> torch.Tensor:
    """(B, S) from `rate` to `new_rate` with soxr (all clips as the channels of one stream)."""
    x = np.ascontiguousarray(wave.cpu().numpy().T, dtype=np.float32)  # (S, B)
    return torch.from_numpy(soxr.resample(x, rate, new_rate).T.copy())


def _at_rate(
    wave: torch.Tensor,
    sample_rate: int,
    rate: int,
    channel: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
) -> torch.Tensor:
    """`wave` (B, S) resampled to `rate` (band-limited to rate / 2), through `channel(x, rate)`
    when given, and back to `sample_rate`, cut or padded to S samples."""
    length = wave.shape[-1]
    rate = min(sample_rate, rate)
    narrow = _resample(wave, sample_rate, rate) if rate != sample_rate else wave.cpu()
    if channel is not None:
        narrow = channel(narrow.float(), rate)
    out = _resample(narrow, rate, sample_rate) if rate != sample_rate else narrow
    out = torch.nn.functional.pad(out[:, :length], (0, max(0, length - out.shape[-1])))
    return out.to(wave)


def telephone(wave: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """`wave` (B, S) through a landline: resampled to 8 kHz (band-limited to 4 kHz), band-passed
    to 300-3400 Hz, 8-bit μ-law, then resampled back to `sample_rate`. Deterministic."""
    return _at_rate(wave, sample_rate, TELEPHONE_RATE, lambda x, r: mu_law(band_pass(x, r)))


def narrowband(wave: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """`wave` (B, S) as recorded at 8 kHz: nothing above 4 kHz, the low frequencies (the
    fundamental) kept, unlike `telephone`. IVR prompts and many older recordings sound so.
    Deterministic."""
    return _at_rate(wave, sample_rate, TELEPHONE_RATE)


def codec_round_trip(
    wave: torch.Tensor, sample_rate: int, codec: str, compression_level: float
) -> torch.Tensor:
    """One clip `wave` (S,) encoded in memory by libsndfile as `codec` ("mp3" or "vorbis") at
    `compression_level` in [0, 1) (0 best quality), decoded, and cut or padded to S samples."""
    fmt, subtype = CODEC_FORMATS[codec]
    data = wave.detach().cpu().float().clamp(-1.0, 1.0).numpy()
    buffer = io.BytesIO()
    sf.write(
        buffer,
        data,
        sample_rate,
        format=fmt,
        subtype=subtype,
        compression_level=compression_level,
    )
    buffer.seek(0)
    decoded, _ = sf.read(buffer, dtype="float32")
    out = np.zeros_like(data)
    out[: min(len(data), len(decoded))] = decoded[: len(data)]
    return torch.from_numpy(out).to(wave)


# --- The whole chain -------------------------------------------------------------------------


def augment(
    waveform: torch.Tensor, sample_rate: int, cfg: AugmentConfig, generator: torch.Generator
) -> torch.Tensor:
    """A batch of training clips (B, S) as real recordings might sound: each effect of `cfg`
    applied to each clip with its probability, in a recording's order — room (reverb, noise),
    capture (gain and clipping), channel (8 kHz recording, telephone, codec) — and clipped to
    [-1, 1].

    Every random draw comes from `generator` (a CPU generator), so a seed gives the same output
    bit for bit, and a resumed run draws what an uninterrupted one would. The output has the
    input's shape, dtype and device; with `cfg.enabled` False the input itself is returned.
    """
    if not cfg.enabled:
        return waveform
    wave = waveform.detach().float().clone()  # (B, S)
    batch, length = wave.shape
    device = wave.device

    index = _chosen(cfg.reverb_p, batch, generator).to(device)
    if len(index):
        rt60 = _uniform(cfg.rt60, len(index), generator)
        drr_db = _uniform(cfg.drr_db, len(index), generator)
        rir = room_impulse(rt60, drr_db, sample_rate, generator, max_samples=length)
        wave[index] = reverberate(wave[index], rir.to(device))

    index = _chosen(cfg.noise_p, batch, generator).to(device)
    if len(index):
        snr_db = _uniform(cfg.snr_db, len(index), generator)
        noise = _draw_noise(wave, index, sample_rate, cfg.noise_kinds, generator)
        wave[index] = add_noise(wave[index], noise, snr_db.to(device))

    index = _chosen(cfg.gain_p, batch, generator).to(device)
    if len(index):
        wave[index] = apply_gain(wave[index], _uniform(cfg.gain_db, len(index), generator))

    index = _chosen(cfg.narrowband_p, batch, generator).to(device)
    if len(index):
        wave[index] = narrowband(wave[index], sample_rate)

    index = _chosen(cfg.telephone_p, batch, generator).to(device)
    if len(index):
        wave[index] = telephone(wave[index], sample_rate)

    index = _chosen(cfg.codec_p, batch, generator)
    codecs = torch.randint(len(cfg.codecs), (len(index),), generator=generator).tolist()
    levels = _uniform(cfg.compression_level, len(index), generator).tolist()
    for i, codec, level in zip(index.tolist(), codecs, levels, strict=True):
        wave[i] = codec_round_trip(wave[i], sample_rate, cfg.codecs[codec], level)

    # a converter clips whatever the room and the gain made too loud; codecs overshoot a little
    return wave.clamp(-1.0, 1.0).to(waveform.dtype)
