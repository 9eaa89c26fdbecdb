"""Checkpoints of a training run (STYLE.md §4.8) and the metadata beside exported artifacts.

A checkpoint is a folder `checkpoints/step_NNNNNNN/` of tensors and JSON only, no pickles:
model.safetensors and ema.safetensors (the unwrapped weights, the same on every rank), the AdamW
state as optimizer.safetensors (its tensors) + optimizer.json (param_groups and the step counts),
state.json, and one rng_<rank>.safetensors per process. digest.json, written last, holds every
file's SHA-256: `--resume latest` skips a checkpoint whose files no longer match it (a disk or
copy that damaged them) for the newest intact one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from scldm import __version__
from scldm.errors import CheckpointNotSaved, InputError
from scldm.io import write_json
from scldm.optim import EMA
from scldm.training.loop import TrainState, trim_scalars

log = logging.getLogger("scldm.train")
CHECKPOINTS = "checkpoints"
DIGEST = "digest.json"


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / CHECKPOINTS / f"step_{step:07d}"


def optimizer_to_files(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer `state_dict` as (tensors named "<param id>.<key>", the JSON-able rest).

    Scalar tensors (AdamW's per-parameter `step`) go to the JSON part as numbers with their
    dtype, so it holds the whole state apart from the moment tensors.
    """
    tensors, numbers = {}, {}
    for pid, entries in state["state"].items():
        rest = {}
        for key, value in entries.items():
            if torch.is_tensor(value) and value.dim() > 0:
                tensors[f"{pid}.{key}"] = value.detach().contiguous().cpu()
            elif torch.is_tensor(value):
                rest[key] = {
                    "value": value.item(),
                    "dtype": str(value.dtype).removeprefix("torch."),
                }
            else:
                rest[key] = value
        numbers[str(pid)] = rest
    return tensors, {"param_groups": state["param_groups"], "state": numbers}


