"""The pieces of a training loop every stage shares (STYLE.md §4.7): the accelerator and run
folder, the train state, the batch stream, the optimizer step, the step cadence, and a logging
window that moves its sums to the host only when it reports."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration
from tqdm.auto import tqdm

from scldm.audio import MelFrontend, SpectrogramFrontend
from scldm.config import DataConfig, TrainConfig, config_to_dict, save_config
from scldm.data.datasets import SpeechFaceDataset
from scldm.errors import InputError
from scldm.io import save_figure, write_text
from scldm.optim import set_lr

log = logging.getLogger("scldm.train")
SCALARS = "scalars.jsonl"


def make_accelerator(train: TrainConfig, run_dir: Path, *, cpu: bool = False) -> Accelerator:
    """The run's Accelerator: precision, accumulation, trackers, run folder; backend flags."""
    mixed = train.mixed_precision if torch.cuda.is_available() else "no"
    tracker = train.log_with
    if tracker == "tensorboard" and importlib.util.find_spec("tensorboard") is None:
        log.warning("tensorboard is not installed: scalars go to RUN/%s only", SCALARS)
        tracker = None
    accelerator = Accelerator(
        mixed_precision=mixed,
        gradient_accumulation_steps=train.grad_accum_steps,
        log_with=tracker,
        project_config=ProjectConfiguration(
            project_dir=str(run_dir), logging_dir=str(run_dir / "logs")
        ),
        cpu=cpu,
    )
    if torch.cuda.is_available():  # set here, never at import (STYLE §4.7)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return accelerator


def setup_run(accelerator: Accelerator, cfg: Any, run_dir: Path, project: str) -> None:
    """Write the resolved config, start trackers and a text log (main process only)."""
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        for old in [h for h in log.handlers if isinstance(h, logging.FileHandler)]:
            log.removeHandler(old)  # an earlier run in this process
            old.close()
        handler = logging.FileHandler(run_dir / "log.txt")
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        log.addHandler(handler)
    log.setLevel(logging.INFO if accelerator.is_main_process else logging.ERROR)
    if accelerator.log_with:  # the trackers make_accelerator could start
        flat = {k: str(v) for k, v in _flatten(config_to_dict(cfg)).items()}
        accelerator.init_trackers(project, config=flat)


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


@dataclass
class TrainState:
    """What the loop counts; saved with every checkpoint."""

    step: int = 0
    samples: int = 0

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step, "samples": self.samples}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.step, self.samples = int(state["step"]), int(state["samples"])


def global_batch(train: TrainConfig, accelerator: Accelerator) -> int:
    """Samples per optimizer step over all processes."""
    return train.batch_size * train.grad_accum_steps * accelerator.num_processes


def due(step: int, every: int, max_steps: int | None = None) -> bool:
    """Whether a periodic action runs after `step`: every `every` steps (never when `every` is
    0), and at `max_steps`."""
    return (every > 0 and step % every == 0) or step == max_steps


def progress_bar(accelerator: Accelerator, train: TrainConfig, start: int, desc: str) -> Any:
    """One tqdm bar over the optimizer steps, on the local main process only."""
    return tqdm(
        total=train.max_steps,
        initial=start,
        desc=desc,
        dynamic_ncols=True,
        disable=not accelerator.is_local_main_process,
    )


def background_worker(worker_id: int) -> None:
    """DataLoader `worker_init_fn`: run loader workers at low CPU priority, so that on a machine
    whose cores are all busy decoding files fills the gaps instead of preempting the training
    step (measurements: benchmarks/results/pretrain_cpu.md). Stop signals in the workers of a
    guarded run: scldm.training.guard."""
    if hasattr(os, "nice"):
        os.nice(10)


