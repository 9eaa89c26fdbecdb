"""Memory of stage 2's latent cache when several processes of one machine train on it.

    python benchmarks/latent_cache.py       # 20,000 rows of `base` shapes; 1, 2, 4 processes
    python benchmarks/latent_cache.py --rows 5000 --procs 1 2

Writes a cache of `--rows` rows shaped as at `base` (latents 4 × 28 × 28 and tokens 9 × 512,
float32: 31 kB a row) with the same writer stage 2 uses (`RowFiles`), then starts P processes at
once, as `accelerate launch` does on one machine. Each reads every row once in shuffled batches
of 64 through `CachedPairs`, the way the stage-2 loader does, and then, while all of them still
hold the cache, reports its memory: RSS, USS (pages only it has) and PSS (shared pages divided
among the processes that map them, so the sum over processes counts a shared copy once).

Two ways of holding the cache are compared:
- `mapped`: the cache memory-mapped (stage 2 today);
- `loaded`: each process copies the whole cache into its memory first (stage 2 before issue 26).

Reports, per way and process count: the summed PSS, the largest USS, their increase over a
process that only imported torch, and the seconds a pass over the rows took. Writes
benchmarks/results/latent_cache.md. Linux only (/proc via psutil).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import tempfile
import time
from datetime import date
from pathlib import Path

import psutil
import torch

from scldm.training.diffusion import CachedPairs, as_batch
from scldm.training.latents import LatentCache, RowFiles, map_rows

RESULTS = Path(__file__).parent / "results"
SHAPES = {"latents": (4, 28, 28), "tokens": (9, 512)}  # base, float32


def write_cache(folder: Path, rows: int) -> dict:
    files, g = RowFiles(folder), torch.Generator().manual_seed(0)
    for start in range(0, rows, 1024):
        n = min(1024, rows - start)
        files.append({k: torch.randn(n, *shape, generator=g) for k, shape in SHAPES.items()})
    return files.close()


def _mb(n: int) -> float:
    return n / 2**20


def worker(folder: Path, layout: dict, how: str, barrier, results) -> None:
    torch.set_num_threads(1)
    base = psutil.Process().memory_full_info()
    tensors = map_rows(folder, layout)
    if how == "loaded":
        tensors = {k: v.clone() for k, v in tensors.items()}
    cache = LatentCache(path=folder, tensors=tensors, rows=[], speakers=[])
    loader = torch.utils.data.DataLoader(
        CachedPairs(cache, scale=1.0), batch_size=64, shuffle=True, collate_fn=as_batch
    )
    start = time.perf_counter()
    total = 0.0
    for latents, tokens in loader:
        total += float(latents[:, 0, 0, 0].sum() + tokens[:, 0, 0].sum())
    seconds = time.perf_counter() - start
    barrier.wait()  # every process holds the cache now
    info = psutil.Process().memory_full_info()
    results.put((info.pss, info.uss, info.rss, base.pss, base.uss, seconds))
    barrier.wait()  # measured: the others may let go


def measure(folder: Path, layout: dict, how: str, procs: int) -> dict:
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(procs), ctx.Queue()
    workers = [
        ctx.Process(target=worker, args=(folder, layout, how, barrier, results))
        for _ in range(procs)
    ]
    for w in workers:
        w.start()
    got = [results.get() for _ in workers]
    for w in workers:
        w.join()
    return {
        "pss": _mb(sum(r[0] for r in got)),
        "pss_added": _mb(sum(r[0] - r[3] for r in got)),
        "uss": _mb(max(r[1] for r in got)),
        "uss_added": _mb(max(r[1] - r[4] for r in got)),
        "seconds": max(r[5] for r in got),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=20_000, help="rows of the cache")
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2, 4], help="process counts")
    parser.add_argument("--workdir", type=Path, help="where the cache is written (a temp folder)")
    parser.add_argument("--out", type=Path, default=RESULTS / "latent_cache.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        folder = Path(tmp)
        layout = write_cache(folder, args.rows)
        size = _mb(sum(p.stat().st_size for p in folder.glob("*.bin")))
        rows = []
        for how in ("mapped", "loaded"):
            for procs in args.procs:
                r = measure(folder, layout, how, procs)
                rows.append((how, procs, r))
                print(
                    f"{how:7s} {procs} processes: PSS {r['pss']:.0f} MB in all "
                    f"(+{r['pss_added']:.0f} over torch alone), USS at most {r['uss']:.0f} MB "
                    f"(+{r['uss_added']:.0f}), a pass {r['seconds']:.1f} s",
                    flush=True,
                )
    lines = [
        f"# Latent cache memory: {args.rows:,} rows of `base` shapes ({size:.0f} MB)",
        "",
        f"`python benchmarks/latent_cache.py --rows {args.rows} --procs "
        f"{' '.join(map(str, args.procs))}`, {date.today()}, {platform.machine()}, "
        f"{os.cpu_count()} cores, one thread a process. Each process reads every row once in "
        "shuffled batches of 64 through `CachedPairs`; memory is measured while all of them "
        "still hold the cache. 'added' is over the same process before it opened the cache.",
        "",
        "| cache | processes | PSS summed (MB) | PSS added, summed (MB) | USS added, largest (MB) "
        "| a pass over the rows (s) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for how, procs, r in rows:
        lines.append(
            f"| {how} | {procs} | {r['pss']:.0f} | {r['pss_added']:.0f} | {r['uss_added']:.0f} "
            f"| {r['seconds']:.1f} |"
        )
    lines += [
        "",
        "`mapped`: stage 2 today (memory-mapped files, one page-cache copy for all processes); "
        "`loaded`: each process copying the cache into its memory, as stage 2 did before "
        "issue 26. The added memory of `mapped` does not grow with the processes; that of "
        "`loaded` grows with each. Scaled to VoxCeleb2 (1.1 M rows, 34 GB) on 8 GPUs: one "
        "34 GB page-cache copy instead of 8 × 34 GB.",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
