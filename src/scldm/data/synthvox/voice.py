"""A source-filter speech synthesiser for SynthVox voices (numpy/scipy only, no TTS).

Source: a Rosenberg glottal pulse train (Rosenberg 1971) with per-cycle jitter and shimmer,
a breathiness-dependent open quotient and spectral tilt, and aspiration noise gated by the
glottal cycle; frication noise for fricatives and stop bursts. Filter: a cascade of formant
resonators F1..F5 and a nasal pole-zero pair (Klatt 1980), with formant frequencies scaled by
17.5 cm / vocal-tract length — the uniform-tube scaling behind the formant differences between
women, men, and small and large speakers (Fitch & Giedd 1999). The time-varying filter is
applied frame by frame in the frequency domain (8 ms hop, Hann, overlap-add), exact within each
frame and vectorised over all of them. Content is a random syllable sequence with declination,
pitch accents and pauses, different for every clip.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import scipy.fft as sfft
from scipy.signal import lfilter

from scldm.data.synthvox.attributes import Speaker
from scldm.data.synthvox.phones import NOISE_SHAPES, Utterance, plan_utterance

SAMPLE_RATE = 16_000
CLIP_SECONDS = 6.0
REFERENCE_VTL_CM = 17.5  # the phone table's formants are those of a 17.5 cm vocal tract
F0_RANGE = {"f": (165.0, 255.0), "m": (85.0, 155.0)}  # Hz, where speaking F0s fall
HOP, WIN, NFFT = 128, 256, 512  # 8 ms hop, 16 ms Hann frames, zero-padded so filtering is linear
BANDWIDTHS = np.array([80.0, 90.0, 130.0, 180.0, 250.0])  # Hz, F1..F5 (Klatt-like)


@dataclass(frozen=True)
class VoiceParams:
    """The physical settings of one speaker's voice, derived from the attributes."""

    f0_hz: float  # mean speaking F0
    vtl_cm: float  # vocal-tract length; formants scale with REFERENCE_VTL_CM / vtl_cm
    formant_jitter: tuple[float, ...]  # this speaker's own ×deviation of F1..F5 (identity)
    breathiness: float  # 0..1 effective: open quotient, spectral tilt, aspiration noise
    jitter: float  # cycle-to-cycle F0 perturbation, fraction (≈0.005 in a young healthy voice)
    shimmer: float  # cycle-to-cycle amplitude perturbation, fraction
    tremor: float  # depth of a 5 Hz F0 tremor, fraction
    nasality: float  # 0..1 nasal coupling on vowels
    rate_sps: float  # syllables per second
    pitch_range_st: float  # height of pitch accents, semitones


def _soft_range(f0: float, lo: float, hi: float) -> float:
    # squash into (lo, hi) on a log scale with slope 1 at the centre: extreme combinations of
    # attributes saturate smoothly instead of leaving the human range
    mid, half = np.sqrt(lo * hi), np.log(hi / lo) / 2
    return float(mid * np.exp(half * np.tanh(np.log(f0 / mid) / half)))


def voice_params(speaker: Speaker) -> VoiceParams:
    """Map attributes to voice physics, following the phonetics literature.

    F0 falls with body size and, with age, falls in women and dips then rises in men;
    vocal-tract length follows gender and size and grows slightly with age; jitter, shimmer,
    breathiness and tremor rise with age; speech slows with age.
    """
    s = speaker
    u = (s.age - 18) / 62  # 0 at 18, 1 at 80
    if s.gender == "f":
        base, age_st, vtl = 210.0, -4.0 * u, 14.7
    else:
        base, vtl = 118.0, 17.3
        age_st = -1.5 * min(s.age - 18, 32) / 32 + 2.5 * max(s.age - 50, 0) / 30
    f0 = base * 2 ** ((-1.0 * s.size + age_st + s.pitch_offset) / 12)
    rng = s.rng(1)
    return VoiceParams(
        f0_hz=_soft_range(f0, *F0_RANGE[s.gender]),
        vtl_cm=vtl + 0.6 * s.size + 0.5 * u,
        formant_jitter=tuple(float(x) for x in 1 + 0.025 * rng.standard_normal(5)),
        breathiness=float(np.clip(0.5 * s.breathiness + 0.5 * u, 0, 1)),
        jitter=0.004 + 0.014 * u,
        shimmer=0.03 + 0.08 * u,
        tremor=0.03 * float(np.clip((s.age - 55) / 25, 0, 1)),
        nasality=s.nasality,
        rate_sps=4.6 * s.speaking_rate * (1 - 0.35 * u),
        pitch_range_st=s.pitch_range * (1 - 0.25 * u),
    )


