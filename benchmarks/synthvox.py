"""SynthVox generation speed, the audio-information probe, and the pictures of docs/synthvox.md.

    python benchmarks/synthvox.py                       # 2,000 speakers × 4 clips × 2 faces, 64 px
    python benchmarks/synthvox.py --speakers 200 --keep data/sv200
    python benchmarks/synthvox.py --figures docs/img    # only the pictures

The full run times `scldm prepare synthvox` as a newcomer runs it (a fresh process, imports
included), then times one clip and one face in this process, runs the audio probe
(`scldm.data.synthvox.probe`) on the generated set, and writes benchmarks/results/synthvox.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from scldm.data.manifest import read_manifest
from scldm.data.synthvox import render_face, sample_speaker, synthesize_clip, voice_params
from scldm.data.synthvox.probe import audio_probe, face_only_above_chance
from scldm.faces import make_grid

RESULTS = Path(__file__).parent / "results"
AGE_BINS = ((18, 24), (25, 34), (35, 44), (45, 54), (55, 64), (65, 74), (75, 80))


def per_item_ms(fn, n: int) -> float:
    fn(0)  # warm-up
    start = time.perf_counter()
    for i in range(n):
        fn(i)
    return (time.perf_counter() - start) / n * 1000


def face_grid(path: Path, size: int = 96, per_cell: int = 2) -> None:
    """Faces by gender (rows) × age band (columns), drawn from the seed-0 population."""
    people = [sample_speaker(0, i) for i in range(4000)]
    images, captions = [], []
    for gender in ("f", "m"):
        for k in range(per_cell):
            for lo, hi in AGE_BINS:
                match = [p for p in people if p.gender == gender and lo <= p.age <= hi]
                p = match[k]
                images.append(render_face(p, 0, size))
                captions.append(f"{'woman' if gender == 'f' else 'man'} {p.age}")
    make_grid(images, ncols=len(AGE_BINS), captions=captions).save(path, optimize=True)


def aging_grid(path: Path, size: int = 80) -> None:
    """The same two people (one woman, one man) drawn at every age: what age changes."""
    people = [sample_speaker(0, i) for i in range(40)]
    woman = next(p for p in people if p.gender == "f" and p.hair_length == "long")
    man = next(
        p for p in people if p.gender == "m" and p.hair_length == "short" and p.beard == "none"
    )
    ages = (20, 30, 40, 50, 60, 70, 80)
    images = [render_face(replace(p, age=a), 0, size) for p in (woman, man) for a in ages]
    captions = [f"age {a}" for _ in range(2) for a in ages]
    make_grid(images, ncols=len(ages), captions=captions).save(path, optimize=True)


def attribute_grid(path: Path, size: int = 80) -> None:
    """One person, one attribute changed per picture."""
    base = next(
        p
        for p in (sample_speaker(0, i) for i in range(60))
        if p.gender == "m" and p.age < 40 and p.hair_length == "short"
    )
    changes = [
        ("as drawn", {}),
        ("size -2", {"size": -2.0}),
        ("size +2", {"size": 2.0}),
        ("skin dark", {"skin_tone": "dark"}),
        ("hair blonde", {"hair_colour": "blonde"}),
        ("hair red", {"hair_colour": "red"}),
        ("eyes blue", {"eye_colour": "blue"}),
        ("curly", {"hairstyle": "curly"}),
        ("fringe", {"hairstyle": "fringe"}),
        ("glasses", {"glasses": True}),
        ("full beard", {"beard": "full"}),
        ("background", {"background": "purple"}),
        ("woman", {"gender": "f", "hair_length": "long", "beard": "none"}),
        ("image 2", None),
    ]
    images = [
        render_face(base, 1, size) if c is None else render_face(replace(base, **c), 0, size)
        for _, c in changes
    ]
    make_grid(images, ncols=7, captions=[n for n, _ in changes]).save(path, optimize=True)


def spectrograms(path: Path) -> None:
    """Spectrograms of a young woman's and an old man's voice, with their faces."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    people = [sample_speaker(0, i) for i in range(400)]
    pair = [
        next(p for p in people if p.gender == "f" and p.age <= 22),
        next(p for p in people if p.gender == "m" and p.age >= 75),
    ]
    fig, axes = plt.subplots(2, 2, figsize=(10, 5.2), gridspec_kw={"width_ratios": [1, 6]})
    for (face_ax, ax), p in zip(axes, pair, strict=True):
        wave = synthesize_clip(p, 0)
        v = voice_params(p)
        ax.specgram(wave, NFFT=512, Fs=16000, noverlap=512 - 160, cmap="magma", vmin=-110, vmax=-30)
        who = "young woman" if p.gender == "f" else "old man"
        ax.set_title(
            f"{who}, {p.age} y, size {p.size:+.1f}: F0 {v.f0_hz:.0f} Hz, "
            f"vocal tract {v.vtl_cm:.1f} cm, "
            f"breathiness {v.breathiness:.2f}",
            fontsize=9,
        )
        ax.set_ylabel("Hz")
        face_ax.imshow(np.asarray(render_face(p, 0, 96)))
        face_ax.axis("off")
    axes[1, 1].set_xlabel("seconds")
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)


