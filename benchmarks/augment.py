"""Cost of the sim-to-real audio augmentation (`scldm.audio.augmentation`) on one CPU thread.

Each effect alone (probability 1: every clip gets it) and a realistic mix, on a batch of
speech-like clips (harmonics of a voice f0 at -23 dBFS, as SynthVox renders) at 16 kHz, as the
training loop would call it on a batch. Milliseconds of CPU time per clip (process time, so
it holds whatever else runs on the machine), the mean over `--repeats` calls with different
seeds after one warm-up call; wall-clock ms per clip beside it. For scale: the spectrogram
front end (`SpectrogramFrontend`, its defaults) on the same batch.

    python benchmarks/augment.py [--batch 32] [--seconds 2 6] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import torch

from scldm.audio import SAMPLE_RATE, SpectrogramFrontend, augment
from scldm.config import AugmentConfig

RESULTS = Path(__file__).parent / "results"
MIX = AugmentConfig(reverb_p=0.3, noise_p=0.5, gain_p=0.5, telephone_p=0.1, codec_p=0.2)
CASES = {
    "reverb (RT60 0.2-1 s)": AugmentConfig(reverb_p=1.0),
    "noise (coloured or babble)": AugmentConfig(noise_p=1.0),
    "gain + clipping": AugmentConfig(gain_p=1.0),
    "8 kHz recording (narrowband)": AugmentConfig(narrowband_p=1.0),
    "telephone (8 kHz, band, μ-law)": AugmentConfig(telephone_p=1.0),
    "codec mp3": AugmentConfig(codec_p=1.0, codecs=("mp3",)),
    "codec vorbis": AugmentConfig(codec_p=1.0, codecs=("vorbis",)),
    "mix: reverb .3, noise .5, gain .5, telephone .1, codec .2": MIX,
}


def speech_like(batch: int, seconds: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    t = torch.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    f0 = 90 + 150 * torch.rand(batch, 1, generator=g)
    wave = sum(torch.sin(2 * torch.pi * f0 * h * t) / h for h in range(1, 15))
    wave = wave * (1 + 0.8 * torch.sin(2 * torch.pi * 3 * t))
    return wave * 10 ** (-23 / 20) / wave.pow(2).mean(-1, keepdim=True).sqrt()


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    for line in cpuinfo.read_text().splitlines() if cpuinfo.exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def timed(fn: Callable[[int], object], repeats: int) -> tuple[float, float]:
    """Mean (CPU s, wall s) of fn(seed) over `repeats` seeds, after a warm-up call."""
    fn(-1)
    cpu, wall = time.process_time(), time.perf_counter()
    for seed in range(repeats):
        fn(seed)
    return (time.process_time() - cpu) / repeats, (time.perf_counter() - wall) / repeats


def measure(wave: torch.Tensor, repeats: int) -> dict[str, tuple[float, float]]:
    """(CPU s, wall s) per call of each case, and of the front end, on the batch `wave`."""
    costs = {}
    for name, cfg in CASES.items():

        def call(seed: int, cfg: AugmentConfig = cfg) -> torch.Tensor:
            return augment(wave, SAMPLE_RATE, cfg, torch.Generator().manual_seed(seed + 1))

        costs[name] = timed(call, repeats)
    frontend = SpectrogramFrontend(segment_seconds=wave.shape[-1] / SAMPLE_RATE)
    with torch.no_grad():
        costs["for scale: SpectrogramFrontend (its defaults) on the batch"] = timed(
            lambda _: frontend(wave), repeats
        )
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seconds", type=float, nargs="+", default=[2.0, 6.0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--note", default="", help="a line about the machine's other load")
    args = parser.parse_args()
    torch.set_num_threads(1)
    load_start = os.getloadavg()[0]

    rows: dict[str, list[tuple[float, float]]] = {}
    for seconds in args.seconds:
        for name, cost in measure(speech_like(args.batch, seconds), args.repeats).items():
            rows.setdefault(name, []).append(cost)

    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    header = " | ".join(f"{s:g} s: CPU ms / clip | wall ms / clip" for s in args.seconds)
    lines = [
        "# Audio augmentation: cost per clip on one CPU thread",
        "",
        f"`python benchmarks/augment.py`; {platform.machine()}, {os.cpu_count()} cores, "
        f"{cpu_model()}, Python {platform.python_version()}, torch "
        f"{torch.__version__}, torch.set_num_threads(1); {when}. Batch {args.batch} at "
        f"{SAMPLE_RATE} Hz, the mean over {args.repeats} seeded calls after a warm-up. Load "
        f"average {load_start:.2f} at the start, {os.getloadavg()[0]:.2f} at the end"
        + (f"; {args.note}" if args.note else "")
        + ". CPU time counts this process only; wall time also waits for other jobs.",
        "",
        f"| effect (probability 1 unless given) | {header} |",
        "|---|" + "---:|---:|" * len(args.seconds),
    ]
    for name, costs in rows.items():
        cells = " | ".join(
            f"{1e3 * cpu / args.batch:.2f} | {1e3 * wall / args.batch:.2f}" for cpu, wall in costs
        )
        lines.append(f"| {name} | {cells} |")
    table = "\n".join(lines) + "\n"
    print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "augment_cpu.md").write_text(table)


if __name__ == "__main__":
    main()
