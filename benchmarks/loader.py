"""Stage-1 training data path per preset: samples/s per CPU core, and what one item costs.

    python benchmarks/loader.py                                   # tiny, small, base; 0-2 workers
    python benchmarks/loader.py --presets base --workers 0 2 --samples 2560
    python benchmarks/loader.py --label before --out /tmp/before.md   # a named run

The data: a generated VoxCeleb2 layout (`benchmarks/prepare.py`'s generator: 16 kHz mono m4a
of 6.5-9.5 s, 224 px JPEG faces) prepared once by `scldm prepare voxceleb` into
WORK/prepared (default data/benchmarks/loader; reused while its size matches). What training
reads is therefore what scldm prepare writes: 16-bit PCM wav of each clip's first 6 s and a
224 px JPEG (quality 95) — m4a is decoded once, by prepare, never by the loader.

Throughput: the encoder stage's loader as `scldm pretrain` builds it (SpeechFaceDataset over
the train split, SpeakerBatchSampler at the preset's batch size, `collate`, persistent workers
at low priority), plus what the main process does with each batch before the model: read it
once (a copy into buffers allocated once, as pin_memory or the copy to the GPU reads it) and
cut the training loop's random window (`train_crop_seconds`; on the GPU in training, on the CPU
here). The main process's share is reported apart: it is also the one that drives the GPU.
Each (preset, workers) runs in
a fresh process; after warm-up batches, `--samples` samples are timed. CPU seconds are summed
over the main process and its loader workers (psutil), so samples per CPU second — the rate
one core sustains — holds whatever else runs on the machine; the wall-clock rate does not.
Files are in the page cache: disk reads are not measured (the table gives bytes per sample).

Parts: each step of one item timed alone (CPU time), in this process, over `--items` clips:
audio decode (`load_audio`, the segment only), crop (loop to the segment + the training
loop's random window), face decode (`load_face`), resize (`center_crop_resize`), to tensor,
augment (stage 1 has none) and collate (per item of a batch). Writes the preset sections of
benchmarks/results/loader_cpu.md (notes below its marker are kept).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
REPO = Path(__file__).resolve().parents[1]
NOTES_MARKER = "<!-- notes: kept when the tables above are regenerated -->"


def make_dataset(work: Path, speakers: int, clips_per_speaker: int) -> Path:
    """The prepared dataset in WORK/prepared, generated and prepared on first use."""
    from prepare import make_raw_vox2, prepare_command  # benchmarks/prepare.py

    raw = make_raw_vox2(
        work / "raw", speakers=speakers, clips_per_speaker=clips_per_speaker, seconds=(6.5, 9.5)
    )
    out = work / "prepared"
    stamp = out / "raw-spec.json"
    spec = (work / "raw" / "spec.json").read_text()
    if not (stamp.is_file() and stamp.read_text() == spec):
        subprocess.run([*prepare_command(raw, out, os.cpu_count() or 1), "--overwrite"],
                       check=True, capture_output=True)  # fmt: skip
        stamp.write_text(spec)
    return out


def _setup(preset: str, data: Path, in_memory: bool = False):
    from scldm.audio import SpectrogramFrontend
    from scldm.config import EncoderStageConfig, load_config
    from scldm.data.datasets import SpeechFaceDataset
    from scldm.training.loop import crop_samples

    cfg = load_config(EncoderStageConfig, preset, stage="pretrain")
    frontend = SpectrogramFrontend(**cfg.frontend)
    ds = SpeechFaceDataset(data, "train", frontend=frontend, image_size=cfg.data.image_size)
    if in_memory:
        ds.load_into_memory(num_workers=0, progress=False)
    return cfg, frontend, ds, crop_samples(cfg.train_crop_seconds, frontend)


class _Endless:
    """`num_batches` batches of a SpeakerBatchSampler, epoch after epoch, as one iteration."""

    def __init__(self, sampler, num_batches: int) -> None:
        self.sampler, self.num_batches = sampler, num_batches

    def __iter__(self):
        n, epoch = 0, 0
        while True:
            self.sampler.set_epoch(epoch)
            for batch in self.sampler:
                if n == self.num_batches:
                    return
                yield batch
                n += 1
            epoch += 1

    def __len__(self) -> int:
        return self.num_batches


def _cpu_seconds(proc) -> tuple[float, float]:
    """CPU seconds of `proc` itself and of its live children (the loader workers)."""
    own = proc.cpu_times()
    workers = (p.cpu_times() for p in proc.children(recursive=True))
    return own.user + own.system, sum(t.user + t.system for t in workers)


def measure_loader(preset: str, workers: int, samples: int, data: Path, in_memory: bool) -> dict:
    """Samples/s and CPU seconds per sample of the training loader, after warm-up."""
    import psutil
    import torch
    from torch.utils.data import DataLoader

    import scldm
    from scldm.audio.files import random_crop
    from scldm.data.datasets import SpeakerBatchSampler, collate
    from scldm.training.loop import background_worker

    torch.manual_seed(0)
    cfg, _, ds, crop = _setup(preset, data, in_memory)
    batch_size = cfg.train.batch_size
    timed = max(1, samples // batch_size)
    warmup = 2 * max(1, workers) + 2  # worker start-up and a full prefetch queue
    sampler = SpeakerBatchSampler(ds.speaker_index, batch_size, seed=0)
    loader = DataLoader(
        ds,
        # batches beyond the timed ones, so the workers stay as far ahead at the end as at the start
        batch_sampler=_Endless(sampler, warmup + timed + 4 * max(1, workers)),
        collate_fn=collate,
        num_workers=workers,
        persistent_workers=workers > 0,
        worker_init_fn=background_worker if workers else None,
    )  # as `scldm pretrain` builds it (training/encoders.py)
    generator = torch.Generator().manual_seed(0)
    batches = iter(loader)
    staging = {k: v.clone() for k, v in next(batches).items() if k in ("waveform", "face")}
    for _ in range(warmup - 1):
        next(batches)
    me = psutil.Process()
    (main0, workers0), start = _cpu_seconds(me), time.perf_counter()
    for _ in range(timed):
        batch = next(batches)
        for key, buffer in staging.items():  # every byte read once, as the copy to the GPU does
            buffer.copy_(batch[key])
        if crop is not None:
            random_crop(staging["waveform"], crop, generator)
    wall = time.perf_counter() - start
    main, worker_cpu = (b - a for a, b in zip((main0, workers0), _cpu_seconds(me), strict=True))
    cpu = main + worker_cpu
    row = ds.rows[0]  # bytes a sample reads: the face JPEG and the wav up to the segment
    wav = min((data / row["audio"]).stat().st_size, 44 + 2 * ds.frontend.segment_samples)
    nbytes = 0 if in_memory else wav + (data / row["face"]).stat().st_size
    return {
        "preset": preset + (" (in memory)" if in_memory else ""),
        "workers": workers,
        "batch": batch_size,
        "samples": timed * batch_size,
        "samples_per_s": timed * batch_size / wall,
        "cpu_ms_per_sample": cpu / (timed * batch_size) * 1e3,
        "main_ms_per_sample": main / (timed * batch_size) * 1e3,
        "source": str(Path(scldm.__file__).parents[1]),
        "kb_per_sample": nbytes / 1e3,
        "image": cfg.data.image_size,
        "audio_s": cfg.frontend.get("segment_seconds", 6.0),
    }


def measure_parts(preset: str, items: int, data: Path) -> dict:
    """Milliseconds per item of each step of the data path, each timed alone."""
    import torch

    from scldm.audio.files import load_audio, loop_to_length, random_crop
    from scldm.data.datasets import collate
    from scldm.faces import center_crop_resize, load_face, to_tensor

    torch.manual_seed(0)
    cfg, frontend, ds, crop = _setup(preset, data)
    fc, size = frontend.config, cfg.data.image_size
    rows = ds.rows[:items]
    parts = dict.fromkeys(("audio decode", "crop", "face decode", "resize", "to tensor"), 0.0)
    clock = time.process_time  # CPU time: holds while other processes share the cores
    for _sweep in range(2):  # the first warms caches and imports; the second is kept
        parts = dict.fromkeys(parts, 0.0)
        for row in rows:
            t0 = clock()
            wave = load_audio(
                ds.root / row["audio"], sample_rate=fc.sample_rate, max_seconds=fc.segment_seconds
            )
            t1 = clock()
            wave = torch.from_numpy(loop_to_length(wave, frontend.segment_samples))
            t2 = clock()
            img = load_face(ds.root / row["face"])
            t3 = clock()
            img = center_crop_resize(img, size)
            t4 = clock()
            to_tensor(img)
            t5 = clock()
            for key, dt in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4), strict=True):
                parts[key] += dt
        start = clock()
        for i in range(len(rows)):
            ds[i]
        getitem = clock() - start
    parts = {k: v / len(rows) * 1e3 for k, v in parts.items()}
    batch = [ds[i] for i in range(min(cfg.train.batch_size, len(ds)))]
    repeats = max(1, 256 // len(batch))
    generator = torch.Generator().manual_seed(0)
    start = clock()
    for _ in range(repeats):
        stacked = collate(batch)
    parts["collate"] = (clock() - start) / repeats / len(batch) * 1e3
    if crop is not None:
        start = clock()
        for _ in range(repeats):
            random_crop(stacked["waveform"], crop, generator)
        parts["crop"] += (clock() - start) / repeats / len(batch) * 1e3
    parts["augment"] = 0.0  # stage 1 draws no face augmentation
    # what the audio would cost if training read the corpus's m4a (one ffmpeg process a clip)
    # instead of the wav scldm prepare wrote: CPU of this process and of the ffmpeg children
    m4a = sorted((data.parent / "raw").glob("vox2_dev_aac/aac/*/*/*.m4a"))[:50]
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = clock()
    for path in m4a:
        load_audio(path, sample_rate=fc.sample_rate, max_seconds=fc.segment_seconds)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    child = after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime
    m4a_ms = (clock() - start + child) / max(1, len(m4a)) * 1e3
    return {"preset": preset, "parts": parts, "getitem": getitem / len(rows) * 1e3, "m4a": m4a_ms}


def measure_pages(megabytes: int = 64, repeats: int = 5) -> dict:
    """CPU µs per 4 KiB page of writing `megabytes` of memory: already mapped, freshly
    allocated (each page faults in on first touch), and fresh shared memory as a loader
    worker's `collate` allocates it for every batch. Page faults cost more in a VM."""
    import torch

    size = megabytes * 2**20
    pages = size / 4096
    mapped = torch.empty(size // 4)

    def shared() -> torch.Tensor:
        first = torch.empty(1)
        return first.new(first.untyped_storage()._new_shared(size, device="cpu"))

    costs = {}
    for name, make in (("mapped", lambda: mapped), ("fresh", lambda: torch.empty(size // 4)),
                       ("fresh shared", shared)):  # fmt: skip
        make().fill_(1.0)
        start = time.process_time()
        for _ in range(repeats):
            make().fill_(1.0)
        costs[name] = (time.process_time() - start) / repeats / pages * 1e6
    return {"pages": costs}


def median_run(runs: list[dict]) -> dict:
    """The run of median CPU time per sample, with the range over all of them."""
    ordered = sorted(runs, key=lambda r: r["cpu_ms_per_sample"])
    cpu = [r["cpu_ms_per_sample"] for r in ordered]
    return {**ordered[len(ordered) // 2], "cpu_range": (cpu[0], cpu[-1]), "repeats": len(runs)}


def median_parts(runs: list[dict]) -> dict:
    """Every number of repeated part timings replaced by its median over the repeats."""

    def med(values: list) -> object:
        if isinstance(values[0], dict):
            return {k: med([v[k] for v in values]) for k in values[0]}
        if isinstance(values[0], float | int):
            return statistics.median(values)
        return values[0]

    return med(runs)


# --- Report ----------------------------------------------------------------------------------


PART_ORDER = ("audio decode", "crop", "face decode", "resize", "to tensor", "augment", "collate")


def section(label: str, args: argparse.Namespace, loads: list[dict], parts: list[dict]) -> str:
    load = os.getloadavg()[0]
    lines = [
        f"# Loader: `{label}`",
        "",
        f"`python benchmarks/loader.py {' '.join(sys.argv[1:])}`; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{time.strftime('%Y-%m-%d %H:%M %Z')}, OMP_NUM_THREADS="
        f"{os.environ.get('OMP_NUM_THREADS', 'unset')}, load average {load:.2f} at the end. "
        f"Data: {args.speakers} speakers × {args.clips_per_speaker} clips prepared by "
        "`scldm prepare voxceleb` (6 s 16-bit wav + 224 px JPEG q95 per clip), train split. "
        f"scldm from {', '.join(sorted({r['source'] for r in loads}) or ['-'])}.",
        "",
        f"Throughput, the median of {args.repeats} runs (range in brackets) by CPU time per "
        "sample (samples per CPU s: one core's rate, from the CPU time of the main process and "
        "its workers; samples/s: wall clock, depends on what else ran):",
        "",
        "| preset | faces | audio | batch | workers | samples/s | CPU ms / sample "
        "| of which main process | samples per CPU s | kB read / sample |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in loads:
        lines.append(
            f"| {r['preset']} | {r['image']} px | {r['audio_s']:g} s | {r['batch']} | "
            f"{r['workers']} | {r['samples_per_s']:.0f} | {r['cpu_ms_per_sample']:.2f} "
            f"({r['cpu_range'][0]:.2f}-{r['cpu_range'][1]:.2f}) | "
            f"{r['main_ms_per_sample']:.2f} | {1e3 / r['cpu_ms_per_sample']:.0f} | "
            f"{r['kb_per_sample']:.0f} |"
        )
    if parts:
        lines += [
            "",
            f"One item, each part timed alone (CPU ms, mean over {args.items} clips, median of "
            f"{args.repeats} runs, in one "
            "process; collate: `torch.stack` in-process, as with 0 workers):",
            "",
            "| preset | " + " | ".join(PART_ORDER) + " | sum | `dataset[i]` + collate |",
            "|---|" + "---:|" * (len(PART_ORDER) + 2),
        ]
        pages = next((r["pages"] for r in parts if "pages" in r), None)
        parts = [r for r in parts if "parts" in r]
        for r in parts:
            p = r["parts"]
            total = sum(p.values())
            cells = [f"{p[k]:.3f} ({p[k] / total:.0%})" for k in PART_ORDER]
            lines.append(
                f"| {r['preset']} | " + " | ".join(cells) + f" | {total:.3f} | "
                f"{r['getitem'] + p['collate']:.3f} |"
            )
        m4a = ", ".join(f"{r['preset']} {r['m4a']:.1f} ms" for r in parts)
        lines += [
            "",
            "The loader decodes no m4a: scldm prepare wrote each clip's first 6 s as wav once. "
            "Reading the corpus's m4a instead (`load_audio`, one ffmpeg process a clip, CPU of "
            f"both processes) would cost per item: {m4a}.",
        ]
        if pages:
            lines += [
                "",
                "Writing memory, CPU µs per 4 KiB page: "
                + ", ".join(f"{k} {v:.2f}" for k, v in pages.items())
                + ". A base batch is 63 MB of float32 (faces 38.5, waveforms 24.6): every batch "
                "from a worker is fresh shared memory, written by the worker and mapped again "
                "by the main process.",
            ]
    return "\n".join(lines) + "\n"


def replace_section(text: str, new: str) -> str:
    """`text` with the section of the same label (its heading's `code` span) replaced, or
    `new` appended: the results file holds one section per labelled run."""
    body, _, notes = text.partition(NOTES_MARKER)

    def label(sec: str) -> str:
        heading = sec.splitlines()[0]
        return heading.split("`")[1] if heading.count("`") >= 2 else heading

    sections = ["# " + p.strip("\n") + "\n" for p in ("\n" + body).split("\n# ") if p.strip()]
    kept = [new if label(s) == label(new) else s for s in sections]
    if label(new) not in [label(s) for s in sections]:
        kept.append(new)
    return "\n".join(kept) + "\n" + NOTES_MARKER + (notes or "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["tiny", "small", "base"])
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--samples", type=int, default=1920, help="timed samples per run")
    p.add_argument("--items", type=int, default=200, help="clips for the per-part timings")
    p.add_argument("--repeats", type=int, default=3, help="runs of each measurement")
    p.add_argument("--speakers", type=int, default=150)
    p.add_argument("--clips-per-speaker", type=int, default=4)
    p.add_argument("--skip-parts", action="store_true")
    p.add_argument(
        "--in-memory", action="store_true", help="also time small (data.in_memory) from RAM"
    )
    p.add_argument("--label", default="current", help="the results section to write")
    p.add_argument("--work", type=Path, default=REPO / "data" / "benchmarks" / "loader",
                   help="cache folder for the generated and prepared data")  # fmt: skip
    p.add_argument("--out", type=Path, default=RESULTS / "loader_cpu.md")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: one measurement, as JSON
    args = p.parse_args()
    data = args.work / "prepared"
    if args.one:
        kind, preset, workers = args.one.split(":")
        if kind == "parts":
            result = measure_parts(preset, args.items, data)
        elif kind == "pages":
            result = measure_pages()
        else:
            result = measure_loader(preset, int(workers), args.samples, data, kind == "memory")
        print(json.dumps(result))
        return
    start = time.perf_counter()
    make_dataset(args.work, args.speakers, args.clips_per_speaker)
    print(f"data: {data} ({time.perf_counter() - start:.0f} s to make or find)", flush=True)
    runs = [f"load:{preset}:{w}" for preset in args.presets for w in args.workers]
    if args.in_memory and "small" in args.presets:
        runs += [f"memory:small:{w}" for w in args.workers]
    if not args.skip_parts:
        runs += [f"parts:{preset}:0" for preset in args.presets] + ["pages::"]
    results: dict[str, list[dict]] = {run: [] for run in runs}
    for _ in range(args.repeats):  # rounds over every run, so a slow spell touches them all
        for run in runs:
            cmd = [sys.executable, __file__, "--one", run, "--work", str(args.work)]
            cmd += ["--samples", str(args.samples), "--items", str(args.items)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                sys.exit(f"{run} failed:\n{proc.stderr[-3000:]}")
            results[run].append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(run, results[run][-1], flush=True)
    loads = [median_run(results[run]) for run in runs if run.startswith(("load", "memory"))]
    parts = [median_parts(results[run]) for run in runs if run.startswith(("parts", "pages"))]
    table = section(args.label, args, loads, parts)
    print(table)
    old = args.out.read_text() if args.out.is_file() else ""
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(replace_section(old, table))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
