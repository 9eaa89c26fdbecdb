"""SynthVox: attribute distributions, the voice physics measured by independent estimators,
renders that move with their attributes, and the dataset writer (determinism, format, splits)."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from scipy.linalg import solve_toeplitz

from scldm.cli import main
from scldm.data.manifest import read_manifest
from scldm.data.synthvox import (
    looks_of,
    pose_of,
    prepare_synthvox,
    render,
    sample_speaker,
    synthesize,
    voice_params,
)
from scldm.data.synthvox.attributes import CATEGORIES, FACE_ONLY
from scldm.data.synthvox.probe import _ridge, spectrogram_stats
from scldm.data.synthvox.voice import F0_RANGE, SAMPLE_RATE
from scldm.errors import InputError

SR = SAMPLE_RATE


def f0_autocorrelation(wave: np.ndarray, lo: float = 60.0, hi: float = 400.0) -> float:
    """Median F0 of the voiced 40 ms frames: the lag of the normalised autocorrelation peak."""
    frame, estimates = 640, []
    for start in range(0, wave.size - frame, frame // 2):
        x = wave[start : start + frame].astype(np.float64)
        x -= x.mean()
        if np.sqrt(np.mean(x**2)) < 0.02:
            continue
        ac = np.correlate(x, x, "full")[frame - 1 :]
        lags = np.arange(int(SR / hi), int(SR / lo))
        best = lags[np.argmax(ac[lags])]
        if ac[best] > 0.5 * ac[0]:
            estimates.append(SR / best)
    return float(np.median(estimates))


def long_term_spectrum(wave: np.ndarray, n_fft: int = 1024) -> np.ndarray:
    frames = wave[: wave.size // n_fft * n_fft].reshape(-1, n_fft) * np.hanning(n_fft)
    return (np.abs(np.fft.rfft(frames, axis=1)) ** 2).mean(0)


# --- Attributes -------------------------------------------------------------------------------


def test_speakers_are_pure_functions_of_seed_and_index():
    assert sample_speaker(3, 17) == sample_speaker(3, 17)
    assert sample_speaker(3, 17) != sample_speaker(4, 17)


def test_attribute_distributions():
    people = [sample_speaker(0, i) for i in range(600)]
    genders = Counter(p.gender for p in people)
    assert genders["f"] == genders["m"] == 300  # balanced exactly, in pairs
    assert {p.speaker_id for p in people[:3]} == {"sv00000", "sv00001", "sv00002"}
    ages = np.array([p.age for p in people])
    assert ages.min() >= 18 and ages.max() <= 80 and abs(ages.mean() - 49) < 3
    sizes = np.array([p.size for p in people])
    assert abs(sizes.mean()) < 0.15 and 0.85 < sizes.std() < 1.15 and np.abs(sizes).max() <= 2.5
    for name in FACE_ONLY:  # every value occurs, and none depends on gender
        values = CATEGORIES[name]
        assert {getattr(p, name) for p in people} == set(values)
        for v in values:
            share = {
                g: np.mean([getattr(p, name) == v for p in people if p.gender == g]) for g in "fm"
            }
            assert abs(share["f"] - share["m"]) < 0.1, (name, v, share)
    assert 0.24 < np.mean([p.glasses for p in people]) < 0.36
    long_hair = {
        g: np.mean([p.hair_length == "long" for p in people if p.gender == g]) for g in "fm"
    }
    assert long_hair["f"] > 0.4 and long_hair["m"] < 0.15  # probabilistic, not fixed
    bald = [p for p in people if p.hair_length == "bald"]
    assert bald and all(p.gender == "m" and p.age >= 30 for p in bald)
    assert all(p.beard == "none" for p in people if p.gender == "f")
    assert Counter(p.beard for p in people if p.gender == "m")["none"] < 200


# --- Voice ------------------------------------------------------------------------------------


@pytest.mark.parametrize("gender", ["f", "m"])
def test_f0_measured_by_autocorrelation_is_in_the_gender_range(gender):
    base = next(p for p in (sample_speaker(1, i) for i in range(40)) if p.gender == gender)
    lo, hi = F0_RANGE[gender]
    for age, size in ((19, -2.5), (80, 2.5), (45, 0.0)):  # extremes of the other attributes
        params = voice_params(replace(base, age=age, size=size))
        f0 = f0_autocorrelation(synthesize(params, np.random.default_rng(age), seconds=2.0))
        assert 0.95 * lo <= f0 <= 1.05 * hi
        assert abs(f0 / params.f0_hz - 1) < 0.08  # and it is the F0 the attributes asked for


def lpc_formants(wave: np.ndarray, order: int = 12) -> list[np.ndarray | None]:
    """The two lowest formants of each voiced 32 ms frame (None elsewhere), from the roots of
    an LPC polynomial fitted by the autocorrelation method: an estimator independent of how
    the synthesiser filters."""
    x = np.append(wave[0], wave[1:] - 0.97 * wave[:-1]).astype(np.float64)  # pre-emphasis
    out = []
    for start in range(0, x.size - 512, 256):
        if np.sqrt(np.mean(wave[start : start + 512] ** 2)) < 0.03:
            out.append(None)
            continue
        f = x[start : start + 512] * np.hamming(512)
        r = np.correlate(f, f, "full")[511 : 512 + order]
        a = solve_toeplitz(r[:order], r[1:])
        roots = np.roots(np.r_[1, -a])
        roots = roots[np.imag(roots) > 0]
        freq = np.angle(roots) * SR / (2 * np.pi)
        bandwidth = -np.log(np.abs(roots)) * SR / np.pi
        found = np.sort(freq[(freq > 200) & (bandwidth < 400)])
        out.append(found[:2] if found.size >= 2 else None)
    return out


def test_formants_scale_with_vocal_tract_length():
    params = voice_params(sample_speaker(0, 3))
    formants = {}
    for vtl in (14.0, 18.0):  # the same content (same rng), two vocal-tract lengths
        p = replace(params, vtl_cm=vtl, formant_jitter=(1.0,) * 5, f0_hz=150.0)
        formants[vtl] = lpc_formants(synthesize(p, np.random.default_rng(7), seconds=3.0))
    ratios = np.array(
        [
            a / b
            for a, b in zip(formants[14.0], formants[18.0], strict=True)
            if a is not None and b is not None
        ]
    )
    assert len(ratios) > 30
    f1_ratio, f2_ratio = np.median(ratios, axis=0)
    # uniform tube: formants scale with 1 / length; F1 less so (the nasal pole scales less)
    assert f2_ratio == pytest.approx(18 / 14, rel=0.05)
    assert f1_ratio > 1.05


def test_age_lowers_harmonicity():
    young, old = (replace(sample_speaker(0, 1), age=a, breathiness=0.2) for a in (20, 80))

    def hnr_db(speaker) -> float:
        """Harmonics-to-noise ratio from the normalised autocorrelation peak r near one period
        (Boersma 1993: HNR = r / (1 - r)), median over 40 ms voiced windows."""
        p = replace(voice_params(speaker), f0_hz=120.0)
        wave = synthesize(p, np.random.default_rng(3), seconds=3.0)
        peaks = []
        for start in range(0, wave.size - 640, 320):
            x = wave[start : start + 640] - wave[start : start + 640].mean()
            if np.sqrt(np.mean(x**2)) > 0.03:
                r = max(  # around one period of 120 Hz, normalised by the overlap's energy
                    x[:-lag] @ x[lag:] / np.sqrt((x[:-lag] @ x[:-lag]) * (x[lag:] @ x[lag:]))
                    for lag in range(100, 180)
                )
                peaks.append(r)
        r = float(np.median(peaks))
        return 10 * np.log10(r / (1 - r))

    young_db, old_db = hnr_db(young), hnr_db(old)
    assert 15 < young_db < 30  # a healthy young voice
    assert old_db < young_db - 3  # jitter, shimmer and breath noise rise with age


def test_spectrogram_statistics_reveal_gender():
    people = [sample_speaker(5, i) for i in range(24)]
    feats = np.stack(
        [spectrogram_stats(synthesize(voice_params(p), p.rng(100, 0), seconds=2.0)) for p in people]
    )
    feats = (feats - feats[:16].mean(0)) / (feats[:16].std(0) + 1e-6)
    y = np.array([1.0 if p.gender == "m" else -1.0 for p in people])[:, None]
    w = _ridge(feats[:16], y[:16], 10.0)
    pred = np.hstack([feats[16:], np.ones((8, 1))]) @ w
    assert np.mean(np.sign(pred) == y[16:]) >= 7 / 8


# --- Faces ------------------------------------------------------------------------------------


def _face(speaker, px: int = 64, **changes) -> np.ndarray:
    img = render(looks_of(replace(speaker, **changes)), pose_of(speaker, 0), px)
    return np.asarray(img, dtype=np.float64)


def _man(**need):
    return next(
        p
        for p in (sample_speaker(0, i) for i in range(200))
        if p.gender == "m" and all(getattr(p, k) == v for k, v in need.items())
    )


def test_renders_change_in_the_direction_of_each_attribute():
    man = _man(hair_length="short", beard="none", glasses=False)
    # hair colour: blonde hair is brighter than black hair (the top of the head)
    top = slice(8, 18), slice(20, 44)
    assert (
        _face(man, hair_colour="blonde", age=20)[top].mean()
        > _face(man, hair_colour="black", age=20)[top].mean() + 30
    )
    # age greys the hair: less colour (channel spread) and closer to grey
    young, old = _face(man, hair_colour="brown", age=20), _face(man, hair_colour="brown", age=80)
    assert np.ptp(old[top], axis=-1).mean() < np.ptp(young[top], axis=-1).mean() - 10
    # glasses: dark frame pixels appear in the eye band only
    bare, specs = _face(man, glasses=False), _face(man, glasses=True)
    diff = np.abs(specs - bare).sum(-1)
    assert diff[24:34].sum() > 4 * diff[:20].sum() and diff[24:34].max() > 100
    # a full beard darkens the lower face
    lower = slice(38, 48), slice(22, 42)
    assert (
        _face(man, beard="full", hair_colour="black")[lower].mean()
        < _face(man, beard="none")[lower].mean() - 25
    )
    # body size widens the neck and shoulders: more non-background pixels low in the image
    bg = np.asarray(looks_of(man).background)

    def width(img, row):
        return int((np.abs(img[row] - bg).sum(-1) > 40).sum())

    assert width(_face(man, size=2.0), 60) > width(_face(man, size=-2.0), 60) + 3
    assert width(_face(man, size=2.0), 50) > width(_face(man, size=-2.0), 50)


def test_renders_are_deterministic_and_images_of_a_speaker_differ():
    p = sample_speaker(0, 5)
    a, b = _face(p), _face(p)
    assert np.array_equal(a, b)
    other = np.asarray(render(looks_of(p), pose_of(p, 1), 64), dtype=np.float64)
    assert 1 < np.abs(other - a).mean() < 40  # a new pose and light, the same person


# --- Dataset ----------------------------------------------------------------------------------


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_prepare_is_deterministic_valid_and_speaker_disjoint(tmp_path):
    kw = {
        "speakers": 6,
        "clips_per_speaker": 2,
        "faces_per_speaker": 2,
        "image_size": 32,
        "seed": 3,
    }
    report = prepare_synthvox(tmp_path / "a", workers=1, **kw)
    prepare_synthvox(tmp_path / "b", workers=2, **kw)
    files = _files(tmp_path / "a")
    assert files == _files(tmp_path / "b")  # byte-identical, whatever the worker count
    assert len([f for f in files if f.endswith(".wav")]) == 12
    assert len([f for f in files if f.endswith(".png")]) == 12
    assert report.written == 12 and report.speakers == 6
    rows = read_manifest(tmp_path / "a")  # validates every row, and speaker-disjointness
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    assert all(r["source"] == "synthvox" and r["speaker_id"].startswith("sv") for r in rows)
    first = rows[0]
    for name in (
        "size",
        "breathiness",
        "skin_tone",
        "hair_colour",
        "glasses",
        "background",
        "beard",
    ):
        assert name in first
    assert first["face"] == first["faces"][0] and rows[1]["face"] == first["faces"][1]
    again = prepare_synthvox(tmp_path / "a", workers=1, **kw)
    assert again.written == 0 and again.reused == 12
    assert _files(tmp_path / "a") == files


@pytest.mark.parametrize(
    ("bad", "problem"),
    [
        ({"speakers": 2}, r"--speakers must be at least 3 .*, got 2"),
        ({"image_size": 16}, r"--image-size must be between 32 and 256, got 16"),
        ({"image_size": 512}, r"--image-size must be between 32 and 256, got 512"),
        ({"clips_per_speaker": 0}, r"--clips-per-speaker and --faces-per-speaker .*, got 0, 2"),
        ({"faces_per_speaker": 0}, r"--clips-per-speaker and --faces-per-speaker .*, got 4, 0"),
        ({"workers": 0}, r"--workers must be at least 1, got 0"),
    ],
    ids=["speakers", "image-small", "image-large", "clips", "faces", "workers"],
)
def test_prepare_rejects_bad_settings(tmp_path, bad, problem):
    with pytest.raises(InputError, match=problem):
        prepare_synthvox(tmp_path / "x", **{"speakers": 4, **bad})
    assert not (tmp_path / "x").exists()  # refused before anything is written


def test_prepare_refuses_a_folder_made_with_other_settings(tmp_path):
    prepare_synthvox(
        tmp_path / "y", speakers=3, clips_per_speaker=1, faces_per_speaker=1, image_size=32
    )
    # never mix two datasets; the error says what changed
    with pytest.raises(InputError, match=r"other settings \(seed 0 → 1\)"):
        prepare_synthvox(
            tmp_path / "y",
            speakers=3,
            clips_per_speaker=1,
            faces_per_speaker=1,
            image_size=32,
            seed=1,
        )


def test_cli_prepare_synthvox(tmp_path, capsys):
    out = tmp_path / "sv"
    args = ["prepare", "synthvox", "--out", str(out), "--speakers", "4", "--clips-per-speaker", "1"]
    assert main([*args, "--faces-per-speaker", "1", "--image-size", "32", "--workers", "1"]) == 0
    assert "4 clips of 4 speakers" in capsys.readouterr().out
    assert main([*args, "--image-size", "8"]) == 2
    assert "--image-size" in capsys.readouterr().err
