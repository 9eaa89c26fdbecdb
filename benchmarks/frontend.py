"""Front-end throughput: load → resample → 6 s segment → spectrogram, ours vs a librosa path.

The librosa path is how public Speech2Face re-implementations compute the same input:
`librosa.load(path, sr=16000)` (whole file, resampled), tile/crop to 6 s, `librosa.stft`
(n_fft 512, hop 160, win 400, center=False), then the power law on real and imaginary parts.
Ours: `SpectrogramFrontend.load` (soundfile reads only the first 6 s, soxr resamples), then one
batched `torch.stft`. Each variant runs in a fresh process so peak memory is its own.

    python benchmarks/frontend.py [--clips 200]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

RESULTS = Path(__file__).parent / "results"
CASES = {  # name: (sample rate, channels, seconds) of the files on disk
    "voxceleb-like 16 kHz mono 8 s": (16_000, 1, 8.0),
    "youtube-like 44.1 kHz stereo 10 s": (44_100, 2, 10.0),
}


def torch_threads() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


def make_clips(folder: Path, n: int, rate: int, channels: int, seconds: float) -> list[Path]:
    rng = np.random.default_rng(0)
    t = np.arange(round(rate * seconds)) / rate
    paths = []
    for i in range(n):
        f0 = rng.uniform(90, 250)
        wave = sum(np.sin(2 * np.pi * f0 * h * t) / h for h in range(1, 12)) * 0.1
        wave = wave + 0.01 * rng.standard_normal(t.size)
        data = np.stack([wave] * channels, 1) if channels > 1 else wave
        paths.append(folder / f"clip{i:04d}.wav")
        sf.write(str(paths[-1]), data.astype(np.float32), rate, subtype="PCM_16")
    return paths


def run_ours(paths: list[str], threads: int) -> None:
    import torch

    from scldm.audio import SpectrogramFrontend

    torch.set_num_threads(threads)
    fe = SpectrogramFrontend()
    with torch.no_grad():
        for p in paths:  # per clip, as a DataLoader worker computes it
            spec = fe(fe.load(p))
    assert spec.shape[1:] == (2, 257, 598)


def run_librosa(paths: list[str], threads: int) -> None:
    import librosa

    for p in paths:
        y, _ = librosa.load(p, sr=16_000)
        y = np.tile(y, -(-96_000 // y.size))[:96_000]
        z = librosa.stft(y, n_fft=512, hop_length=160, win_length=400, window="hann", center=False)
        spec = np.stack([z.real, z.imag])
        spec = np.sign(spec) * np.abs(spec) ** 0.3
    assert spec.shape[0] == 2 and spec.shape[1] == 257


def child(kind: str, listing: str, threads: int) -> None:
    paths = json.loads(Path(listing).read_text())
    fn = run_ours if kind.startswith("ours") else run_librosa
    fn(paths[:4], threads)  # warm-up: imports, FFT plans, numba compilation
    start = time.perf_counter()
    fn(paths, threads)
    elapsed = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"clips_per_s": len(paths) / elapsed, "peak_rss_mib": peak_mib}))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clips", type=int, default=200)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind = args.child[0]
        return child(kind, args.child[1], 1 if kind != "ours-threads" else torch_threads())

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for case, (rate, channels, seconds) in CASES.items():
            folder = Path(tmp) / str(len(rows))
            folder.mkdir()
            listing = folder / "paths.json"
            listing.write_text(
                json.dumps(
                    [str(p) for p in make_clips(folder, args.clips, rate, channels, seconds)]
                )
            )
            result = {}
            for kind in ("librosa", "ours", "ours-threads"):
                out = subprocess.run(
                    [sys.executable, __file__, "--child", kind, str(listing)],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                result[kind] = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append((case, result))

    lines = [
        f"# Front end: load → resample → 6 s → spectrogram, per clip ({args.clips} clips a kind)",
        "",
        f"{os.cpu_count()} cores ({platform.machine()}), Python {platform.python_version()}. "
        "'1 thread' pins torch to one thread like the single-threaded librosa path; "
        f"'{torch_threads()} threads' is torch's default here. Peak RSS includes the imports "
        "(torch's alone is most of ours).",
        "",
        "| files | librosa clips/s | ours, 1 thread | speed-up | ours, default threads | speed-up "
        "| librosa peak RSS MiB | ours peak RSS MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for case, r in rows:
        lib, one, many = (
            r["librosa"]["clips_per_s"],
            r["ours"]["clips_per_s"],
            r["ours-threads"]["clips_per_s"],
        )
        lines.append(
            f"| {case} | {lib:.0f} | {one:.0f} | {one / lib:.1f}× | {many:.0f} | {many / lib:.1f}× "
            f"| {r['librosa']['peak_rss_mib']:.0f} | {r['ours']['peak_rss_mib']:.0f} |"
        )
    table = "\n".join(lines) + "\n"
    print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "frontend.md").write_text(table)


if __name__ == "__main__":
    main()