def figures(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    face_grid(folder / "synthvox_faces.png")
    aging_grid(folder / "synthvox_aging.png")
    attribute_grid(folder / "synthvox_attributes.png")
    spectrograms(folder / "synthvox_spectrograms.png")
    for p in sorted(folder.glob("synthvox_*.png")):
        print(f"{p}: {p.stat().st_size // 1024} KB")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--speakers", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--keep", type=Path, help="generate here and keep the dataset")
    parser.add_argument("--figures", type=Path, help="only write the docs pictures to this folder")
    args = parser.parse_args()
    if args.figures:
        return figures(args.figures)

    tmp = None if args.keep else tempfile.mkdtemp(prefix="synthvox-bench-")
    out = args.keep or Path(tmp) / "synthvox"
    cmd = [
        sys.executable,
        "-m",
        "scldm",
        "prepare",
        "synthvox",
        "--out",
        str(out),
        "--speakers",
        str(args.speakers),
        "--clips-per-speaker",
        "4",
        "--faces-per-speaker",
        "2",
        "--image-size",
        "64",
        "--workers",
        str(args.workers),
    ]
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - start
    people = [sample_speaker(0, i) for i in range(64)]
    clip_ms = per_item_ms(lambda i: synthesize_clip(people[i], 1), 40)
    face_ms = {
        s: per_item_ms(lambda i, s=s: render_face(people[i], 1, s), 40) for s in (64, 128, 256)
    }
    probe = audio_probe(out)
    test_speakers = len({r["speaker_id"] for r in read_manifest(out, split="test")})
    above = face_only_above_chance(probe, test_speakers)
    size_mb = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 2**20
    if tmp:
        shutil.rmtree(tmp)

    n = args.speakers
    lines = [
        f"# SynthVox: generation speed and the audio probe ({n} speakers × 4 clips × 2 faces, "
        "64 px)",
        "",
        f"{os.cpu_count()} cores ({platform.machine()}), Python {platform.python_version()}, "
        f"{args.workers} workers. Wall time of `scldm prepare synthvox` in a fresh process "
        "(imports, progress bar and manifest included).",
        "",
        "| what | time |",
        "|---|---:|",
        f"| whole dataset: {n} speakers, {4 * n} clips of 6 s, {2 * n} faces "
        f"({size_mb:.0f} MiB) | {wall:.0f} s |",
        f"| one 6 s clip, one process | {clip_ms:.1f} ms |",
        *(f"| one face at {s} px, one process | {ms:.1f} ms |" for s, ms in face_ms.items()),
        "",
        "## Audio probe (linear probes on spectrogram statistics; test split: "
        f"{probe.clips['test']} clips "
        f"of {test_speakers} speakers)",
        "",
        probe.table(),
        "",
        f"Face-only attributes above chance (> majority + 2 SE at {test_speakers} speakers): "
        f"{', '.join(above) if above else 'none'}.",
    ]
    table = "\n".join(lines) + "\n"
    print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "synthvox.md").write_text(table)


if __name__ == "__main__":
    main()
