"""Is the information in the audio? Linear probes on spectrogram statistics of SynthVox clips.

Each clip becomes the mean and standard deviation over time of its log power spectrum (64
bands), nothing that knows about pitch or formants. Ridge probes fit on the train split (ridge
strength picked on val) then predict the test split: gender must be recovered, age and size
must correlate, and no face-only attribute may beat the majority class — the audio carries the
linked attributes and nothing of the face-only ones.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from scldm.audio import load_audio
from scldm.data.manifest import read_manifest
from scldm.data.synthvox.attributes import CATEGORIES, FACE_ONLY, VOICE_ONLY

N_FFT, HOP, BANDS = 512, 160, 64
ALPHAS = (0.1, 1.0, 10.0, 100.0, 1000.0)


def spectrogram_stats(wave: np.ndarray) -> np.ndarray:
    """(S,) waveform → (2·BANDS,) mean and std over time of the log power in linear bands."""
    frames = 1 + (wave.size - N_FFT) // HOP
    idx = np.arange(frames)[:, None] * HOP + np.arange(N_FFT)[None]
    power = np.abs(np.fft.rfft(wave[idx] * np.hanning(N_FFT).astype(np.float32))) ** 2
    bands = power[:, 1:].reshape(frames, BANDS, -1).sum(-1)  # (T, BANDS), 0 Hz dropped
    logp = np.log10(bands + 1e-10)
    loud = logp.mean(1) > np.percentile(logp.mean(1), 30)  # skip pauses
    return np.concatenate([logp[loud].mean(0), logp[loud].std(0)])


def _ridge(x: np.ndarray, y: np.ndarray, alpha: float) -> np.ndarray:
    """Closed-form ridge weights (with an unpenalised bias) for standardised x (N, F), y (N, K)."""
    xb = np.hstack([x, np.ones((len(x), 1))])
    reg = alpha * np.eye(xb.shape[1])
    reg[-1, -1] = 0
    return np.linalg.solve(xb.T @ xb + reg, xb.T @ y)


def _predict(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    return np.hstack([x, np.ones((len(x), 1))]) @ w


def _fit(xs: Mapping[str, np.ndarray], y: Mapping[str, np.ndarray], score) -> np.ndarray:
    """Fit on train with the ridge strength that scores best on val; predict test."""
    best = max(
        ALPHAS,
        key=lambda a: score(_predict(xs["val"], _ridge(xs["train"], y["train"], a)), y["val"]),
    )
    return _predict(xs["test"], _ridge(xs["train"], y["train"], best))


@dataclass
class ProbeReport:
    """Test-split results of the audio probes."""

    clips: dict[str, int]  # per split
    linked: dict[str, float]  # gender_acc, age_r, age_mae, size_r
    voice_only: dict[str, float]  # Pearson r per voice-only attribute
    face_only: dict[str, tuple[float, float]]  # (accuracy, majority-class accuracy)

    def table(self) -> str:
        """Markdown tables of the three groups."""
        lines = ["| linked attribute | probe on spectrogram statistics |", "|---|---:|"]
        lines += [f"| {k} | {v:.3f} |" for k, v in self.linked.items()]
        lines += ["", "| voice-only attribute | Pearson r |", "|---|---:|"]
        lines += [f"| {k} | {v:.3f} |" for k, v in self.voice_only.items()]
        lines += [
            "",
            "| face-only attribute | accuracy | majority class (chance) |",
            "|---|---:|---:|",
        ]
        lines += [f"| {k} | {a:.3f} | {c:.3f} |" for k, (a, c) in self.face_only.items()]
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {
            "clips": self.clips,
            "linked": self.linked,
            "voice_only": self.voice_only,
            "face_only": {
                k: {"accuracy": a, "majority": c} for k, (a, c) in self.face_only.items()
            },
        }


def audio_probe(data: str | Path, *, max_clips_per_split: int | None = None) -> ProbeReport:
    """Run the linear probes on the prepared SynthVox folder `data` (needs train/val/test)."""
    data = Path(data)
    rows = {s: read_manifest(data, split=s)[:max_clips_per_split] for s in ("train", "val", "test")}
    feats = {
        s: np.stack([spectrogram_stats(load_audio(data / r["audio"])) for r in rs])
        for s, rs in rows.items()
    }
    mean, std = feats["train"].mean(0), feats["train"].std(0) + 1e-6
    xs = {s: (f - mean) / std for s, f in feats.items()}
    col = lambda name: {s: np.asarray([r[name] for r in rs]) for s, rs in rows.items()}  # noqa: E731

    def classify(name: str) -> tuple[float, float]:
        labels, classes = col(name), list(CATEGORIES[name])
        onehot = {
            s: np.eye(len(classes))[[classes.index(v) for v in y]] * 2 - 1
            for s, y in labels.items()
        }
        acc = lambda p, t: float((p.argmax(1) == t.argmax(1)).mean())  # noqa: E731
        pred = _fit(xs, onehot, acc)
        values, counts = np.unique(labels["train"], return_counts=True)
        majority = float((labels["test"] == values[counts.argmax()]).mean())
        return acc(pred, onehot["test"]), majority

    def regress(name: str) -> np.ndarray:
        y = {s: v.astype(float)[:, None] for s, v in col(name).items()}
        r = lambda p, t: float(np.corrcoef(p[:, 0], t[:, 0])[0, 1])  # noqa: E731
        return _fit(xs, y, r)[:, 0]

    truth = {name: col(name)["test"].astype(float) for name in ("age", "size", *VOICE_ONLY)}
    preds = {name: regress(name) for name in truth}
    pearson = {name: float(np.corrcoef(preds[name], truth[name])[0, 1]) for name in truth}
    return ProbeReport(
        clips={s: len(r) for s, r in rows.items()},
        linked={
            "gender_acc": classify("gender")[0],
            "age_r": pearson["age"],
            "age_mae": float(np.abs(preds["age"] - truth["age"]).mean()),
            "size_r": pearson["size"],
        },
        voice_only={name: pearson[name] for name in VOICE_ONLY},
        face_only={name: classify(name) for name in FACE_ONLY},
    )


def face_only_above_chance(report: ProbeReport, test_speakers: int) -> Sequence[str]:
    """Face-only attributes whose probe accuracy beats the majority class by more than two
    binomial standard errors at the number of test speakers (clips of a speaker are not
    independent): an empty list is the expected result."""
    out = []
    for name, (acc, base) in report.face_only.items():
        se = np.sqrt(max(base * (1 - base), 1e-6) / max(test_speakers, 1))
        if acc > base + 2 * se:
            out.append(name)
    return out