def batch_stream(
    loader: Any, sampler: Any, start_step: int, accelerator: Accelerator
) -> Iterator[Any]:
    """Endless batches, epoch after epoch, resuming exactly where `start_step` left off.

    The sampler's order depends only on its seed and epoch, so a resumed run skips the batches
    of the current epoch it already saw and then continues identically.
    """
    per_epoch = len(loader)
    if per_epoch == 0:
        raise InputError(None, "the training set yields no batch; lower train.batch_size")
    epoch, skip = divmod(start_step, per_epoch)
    while True:
        sampler.set_epoch(epoch)
        yield from accelerator.skip_first_batches(loader, skip) if skip else loader
        epoch, skip = epoch + 1, 0


def batch_everywhere(batch: Any, accelerator: Accelerator) -> bool:
    """Whether every process has a batch this step (`collate` gives None when all of a batch's
    clips were unreadable). When one has none, all skip the step together: a process that
    skipped alone would leave the others waiting in a collective for ever."""
    have = batch is not None
    if accelerator.num_processes == 1:
        return have
    flag = torch.tensor([float(have)], device=accelerator.device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
    return bool(flag.item())


def maybe_split(
    data: DataConfig, frontend: SpectrogramFrontend | MelFrontend, split: str
) -> SpeechFaceDataset | None:
    """The dataset of `split`, or None (logged) when the prepared folder has no such split."""
    try:
        return SpeechFaceDataset(data.root, split, frontend=frontend, image_size=data.image_size)
    except InputError:
        log.info("no %s split in %s: skipping what needs it", split, data.root)
        return None


def crop_samples(seconds: float | None, frontend: SpectrogramFrontend | MelFrontend) -> int | None:
    """The training window (`train_crop_seconds`) in samples, or None for the whole segment."""
    if seconds is None:
        return None
    segment = frontend.config.segment_seconds
    if not 0 < seconds <= segment:
        raise InputError(
            None, f"train_crop_seconds {seconds} must lie in (0, segment_seconds {segment}]"
        )
    return round(seconds * frontend.config.sample_rate)


def step_generator(
    seed: int, state: TrainState, accelerator: Accelerator | None = None, micro: int = 0
) -> torch.Generator:
    """A generator seeded by (seed, step, rank, micro-step), for a step's random crops and
    flips: a resumed run draws what an uninterrupted one would, with no generator state to
    save. Without an accelerator, the same on every process (rank 0's): for draws made for the
    global batch, of which each process keeps its rows. `micro` numbers the micro-batches of a
    step under gradient accumulation."""
    rank = accelerator.process_index if accelerator is not None else 0
    return torch.Generator().manual_seed(
        (seed * 1_000_003 + state.step) * 1009 + rank + micro * 1_000_000_007
    )


def optimizer_step(
    accelerator: Accelerator,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    lr_factor: float,
    grad_clip: float,
) -> dict[str, torch.Tensor]:
    """After `accelerator.backward`, inside `accumulate`: clip the gradients when they are
    synchronised, set the LR, step and zero the gradients (the prepared optimizer skips the
    step between accumulation boundaries). Returns {"grad_norm": norm} when clipped (grad_clip
    > 0), else {}."""
    logs = {}
    if accelerator.sync_gradients and grad_clip > 0:
        logs["grad_norm"] = accelerator.clip_grad_norm_(model.parameters(), grad_clip)
    set_lr(optimizer, lr_factor)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return logs


class LogWindow:
    """Sums of the loop's scalars over the micro-batches since the last report.

    `add` keeps the sums on the accelerator's device (float64 where it exists), so the loop
    never waits for the device; `report` moves their means to the host, averaged over processes.
    """

    def __init__(self, accelerator: Accelerator, run_dir: Path, batch_size: int, bar: Any):
        self.accelerator, self.run_dir = accelerator, run_dir
        self.batch_size, self.bar = batch_size, bar
        self.dtype = torch.float32 if accelerator.device.type == "mps" else torch.float64
        self._reset()

    def _reset(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}  # per key: a term may join mid-window (the GAN's start)
        self.count, self.tick = 0, time.perf_counter()

    def add(self, logs: Mapping[str, Any]) -> None:
        """One micro-batch's scalars (tensors or numbers)."""
        for key, value in logs.items():
            value = value.detach() if torch.is_tensor(value) else value
            value = torch.as_tensor(value, dtype=self.dtype, device=self.accelerator.device)
            self.sums[key] = self.sums[key] + value if key in self.sums else value
            self.counts[key] = self.counts.get(key, 0) + 1
        self.count += 1

    def report(self, step: int, lr: float) -> None:
        """Log the window's means ("loss/x" becomes "train/x"), the LR and samples/s to the
        trackers, scalars.jsonl, the progress bar and log.txt; then start a new window."""
        accelerator, means = self.accelerator, {}
        for key, total in self.sums.items():
            value = (total / self.counts[key]).float()
            means[f"train/{key.removeprefix('loss/')}"] = accelerator.reduce(value, "mean").item()
        means["train/lr"] = lr
        seconds = time.perf_counter() - self.tick
        sps = self.count * self.batch_size * accelerator.num_processes / seconds
        means["train/samples_per_sec"] = sps
        log_scalars(accelerator, self.run_dir, means, step)
        shown = {
            k: f"{means[f'train/{k}']:.4g}" for k in ("loss", "d", "g") if f"train/{k}" in means
        }
        self.bar.set_postfix(**shown, sps=f"{sps:.1f}")
        log.info("step %d %s", step, " ".join(f"{k}={v:.4g}" for k, v in means.items()))
        self._reset()


def log_scalars(
    accelerator: Accelerator, run_dir: Path, metrics: Mapping[str, float], step: int
) -> None:
    """Send scalars to the trackers and append them to RUN/scalars.jsonl (always written, so
    a run can be plotted without TensorBoard; `plot_scalars` draws it)."""
    accelerator.log(dict(metrics), step=step)
    if accelerator.is_main_process:
        with open(run_dir / SCALARS, "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, **{k: float(v) for k, v in metrics.items()}}) + "\n")


def trim_scalars(accelerator: Accelerator, run_dir: Path, step: int) -> None:
    """Drop the rows of RUN/scalars.jsonl after `step`: a run resumed from the checkpoint of
    `step` logs those steps again, and a killed run may have logged past its last checkpoint."""
    path = run_dir / SCALARS
    if accelerator.is_main_process and path.is_file():
        lines = path.read_text(encoding="utf-8").splitlines()
        kept = [line for line in lines if line.strip() and _row_step(line) <= step]
        if len(kept) < len(lines):
            write_text(path, "".join(line + "\n" for line in kept))
    accelerator.wait_for_everyone()


def _row_step(line: str) -> float:
    try:
        return float(json.loads(line).get("step", 0))
    except (ValueError, AttributeError):  # a row cut short by the kill: dropped
        return float("inf")


def plot_scalars(run_dir: Path, keys: list[str], path: Path) -> None:
    """One panel per key of RUN/scalars.jsonl against the step, saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in (run_dir / SCALARS).read_text().splitlines() if line]
    keys = [k for k in keys if any(k in r for r in rows)]
    if not keys:
        return
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 2.8), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        points = [(r["step"], r[key]) for r in rows if key in r]
        ax.plot(*zip(*points, strict=True), marker="." if len(points) < 30 else None)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path, dpi=80)


@torch.no_grad()
def check_ranks_agree(accelerator: Accelerator, model: torch.nn.Module) -> None:
    """Fail loudly if the processes' parameters differ (under DDP they must stay identical;
    buffers such as BatchNorm statistics are broadcast from rank 0 at each forward instead, and
    only rank 0's are saved)."""
    accelerator.wait_for_everyone()
    if accelerator.num_processes == 1:
        return
    total = sum(p.detach().double().sum() for p in model.parameters())
    sums = accelerator.gather(total.reshape(1).to(accelerator.device))
    if not torch.all(sums == sums[0]):
        raise RuntimeError(f"parameters differ between processes: checksums {sums.tolist()}")
    log.info("parameters identical on all %d processes", accelerator.num_processes)