def optimizer_from_files(tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> dict:
    """The inverse of `optimizer_to_files`: a `state_dict` for `optimizer.load_state_dict`."""
    state: dict[int, dict[str, Any]] = {}
    for pid, rest in info["state"].items():
        entry = state.setdefault(int(pid), {})
        for key, value in rest.items():
            if isinstance(value, dict) and set(value) == {"value", "dtype"}:
                value = torch.tensor(value["value"], dtype=getattr(torch, value["dtype"]))
            entry[key] = value
    for name, tensor in tensors.items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = tensor
    groups = [
        {k: tuple(v) if k == "betas" else v for k, v in group.items()}
        for group in info["param_groups"]
    ]
    return {"state": state, "param_groups": groups}


def save_checkpoint(
    accelerator: Accelerator,
    run_dir: Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    ema: EMA,
    state: TrainState,
    keep_last: int,
    extras: Mapping[str, tuple[torch.nn.Module, torch.optim.Optimizer]] | None = None,
) -> Path:
    """Write checkpoints/step_NNNNNNN (keeping the last `keep_last`). Written under a temporary
    name, then renamed, so a run killed while saving leaves the previous checkpoint intact.
    `extras`: further trained parts by name (stage 1's discriminator), each saved as
    NAME.safetensors with its optimizer in NAME_optimizer.safetensors/.json."""
    path = checkpoint_dir(run_dir, state.step)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        _write_checkpoint(accelerator, tmp, model, optimizer, ema, state, extras)
        if accelerator.is_main_process:
            files = sorted(p.name for p in tmp.iterdir() if p.is_file())
            digest = {name: _sha256(tmp / name) for name in files}
            write_json(tmp / DIGEST, digest, indent=1)
    except (OSError, SafetensorError) as e:  # disk full, folder removed: the older ones stay
        shutil.rmtree(tmp, ignore_errors=True)
        done = sorted((run_dir / CHECKPOINTS).glob("step_*"))
        kept = f"the last checkpoint, {done[-1]}, is intact" if done else "no checkpoint yet"
        raise CheckpointNotSaved(
            f"could not write the checkpoint of step {state.step} to {tmp.parent} "
            f"({getattr(e, 'strerror', None) or e}); {kept}"
        ) from None
    if accelerator.is_main_process:
        shutil.rmtree(path, ignore_errors=True)
        tmp.replace(path)
        done = sorted((run_dir / CHECKPOINTS).glob("step_*"))
        for old in done[: max(0, len(done) - keep_last)]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return path


def _write_checkpoint(
    accelerator: Accelerator,
    tmp: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    ema: EMA,
    state: TrainState,
    extras: Mapping[str, tuple[torch.nn.Module, torch.optim.Optimizer]] | None,
) -> None:
    """Every file of a checkpoint into `tmp`, but its digest."""
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        weights = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(weights, tmp / "model.safetensors")
        save_file({k: v.contiguous() for k, v in ema.shadow.items()}, tmp / "ema.safetensors")
        _save_optimizer(optimizer, tmp, "optimizer")
        for name, (module, part_optimizer) in (extras or {}).items():
            part = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
            save_file(part, tmp / f"{name}.safetensors")
            _save_optimizer(part_optimizer, tmp, f"{name}_optimizer")
        write_json(
            tmp / "state.json",
            {**state.state_dict(), "ema_updates": ema.num_updates, "ema_decay": ema.decay},
            indent=2,
        )
    accelerator.wait_for_everyone()
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    save_file(rng, tmp / f"rng_{accelerator.process_index}.safetensors")
    accelerator.wait_for_everyone()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def damage(path: Path) -> str | None:
    """What is wrong with checkpoint folder `path` against its digest.json (None: intact, or
    written before checkpoints had digests)."""
    digest = path / DIGEST
    if not digest.is_file():
        return None if (path / "state.json").is_file() else "no state.json"
    try:
        expected = json.loads(digest.read_text())
    except (OSError, ValueError):
        return f"{DIGEST} is unreadable"
    for name, sha in expected.items():
        if not (path / name).is_file():
            return f"{name} is missing"
        if _sha256(path / name) != sha:
            return f"{name} does not match its digest (damaged or cut short)"
    return None


def _save_optimizer(optimizer: torch.optim.Optimizer, folder: Path, name: str) -> None:
    tensors, info = optimizer_to_files(optimizer.state_dict())
    save_file(tensors, folder / f"{name}.safetensors")
    write_json(folder / f"{name}.json", info, indent=2)


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """`optimizer.load_state_dict(state)`, then give each per-parameter tensor its parameter's
    memory layout: safetensors stores them contiguous, while the moments of channels-last
    weights are channels-last, and the fused AdamW kernel pairs the elements by storage."""
    optimizer.load_state_dict(state)
    for param, entries in optimizer.state.items():
        for key, value in entries.items():
            if torch.is_tensor(value) and value.shape == param.shape:
                if value.stride() != param.stride():
                    entries[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def _optimizer_state(path: Path, name: str = "optimizer") -> dict:
    if (path / f"{name}.safetensors").is_file() or name != "optimizer":
        info = json.loads((path / f"{name}.json").read_text())
        return optimizer_from_files(load_file(path / f"{name}.safetensors"), info)
    # checkpoints written before optimizer.safetensors: tensors and numbers only
    return torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)


def load_checkpoint(
    accelerator: Accelerator,
    path: Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    ema: EMA,
    state: TrainState,
    extras: Mapping[str, tuple[torch.nn.Module, torch.optim.Optimizer]] | None = None,
) -> None:
    """Restore what `save_checkpoint` wrote into the (unwrapped) model, optimizer, EMA, state,
    the `extras` and this process's random number generators."""
    try:
        model.load_state_dict(load_file(path / "model.safetensors"))
        ema.shadow = load_file(path / "ema.safetensors")
        load_optimizer_state(optimizer, _optimizer_state(path))
        for name, (module, part_optimizer) in (extras or {}).items():
            module.load_state_dict(load_file(path / f"{name}.safetensors"))
            load_optimizer_state(part_optimizer, _optimizer_state(path, f"{name}_optimizer"))
        info = json.loads((path / "state.json").read_text())
    except (OSError, RuntimeError, KeyError, ValueError, SafetensorError) as e:
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
        for path in sorted((run_dir / CHECKPOINTS).glob("step_*"), reverse=True):
            problem = damage(path)
            if problem is None:
                return path
            log.warning("skipping the damaged checkpoint %s: %s", path, problem)
        return None
    path = Path(resume)
    if not (path / "state.json").is_file():
        raise InputError(path, "not a checkpoint folder (no state.json)")
    if problem := damage(path):
        raise InputError(path, f"damaged checkpoint: {problem}")
    return path


def maybe_resume(
    accelerator: Accelerator,
    run_dir: Path,
    resume: str | None,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    ema: EMA,
    state: TrainState,
    extras: Mapping[str, tuple[torch.nn.Module, torch.optim.Optimizer]] | None = None,
) -> None:
    """Load the checkpoint `resume` names (`latest` or a folder), if any."""
    checkpoint = resolve_resume(run_dir, resume)
    if checkpoint is not None:
        load_checkpoint(
            accelerator,
            checkpoint,
            model=model,
            optimizer=optimizer,
            ema=ema,
            state=state,
            extras=extras,
        )
        log.info("resumed from %s at step %d", checkpoint, state.step)
    elif resume == "latest":
        log.info("no checkpoint in %s yet: starting from step 0", run_dir)
    if resume is not None:
        trim_scalars(accelerator, run_dir, state.step)


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
    write_json(folder / "scldm_meta.json", meta, indent=2)
