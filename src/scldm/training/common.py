"""Helpers every training stage shares: the accelerator, the LR schedule, EMA, the train state,
checkpoints (save, prune, resume), the epoch-aware batch stream and artifact export."""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration
from safetensors.torch import load_file, save_file

from scldm import __version__
from scldm.config import OptimConfig, TrainConfig, config_to_dict, save_config
from scldm.errors import InputError

log = logging.getLogger("scldm.train")
CHECKPOINTS = "checkpoints"
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


def log_scalars(
    accelerator: Accelerator, run_dir: Path, metrics: Mapping[str, float], step: int
) -> None:
    """Send scalars to the trackers and append them to RUN/scalars.jsonl (always written, so
    a run can be plotted without TensorBoard; `plot_scalars` draws it)."""
    accelerator.log(dict(metrics), step=step)
    if accelerator.is_main_process:
        with open(run_dir / SCALARS, "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, **{k: float(v) for k, v in metrics.items()}}) + "\n")


def report_window(
    accelerator: Accelerator,
    run_dir: Path,
    sums: Mapping[str, float],
    count: int,
    *,
    step: int,
    lr: float,
    batch_size: int,
    seconds: float,
    bar: Any,
) -> None:
    """Log the means of the scalars summed over the last `count` micro-batches (averaged over
    processes; "loss/x" becomes "train/x"), the LR and samples/s: trackers, scalars.jsonl,
    the progress bar and log.txt."""
    means = {}
    for key, total in sums.items():
        value = torch.tensor(total / count, device=accelerator.device)
        means[f"train/{key.removeprefix('loss/')}"] = accelerator.reduce(value, "mean").item()
    means["train/lr"] = lr
    means["train/samples_per_sec"] = count * batch_size * accelerator.num_processes / seconds
    log_scalars(accelerator, run_dir, means, step)
    bar.set_postfix(loss=f"{means['train/loss']:.4g}", sps=f"{means['train/samples_per_sec']:.1f}")
    log.info("step %d %s", step, " ".join(f"{k}={v:.4g}" for k, v in means.items()))


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
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    os.replace(tmp, path)


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def lr_at(step: int, optim: OptimConfig, max_steps: int) -> float:
    """LR multiplier at `step`: linear warmup to 1, then cosine to `min_lr_ratio` (or constant).

    A pure function of the step, so resuming needs no scheduler state (nanoGPT's get_lr).
    """
    if optim.warmup_steps and step < optim.warmup_steps:
        return (step + 1) / optim.warmup_steps
    if optim.schedule == "constant":
        return 1.0
    span = max(1, max_steps - optim.warmup_steps)
    progress = min(1.0, (step - optim.warmup_steps) / span)
    return optim.min_lr_ratio + (1 - optim.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def param_groups(
    modules: Mapping[str, tuple[torch.nn.Module, float]], weight_decay: float
) -> list[dict]:
    """AdamW groups per module with its own base LR; decay only on ≥2-D weights (nanoGPT)."""
    groups = []
    for name, (module, lr) in modules.items():
        params = [p for p in module.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        for ps, wd, suffix in ((decay, weight_decay, ""), (no_decay, 0.0, "/no_decay")):
            if ps:
                groups.append(
                    {
                        "params": ps,
                        "lr": lr,
                        "base_lr": lr,
                        "weight_decay": wd,
                        "name": name + suffix,
                    }
                )
    return groups


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor


@dataclass
class TrainState:
    """What the loop counts; saved with every checkpoint."""

    step: int = 0
    samples: int = 0

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step, "samples": self.samples}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.step, self.samples = int(state["step"]), int(state["samples"])


class EMA:
    """Exponential moving average of a module's parameters and buffers (copies, float32).

    `decay` follows a warm-up, min(decay, (1 + step) / (10 + step)), so early averages are not
    dominated by the random initialisation.
    """

    def __init__(self, module: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.num_updates = 0
        self.shadow = {k: v.detach().clone().float() for k, v in module.state_dict().items()}

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        self.num_updates += 1
        d = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        for key, value in module.state_dict().items():
            shadow = self.shadow[key]
            if value.dtype.is_floating_point:
                shadow.lerp_(value.detach().float().to(shadow.device), 1 - d)
            else:
                shadow.copy_(value)

    def copy_to(self, module: torch.nn.Module) -> None:
        state = module.state_dict()
        module.load_state_dict({k: v.to(state[k].dtype) for k, v in self.shadow.items()})

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "num_updates": self.num_updates, "shadow": self.shadow}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.decay, self.num_updates = state["decay"], state["num_updates"]
        self.shadow = {k: v.float() for k, v in state["shadow"].items()}


def background_worker(worker_id: int) -> None:
    """DataLoader `worker_init_fn`: run loader workers at low CPU priority. On a machine with
    as many busy threads as cores, decoding files then fills the gaps instead of preempting
    the training step (stage 1 small on 2 cores: see benchmarks/results/pretrain_cpu.md)."""
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


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / CHECKPOINTS / f"step_{step:07d}"


def save_checkpoint(
    accelerator: Accelerator,
    run_dir: Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    ema: EMA,
    state: TrainState,
    keep_last: int,
) -> Path:
    """Write checkpoints/step_NNNNNNN (keeping the last `keep_last`) without pickles.

    model.safetensors and ema.safetensors (the unwrapped weights, the same on every rank),
    optimizer.pt (tensors and numbers only: read back with `weights_only=True`), state.json and
    one rng_<rank>.safetensors per process. Written under a temporary name, then renamed, so a
    run killed while saving leaves the previous checkpoint intact.
    """
    path = checkpoint_dir(run_dir, state.step)
    tmp = path.with_name(f".{path.name}.tmp")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        weights = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(weights, tmp / "model.safetensors")
        save_file({k: v.contiguous() for k, v in ema.shadow.items()}, tmp / "ema.safetensors")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        write_json(
            tmp / "state.json",
            {**state.state_dict(), "ema_updates": ema.num_updates, "ema_decay": ema.decay},
        )
    accelerator.wait_for_everyone()
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    save_file(rng, tmp / f"rng_{accelerator.process_index}.safetensors")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
        done = sorted((run_dir / CHECKPOINTS).glob("step_*"))
        for old in done[: max(0, len(done) - keep_last)]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return path


def load_checkpoint(
    accelerator: Accelerator,
    path: Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    ema: EMA,
    state: TrainState,
) -> None:
    """Restore what `save_checkpoint` wrote into the (unwrapped) model, optimizer, EMA, state and
    this process's random number generators."""
    try:
        model.load_state_dict(load_file(path / "model.safetensors"))
        ema.shadow = load_file(path / "ema.safetensors")
        optimizer.load_state_dict(
            torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
        )
        info = json.loads((path / "state.json").read_text())
    except (OSError, RuntimeError, KeyError, ValueError) as e:
        raise InputError(path, f"not a usable checkpoint of this run ({e})") from None
    state.load_state_dict(info)
    ema.num_updates = int(info["ema_updates"])
    rng_file = path / f"rng_{accelerator.process_index}.safetensors"
    if rng_file.is_file():  # absent when resuming on more processes than were saved
        rng = load_file(rng_file)
        torch.set_rng_state(rng["cpu"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])


def resolve_resume(run_dir: Path, resume: str | None) -> Path | None:
    """`latest` → the newest checkpoint of the run (None when there is none), or a given path."""
    if not resume:
        return None
    if resume == "latest":
        done = sorted((run_dir / CHECKPOINTS).glob("step_*"))
        return done[-1] if done else None
    path = Path(resume)
    if not (path / "state.json").is_file():
        raise InputError(path, "not a checkpoint folder (no state.json)")
    return path


def git_sha() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            timeout=5,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def write_meta(folder: Path, run_dir: Path, step: int, **extra: Any) -> None:
    """scldm_meta.json beside an exported artifact: version, git sha, source run, step."""
    meta = {
        "scldm_version": __version__,
        "git_sha": git_sha(),
        "run_dir": str(run_dir.resolve()),
        "step": step,
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        **extra,
    }
    write_json(folder / "scldm_meta.json", meta)


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)
