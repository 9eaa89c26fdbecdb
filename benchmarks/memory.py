"""Peak memory of each command, summed over all its processes (PSS, loader workers included).

    python benchmarks/memory.py --preset tiny                     # builds its own tiny SynthVox
    python benchmarks/memory.py --preset small --data data/sv2k   # SynthVox 2,000 speakers
    python benchmarks/memory.py --preset small --data data/sv2k --steps 300 --only pretrain

Runs `scldm --help` (a command's start), `prepare`, `synthvox-oracle`, `pretrain`, `prior`,
`train`, `generate` (a 6 s clip and a one-hour file) and `evaluate` one after the other in
WORKDIR (default: a temporary folder), each as its own process, and samples every `--interval`
s the proportional set size (PSS: shared pages divided among the processes that map them, so
memory shared with a loader worker counts once) of the command's process and all its
children. Training runs are cut to `--steps` steps; memory that grows over a run shows as the
PSS at the end of the run above its value halfway.

Reports per command: peak PSS summed over the processes, the largest number of processes, PSS
halfway and at the last sample, wall time, and the target where the issue sets one (pretrain
and train at small ≤ 4 GB in all, generate of one clip ≤ 1.5 GB, the one-hour file within
10 % of the 6 s clip, --help ≤ 0.2 GB). Writes its preset's section of
benchmarks/results/memory.md. Linux
only (/proc via psutil). Run it alone: other processes do not change PSS, but slow the runs.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil
import soundfile as sf

RESULTS = Path(__file__).parent / "results"
MB, GB = 2**20, 2**30
# the targets (issue 24): bytes summed over the processes of a command
TARGETS = {"pretrain": 4 * GB, "train": 4 * GB, "generate 6 s": 1.5 * GB, "--help": 0.2 * GB}


@dataclass
class Trace:
    """PSS samples of one command: (seconds since start, summed PSS, number of processes)."""

    samples: list[tuple[float, int, int]] = field(default_factory=list)

    @property
    def peak(self) -> int:
        return max((s[1] for s in self.samples), default=0)

    @property
    def processes(self) -> int:
        return max((s[2] for s in self.samples), default=0)

    def at(self, fraction: float) -> int:
        """Summed PSS of the sample nearest `fraction` of the run."""
        if not self.samples:
            return 0
        end = self.samples[-1][0]
        return min(self.samples, key=lambda s: abs(s[0] - fraction * end))[1]


def _pss(proc: psutil.Process) -> int:
    try:
        return proc.memory_full_info().pss
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return 0


def measure(argv: list[str], log: Path, interval: float) -> tuple[Trace, float, int]:
    """Run argv, sampling the summed PSS of its process tree; (trace, seconds, exit status)."""
    trace, start = Trace(), time.perf_counter()
    with open(log, "w") as out:
        child = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        root = psutil.Process(child.pid)
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                try:
                    procs = [root, *root.children(recursive=True)]
                except psutil.NoSuchProcess:
                    break
                total = sum(_pss(p) for p in procs)
                if total:
                    trace.samples.append((time.perf_counter() - start, total, len(procs)))
                done.wait(interval)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        status = child.wait()
        done.set()
        sampler.join()
    return trace, time.perf_counter() - start, status


def plan(args: argparse.Namespace, work: Path) -> list[tuple[str, list[str]]]:
    """(name, argv) of every command, in order; each reads what the ones before it wrote."""
    scldm = [sys.executable, "-m", "scldm"]
    data = args.data or work / "data"
    tiny = args.preset == "tiny"
    steps = str(args.steps)
    cut = ["--set", f"train.max_steps={steps}", "--set", f"train.eval_every={steps}"]
    cut += ["--set", f"train.save_every={steps}"]
    commands: list[tuple[str, list[str]]] = [("--help", [*scldm, "--help"])]
    if args.data is None:
        size = ["--image-size", "32"] if tiny else []
        commands.append(
            (
                "prepare",
                [*scldm, "prepare", "synthvox", "--out", str(data), "--speakers",
                 str(args.speakers), *size],
            )
        )  # fmt: skip
    commands += [
        (
            "synthvox-oracle",
            [*scldm, "synthvox-oracle", "--data", str(data), "--out", str(work / "oracle"),
             "--steps", steps],
        ),
        (
            "pretrain",
            [*scldm, "pretrain", "--data", str(data), "--out", str(work / "enc"), "--config",
             args.preset, *cut],
        ),
        ("prior", [*scldm, "prior", "--encoders", str(work / "enc"), "--data", str(data)]),
        (
            "train",
            [*scldm, "train", "--encoders", str(work / "enc"), "--data", str(data), "--out",
             str(work / "ldm"), "--config", args.preset, *cut, "--set",
             f"decoder.steps={min(args.steps, 50)}", "--set",
             f"decoder.adversarial.start_step={min(args.steps, 50) // 2}"],
        ),
    ]  # fmt: skip
    pipeline = str(work / "ldm" / "pipeline")
    for name, wav in (("generate 6 s", "clip.wav"), ("generate 1 h", "hour.wav")):
        commands.append(
            (
                name,
                [*scldm, "generate", str(work / wav), "--model", pipeline, "-o",
                 str(work / f"faces-{wav[:-4]}")],
            )
        )  # fmt: skip
    commands.append(
        (
            "evaluate",
            [*scldm, "evaluate", "--model", pipeline, "--data", str(data), "--oracle",
             str(work / "oracle"), "--encoders", str(work / "enc"), "-o", str(work / "eval"),
             "--max-clips", str(args.max_clips)],
        )
    )  # fmt: skip
    return commands


def write_voices(work: Path) -> None:
    """clip.wav (6 s) and hour.wav (one hour) of a voice-like tone: what `generate` keeps of
    both is the first 6 s, so their memory should match."""
    rate = 16000
    t = np.arange(6 * rate) / rate
    clip = 0.3 * np.sin(2 * np.pi * 140 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
    sf.write(work / "clip.wav", clip.astype(np.float32), rate, subtype="PCM_16")
    with sf.SoundFile(work / "hour.wav", "w", rate, 1, subtype="PCM_16") as f:
        for _ in range(600):  # 600 × 6 s
            f.write(clip.astype(np.float32))


def report(rows: list[tuple[str, Trace, float, int]], args: argparse.Namespace) -> str:
    lines = [
        f"# Memory: `{args.preset}`" + (f" on {args.data}" if args.data else ""),
        "",
        f"`python benchmarks/memory.py {' '.join(sys.argv[1:])}`, {time.strftime('%Y-%m-%d')}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}. Training cut to "
        f"{args.steps} steps. PSS summed over the command's processes, sampled every "
        f"{args.interval} s. PSS splits shared pages (torch's libraries: ~0.4 GB) among every "
        "process that maps them, so the same command reads up to that much lower while other "
        "Python processes with torch run.",
        "",
        "| command | peak PSS (MB) | processes | PSS halfway (MB) | PSS at the end (MB) | "
        "time (s) | target | exit |",
        "|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for name, trace, seconds, status in rows:
        target = TARGETS.get(name) if args.preset == "small" or name == "--help" else None
        if name == "generate 1 h":
            clip = next((t for n, t, *_ in rows if n == "generate 6 s"), None)
            target = 1.1 * clip.peak if clip else None
        verdict = ""
        if target:
            verdict = f"≤ {target / MB:.0f} MB: {'met' if trace.peak <= target else 'MISSED'}"
        lines.append(
            f"| {name} | {trace.peak / MB:.0f} | {trace.processes} | {trace.at(0.5) / MB:.0f} | "
            f"{trace.at(1.0) / MB:.0f} | {seconds:.0f} | {verdict} | {status} |"
        )
    return "\n".join(lines) + "\n"


def replace_section(text: str, section: str) -> str:
    """`text` with the section of `section`'s preset (its heading's first `code` span)
    replaced, or appended: one results file holds a section per preset."""

    def preset(sec: str) -> str:
        return sec.splitlines()[0].split("`")[1]

    sections = ["# " + p.strip("\n") + "\n" for p in ("\n" + text).split("\n# ") if p.strip()]
    kept = [section if preset(sec) == preset(section) else sec for sec in sections]
    if preset(section) not in [preset(sec) for sec in sections]:
        kept.append(section)
    return "\n".join(kept)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", choices=("tiny", "small"), default="tiny")
    p.add_argument("--data", type=Path, help="a prepared SynthVox set (default: prepare one)")
    p.add_argument("--speakers", type=int, default=None, help="to prepare (tiny 24, small 2000)")
    p.add_argument("--steps", type=int, default=None, help="training steps (tiny 20, small 150)")
    p.add_argument("--max-clips", type=int, default=100, help="clips evaluate scores")
    p.add_argument("--only", help="comma-separated command names (default: all)")
    p.add_argument("--interval", type=float, default=0.25, help="seconds between samples")
    p.add_argument("--workdir", type=Path, help="default: a temporary folder, removed after")
    p.add_argument("--out", type=Path, help="default: benchmarks/results/memory.md")
    args = p.parse_args()
    small = args.preset == "small"
    args.speakers = args.speakers or (2000 if small else 24)
    args.steps = args.steps or (150 if small else 20)

    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        write_voices(work)
        only = set(args.only.split(",")) if args.only else None
        rows = []
        for name, argv in plan(args, work):
            if only and name.split()[0] not in only and name != "--help":
                continue
            log = work / f"{name.replace(' ', '_')}.log"
            trace, seconds, status = measure(argv, log, args.interval)
            rows.append((name, trace, seconds, status))
            print(f"{name}: peak {trace.peak / MB:.0f} MB in {trace.processes} process(es), "
                  f"{seconds:.0f} s, exit {status}", flush=True)  # fmt: skip
            if status != 0:
                tail = log.read_text().splitlines()[-15:]
                print(f"{name} failed; the end of its output:", *tail, sep="\n", file=sys.stderr)
                break
        table = report(rows, args)
    print(table)
    out = args.out or RESULTS / "memory.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(replace_section(out.read_text() if out.is_file() else "", table))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
