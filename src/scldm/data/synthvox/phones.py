"""What a SynthVox utterance says: phones, syllables, phrases and intonation as frame tracks.

Vowels use the formants of an adult male (Hillenbrand et al. 1995); consonants are stops
(closure, burst, aspiration), fricatives, nasals and approximants with formant loci, so the
smoothed formant tracks glide between them as in coarticulated speech. Phrases of 3-8 syllables
are separated by pauses; F0 declines over each phrase, rises on stressed syllables (pitch
accents), and falls — or now and then rises — at the phrase end.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import uniform_filter1d

SAMPLE_RATE = 16_000

# Vowel formants F1..F4 (Hz) for a 17.5 cm tract; F5 is 4500 Hz throughout.
VOWELS = {
    "i": (342, 2322, 3000, 3657),
    "ɪ": (427, 2034, 2684, 3618),
    "e": (476, 2089, 2691, 3649),
    "ɛ": (580, 1799, 2605, 3677),
    "æ": (588, 1952, 2601, 3624),
    "ɑ": (768, 1333, 2522, 3687),
    "o": (497, 910, 2459, 3384),
    "u": (378, 997, 2343, 3357),
    "ʌ": (623, 1200, 2550, 3557),
    "ə": (500, 1500, 2500, 3500),
}
# Consonants: kind, formant loci F1..F3 (Hz), voiced, frication spectrum, duration (ms).
CONSONANTS = {
    "p": ("stop", (250, 900, 2200), False, "burst_lab", 85),
    "t": ("stop", (250, 1700, 2600), False, "burst_alv", 80),
    "k": ("stop", (250, 2000, 2400), False, "burst_vel", 90),
    "b": ("stop", (250, 900, 2200), True, "burst_lab", 70),
    "d": ("stop", (250, 1700, 2600), True, "burst_alv", 65),
    "g": ("stop", (250, 2000, 2400), True, "burst_vel", 70),
    "f": ("fricative", (300, 1100, 2300), False, "f", 95),
    "s": ("fricative", (300, 1700, 2600), False, "s", 105),
    "ʃ": ("fricative", (300, 1900, 2300), False, "sh", 110),
    "v": ("fricative", (300, 1100, 2300), True, "f", 70),
    "z": ("fricative", (300, 1700, 2600), True, "s", 80),
    "h": ("aspirate", (500, 1500, 2500), False, "", 70),
    "m": ("nasal", (250, 1000, 2300), True, "", 75),
    "n": ("nasal", (250, 1500, 2500), True, "", 70),
    "l": ("approximant", (360, 1100, 2700), True, "", 65),
    "r": ("approximant", (400, 1150, 1600), True, "", 65),
    "w": ("approximant", (330, 700, 2300), True, "", 60),
    "j": ("approximant", (280, 2200, 2900), True, "", 60),
}
ONSETS = (*CONSONANTS, "st", "sp", "sk", "pl", "bl", "fl", "kl", "tr", "kr", "gr", "pr")
CODAS = ("n", "m", "s", "t", "k", "l", "r", "d", "z", "ʃ", "st", "nt", "nd", "ks")
# Frication spectra: centre (Hz, 17.5 cm tract), width (octaves), level. Index = noise kind.
NOISE_SHAPES = {
    "": (1000, 1.0, 0.0),
    "f": (4500, 3.0, 0.25),
    "s": (5200, 0.9, 1.0),
    "sh": (2800, 1.0, 0.8),
    "burst_lab": (900, 2.5, 0.8),
    "burst_alv": (3800, 1.4, 1.0),
    "burst_vel": (1800, 0.9, 1.0),
}
_KIND = {name: i for i, name in enumerate(NOISE_SHAPES)}
_SCHWA = (*VOWELS["ə"], 4500)


@dataclass
class Utterance:
    """Frame-level control tracks of one utterance (one frame per `hop` samples)."""

    formants: np.ndarray  # (T, 5) Hz for a 17.5 cm tract
    nasal: np.ndarray  # (T,) 0..1 nasal coupling of the consonants (and their neighbours)
    voice: np.ndarray  # (T,) voicing amplitude
    aspiration: np.ndarray  # (T,) aspiration noise amplitude (h, stop release)
    noise: np.ndarray  # (T,) frication amplitude
    noise_kind: np.ndarray  # (T,) int index into NOISE_SHAPES
    pitch_st: np.ndarray  # (T,) intonation in semitones; its median over voiced frames is 0


# A phone row: (F1..F5, nasal, voice, aspiration, noise, noise kind, seconds, stretchable)
Row = tuple[tuple[float, ...], float, float, float, float, str, float, bool]


def _consonant(c: str, *, coda: bool) -> list[Row]:
    kind, loci, voiced, noise, ms = CONSONANTS[c]
    f = (*loci, 3500.0, 4500.0)
    sec = ms / 1000
    if kind == "stop":  # closure (a weak voice bar if voiced), burst, aspiration if voiceless
        rows = [(f, 0.0, 0.12 * voiced, 0.0, 0.0, "", 0.6 * sec, True)]
        rows.append((f, 0.0, 0.12 * voiced, 0.0, 0.4 if coda else 1.0, noise, 0.012, False))
        if not voiced and not coda:
            rows.append((f, 0.0, 0.0, 0.6, 0.0, "", 0.035, False))
        return rows
    if kind == "fricative":
        return [(f, 0.0, 0.5 * voiced, 0.0, 1.0, noise, sec, True)]
    if kind == "aspirate":
        return [(f, 0.0, 0.0, 0.8, 0.0, "", sec, True)]
    return [(f, float(kind == "nasal"), 0.6 if kind == "nasal" else 0.75, 0.0, 0.0, "", sec, True)]


def _syllable(rng: np.random.Generator, *, stressed: bool, final: bool) -> tuple[list[Row], int]:
    """Phone rows of one (C)(C)V(C)(C) syllable, and the index of its vowel."""
    u = rng.random()
    onset = "" if u < 0.15 else ONSETS[int(rng.integers(len(ONSETS)))]
    names = list(VOWELS)
    vowel = "ə" if not stressed and rng.random() < 0.3 else names[int(rng.integers(len(names)))]
    coda = CODAS[int(rng.integers(len(CODAS)))] if rng.random() < 0.45 else ""
    rows = [r for c in onset for r in _consonant(c, coda=False)]
    seconds = (0.16 if stressed else 0.10) * (1.4 if final else 1.0)
    rows.append(((*VOWELS[vowel], 4500.0), 0.0, 1.0, 0.0, 0.0, "", seconds, True))
    at = len(rows) - 1
    rows += [r for c in coda for r in _consonant(c, coda=True)]
    return rows, at


def plan_utterance(
    rate_sps: float, pitch_range_st: float, rng: np.random.Generator, *, frames: int, hop: int
) -> Utterance:
    """Draw `frames` frames of speech at `rate_sps` syllables/s with accents of `pitch_range_st`."""
    total = frames * hop / SAMPLE_RATE
    silence: Row = (_SCHWA, 0.0, 0.0, 0.0, 0.0, "", 0.0, False)
    lead = rng.uniform(0.1, 0.35)
    rows: list[Row] = [(*silence[:6], lead, False)]
    accents, phrases, finals = [], [], []  # (centre s, width s, height st), (start, end, drop st)
    t = lead
    while t < total:
        n = int(rng.integers(3, 9))
        stress = rng.random(n) < 0.35
        stress[rng.integers(n)] = True
        sylls = [_syllable(rng, stressed=bool(stress[i]), final=i == n - 1) for i in range(n)]
        raw = sum(r[6] for s, _ in sylls for r in s)
        fixed = sum(r[6] for s, _ in sylls for r in s if not r[7])
        # stretch the phrase to this speaker's rate (± 10 %); bursts keep their length
        want = n / (rate_sps * rng.uniform(0.9, 1.1))
        k = max(want - fixed, 0.3 * (raw - fixed)) / (raw - fixed)
        start = t
        for (syl, at), s in zip(sylls, stress, strict=True):
            for i, row in enumerate(syl):
                dur = row[6] * (k if row[7] else 1.0)
                if i == at:
                    if s:
                        accents.append((t + dur / 2, 0.6 * dur + 0.05, rng.uniform(0.6, 1.0)))
                    last_vowel = (t, t + dur)
                rows.append((*row[:6], dur, row[7]))
                t += dur
        phrases.append((start, t, rng.uniform(1.5, 3.5)))
        rise = rng.random() < 0.15  # a question-like rise now and then, mostly a fall
        finals.append((*last_vowel, 1.0 if rise else -0.5))
        pause = rng.uniform(0.15, 0.45)
        rows.append((*silence[:6], pause, False))
        t += pause
    return _to_frames(rows, accents, phrases, finals, pitch_range_st, rng, frames, hop)


def _to_frames(rows, accents, phrases, finals, pitch_range_st, rng, frames, hop) -> Utterance:
    ends = np.cumsum([r[6] for r in rows])
    times = (np.arange(frames) + 0.5) * hop / SAMPLE_RATE
    idx = np.minimum(np.searchsorted(ends, times, side="right"), len(rows) - 1)
    table = np.array([(*r[0], *r[1:5]) for r in rows])[idx]  # (T, 9)
    # formants glide between targets (coarticulation): a 40 ms moving average in log frequency
    formants = np.exp(uniform_filter1d(np.log(table[:, :5]), 5, axis=0))
    nasal = uniform_filter1d(table[:, 5], 5)  # vowels next to nasals are nasalised
    voice, aspiration, noise = table[:, 6], table[:, 7], table[:, 8]
    kind = np.array([_KIND[r[5]] for r in rows])[idx]
    # frames without frication borrow the next noisy frame's spectrum, so the overlap-add
    # neighbours of a short burst filter it with the burst's shape and not with silence
    noisy = np.flatnonzero(noise > 0)
    if noisy.size:
        kind = kind[noisy[np.minimum(np.searchsorted(noisy, np.arange(frames)), noisy.size - 1)]]

    pitch = np.zeros(frames)
    for start, end, drop in phrases:  # declination over each phrase
        inside = (times >= start) & (times < end)
        pitch[inside] += drop * (0.5 - (times[inside] - start) / (end - start))
    for centre, width, height in accents:
        x = np.clip((times - centre) / width, -1, 1)
        pitch += pitch_range_st * height * 0.5 * (1 + np.cos(np.pi * x))
    for start, end, size in finals:
        ramp = np.clip((times - start) / (end - start), 0, 1) * (times < end + 0.05)
        pitch += pitch_range_st * size * ramp
    drift = rng.standard_normal(frames // 25 + 2)  # slow wandering, ±0.4 st
    pitch += 0.4 * np.interp(np.arange(frames) / 25, np.arange(drift.size), drift)
    voiced = voice > 0.5
    pitch -= np.median(pitch[voiced]) if voiced.any() else 0.0
    return Utterance(formants, nasal, voice, aspiration, noise, kind, pitch)