# --- Source -----------------------------------------------------------------------------------


def _one_pole(x: np.ndarray, pole: float) -> np.ndarray:
    """Unity-gain one-pole low-pass in float32 (float32 coefficients keep lfilter in float32)."""
    return lfilter(np.float32([1 - pole]), np.float32([1, -pole]), x)


def glottal_source(
    f0: np.ndarray, params: VoiceParams, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Rosenberg glottal flow derivative for a per-sample F0 track: ((S,) pulses, (S,) flow).

    Jitter perturbs each cycle's period and shimmer its amplitude; a breathier voice has a
    longer open phase and a steeper spectral tilt (Klatt & Klatt 1990). float32 throughout.
    """
    # one period factor per cycle, looked up by the cycle each sample falls in (unjittered)
    cycle_of = (np.cumsum(f0, dtype=np.float64) / SAMPLE_RATE).astype(np.int64)
    jitter = 1 + params.jitter * rng.standard_normal(cycle_of[-1] + 1, dtype=np.float32)
    phase = np.cumsum(f0 * jitter[cycle_of], dtype=np.float64) / SAMPLE_RATE
    cycle = phase.astype(np.int64)
    frac = (phase - cycle).astype(np.float32)
    open_q = 0.5 + 0.3 * params.breathiness
    rise, fall = 0.65 * open_q, 0.35 * open_q
    opening = frac < rise
    flow = np.cos(np.where(opening, np.pi * frac / rise, 0.5 * np.pi * (frac - rise) / fall))
    flow = np.where(opening, 0.5 * (1 - flow), np.where(frac < open_q, flow, 0))
    shimmer = 1 + params.shimmer * rng.standard_normal(cycle[-1] + 1, dtype=np.float32)
    flow *= np.maximum(shimmer, 0.2)[cycle]
    pulses = np.diff(flow, prepend=np.float32(0))  # lip radiation ≈ differentiating the flow
    pulses = _one_pole(
        pulses, np.exp(-2 * np.pi * (6000 - 4500 * params.breathiness) / SAMPLE_RATE)
    )
    return pulses / (np.std(pulses) + 1e-9), flow


# --- Filter -----------------------------------------------------------------------------------


def _second_order(freqs: np.ndarray, bandwidths: np.ndarray) -> np.ndarray:
    """Denominator polynomials 1 + a1 z^-1 + a2 z^-2 of resonators: (T,) Hz, (T,) Hz → (T, 3)."""
    r = np.exp(-np.pi * bandwidths / SAMPLE_RATE)
    return np.stack([np.ones_like(r), -2 * r * np.cos(2 * np.pi * freqs / SAMPLE_RATE), r * r], 1)


def _polymul(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Row-wise product of polynomials in z^-1: (T, m), (T, n) → (T, m + n - 1)."""
    out = np.zeros((p.shape[0], p.shape[1] + q.shape[1] - 1))
    for j in range(q.shape[1]):
        out[:, j : j + p.shape[1]] += p * q[:, j : j + 1]
    return out


@lru_cache(maxsize=1)
def _unit_circle() -> tuple[np.ndarray, np.ndarray]:
    """cos kω and sin kω for k = 0..4 on the FFT grid: two (5, NFFT // 2 + 1) tables."""
    omega = 2 * np.pi * np.arange(NFFT // 2 + 1) / NFFT
    k = np.arange(5)[:, None]
    return np.cos(k * omega).astype(np.float32), np.sin(k * omega).astype(np.float32)


def _on_unit_circle(poly: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Real and imaginary parts of p(e^-iω) on the FFT grid for polynomials (T, k ≤ 5), scaled
    to 1 at 0 Hz: two (T, F) float32 arrays (einsum: plain loops, no BLAS threads that would
    fight the worker processes)."""
    cos, sin = _unit_circle()
    poly = (poly / poly.sum(1, keepdims=True)).astype(np.float32)
    k = poly.shape[1]
    return np.einsum("tk,kf->tf", poly, cos[:k]), -np.einsum("tk,kf->tf", poly, sin[:k])


def tract_response(
    utt: Utterance, params: VoiceParams, frames: np.ndarray | None = None
) -> np.ndarray:
    """Vocal-tract transfer function of every frame (or of `frames`): (T, NFFT // 2 + 1)
    complex, 1 at 0 Hz.

    A cascade of resonators F1..F5 (phone targets × 17.5 cm / VTL × this speaker's own
    deviations) and a nasal pole-zero pair that cancels without nasal coupling and separates
    with it (Klatt 1980). Each frame's cascade is a rational function of z^-1, evaluated on
    the FFT grid from its numerator and (paired) denominator polynomials.
    """
    pick = slice(None) if frames is None else frames
    scale = REFERENCE_VTL_CM / params.vtl_cm
    formants = utt.formants[pick] * scale * np.asarray(params.formant_jitter)  # (T, 5)
    formants = np.minimum(formants, 0.45 * SAMPLE_RATE)
    bandwidths = np.broadcast_to(BANDWIDTHS, formants.shape).copy()
    nasal = utt.nasal[pick]
    bandwidths[:, 0] *= 1 + 0.8 * params.breathiness + 0.6 * nasal  # glottal and nasal losses
    coupling = np.clip(nasal + 0.5 * params.nasality, 0, 1)
    pole = np.full_like(coupling, 270 * np.sqrt(scale))  # the nasal cavity scales less
    sections = [_second_order(pole * (1 + 2.5 * coupling), 100 + 100 * coupling)]  # zeros
    sections.append(_second_order(pole, np.full_like(pole, 100.0)))
    sections += [_second_order(formants[:, k], bandwidths[:, k]) for k in range(5)]
    # poles in pairs: degree-4 polynomials stay accurate in float32, degree 12 would not
    pairs = zip(sections[1::2], sections[2::2], strict=True)  # (nasal, F1), (F2, F3), (F4, F5)
    (zr, zi), *poles = (
        _on_unit_circle(p) for p in [sections[0], *(_polymul(a, b) for a, b in pairs)]
    )
    # product of the three denominators, then zeros / poles, in real arithmetic (complex64
    # ufuncs are several times slower here)
    pr, pi = poles[0]
    for qr, qi in poles[1:]:
        pr, pi = pr * qr - pi * qi, pr * qi + pi * qr
    norm = pr * pr + pi * pi
    response = np.empty(pr.shape, np.complex64)
    response.real = (zr * pr + zi * pi) / norm
    response.imag = (zi * pr - zr * pi) / norm
    return response


def noise_response(utt: Utterance, params: VoiceParams) -> np.ndarray:
    """Frication spectrum of every frame (a front-cavity resonance, scaled with VTL): (T, F)."""
    freqs_hz = np.fft.rfftfreq(NFFT, 1 / SAMPLE_RATE)[1:]
    scale = REFERENCE_VTL_CM / params.vtl_cm
    shapes = np.zeros((len(NOISE_SHAPES), freqs_hz.size + 1), np.float32)
    for i, (centre, octaves, level) in enumerate(NOISE_SHAPES.values()):
        octave_distance = np.log2(freqs_hz / (centre * scale)) / (octaves / 2)
        shapes[i, 1:] = level * np.exp(-0.5 * octave_distance**2)
    return shapes[utt.noise_kind]


def _frames_spectrum(
    source: np.ndarray, frames: int, which: np.ndarray | None = None
) -> np.ndarray:
    """STFT of `source` (S,) with Hann frames of WIN at hop WIN / 2: (T, NFFT // 2 + 1), or
    only the frames `which`. Frame t covers samples [(t - 1)·HOP, (t + 1)·HOP)."""
    padded = np.zeros((frames + 1) * HOP + WIN, np.float32)
    padded[HOP : HOP + source.size] = source[: frames * HOP]
    index = _frame_index(frames) if which is None else _frame_index(frames)[which]
    windowed = np.zeros((len(index), NFFT), np.float32)  # zero-padded: float32 FFTs are fast
    windowed[:, :WIN] = padded[index] * _HANN
    return sfft.rfft(windowed)


def _overlap_add(spectrum: np.ndarray, num_samples: int) -> np.ndarray:
    """Inverse of `_frames_spectrum` after filtering: Hann frames at half overlap sum to one,
    so a constant response gives plain LTI filtering (the tail beyond NFFT - WIN samples wraps
    around, and is negligible for these bandwidths)."""
    frames = spectrum.shape[0]
    out = sfft.irfft(spectrum, NFFT)  # (T, NFFT)
    wave = np.zeros((frames + NFFT // HOP, HOP), np.float32)
    for j in range(NFFT // HOP):  # frame t's chunk j lands in output block t + j
        wave[j : j + frames] += out[:, j * HOP : (j + 1) * HOP]
    return wave.reshape(-1)[HOP : HOP + num_samples]


_HANN = np.hanning(WIN + 1)[:-1].astype(np.float32)  # periodic Hann


@lru_cache(maxsize=4)
def _frame_index(frames: int) -> np.ndarray:
    return np.arange(frames)[:, None] * HOP + np.arange(WIN)[None]


# --- Utterance --------------------------------------------------------------------------------


def _upsample(track: np.ndarray, num_samples: int) -> np.ndarray:
    """Linear interpolation of a frame track (T,) to samples (S,), frame t at sample t·HOP."""
    w = np.arange(HOP, dtype=np.float32) / HOP
    track = np.append(track, track[-1]).astype(np.float32)
    return (track[:-1, None] * (1 - w) + track[1:, None] * w).reshape(-1)[:num_samples]


def synthesize(
    params: VoiceParams, rng: np.random.Generator, *, seconds: float = CLIP_SECONDS
) -> np.ndarray:
    """One utterance of `seconds` by the voice `params`: (S,) float32 at 16 kHz, about -23 dBFS.

    `rng` draws the content (syllables, pauses, intonation) and the noise, so two clips of a
    speaker differ in what they say but not in how the voice sounds.
    """
    n = round(seconds * SAMPLE_RATE)
    frames = -(-n // HOP)
    utt = plan_utterance(params.rate_sps, params.pitch_range_st, rng, frames=frames, hop=HOP)
    t = np.arange(frames) * (HOP / SAMPLE_RATE)
    tremor = params.tremor * np.sin(2 * np.pi * 5.2 * t + rng.uniform(0, 2 * np.pi))
    f0 = _upsample(params.f0_hz * 2 ** (utt.pitch_st / 12) * (1 + tremor), n)
    pulses, flow = glottal_source(f0, params, rng)
    # one white noise serves turbulence, frication and room noise at different offsets
    # (uncorrelated at non-zero lag); uniform noise is as white as Gaussian and 3x cheaper
    white = (rng.random(n + 2 * 4001, dtype=np.float32) - 0.5) * np.float32(np.sqrt(12))
    turbulence, frication, room = white[:n], white[4001 : 4001 + n], white[8002 : 8002 + n]

    voice, aspiration, noise = (_upsample(x, n) for x in (utt.voice, utt.aspiration, utt.noise))
    breath = 0.04 + 0.45 * params.breathiness**1.5  # aspiration relative to the pulses
    glottal = voice * (pulses + breath * (0.3 + flow) * turbulence) + 0.5 * aspiration * turbulence
    # filter only frames whose window holds some source (pauses and closures are silent)
    spectrum = np.zeros((frames, NFFT // 2 + 1), np.complex64)
    sounding = np.flatnonzero(np.convolve(utt.voice + utt.aspiration, np.ones(3), "same") > 0)
    spectrum[sounding] = _frames_spectrum(glottal, frames, sounding) * tract_response(
        utt, params, sounding
    )
    noisy = np.flatnonzero(np.convolve(utt.noise, np.ones(3), "same") > 0)
    fric = _frames_spectrum(0.5 * noise * frication, frames, noisy)
    spectrum[noisy] += fric * noise_response(utt, params)[noisy]
    wave = _overlap_add(spectrum, n)

    # level: RMS over speech to -23 dBFS ± 2 dB; light room noise at 30-45 dB SNR
    active = (voice + noise + aspiration) > 0.05
    rms = np.sqrt(np.mean(np.square(wave[active]))) if active.any() else 1.0
    wave *= np.float32(10 ** ((-23 + rng.uniform(-2, 2)) / 20) / rms)
    room = _one_pole(room, 0.7)  # gently low-tilted
    wave += room * np.float32(10 ** ((-23 - rng.uniform(30, 45)) / 20) / np.std(room))
    return np.tanh(wave / np.float32(0.95)) * np.float32(0.95)  # soft limiter for stray peaks


def synthesize_clip(speaker: Speaker, clip: int, *, seconds: float = CLIP_SECONDS) -> np.ndarray:
    """Clip `clip` of `speaker`: (S,) float32 at 16 kHz. Deterministic in (seed, speaker, clip)."""
    return synthesize(voice_params(speaker), speaker.rng(100, clip), seconds=seconds)
