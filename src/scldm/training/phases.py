"""Runs made of phases: the baselines train networks one after another (Speech2Face's teacher,
decoder and voice encoder; Wen et al.'s voice encoder, then the GAN), each phase a folder of the
run with its own checkpoints, scalars, curves, grids and, when finished, an export that
`--resume` reuses instead of training the phase again.

`Phases` holds what a run's phases share (accelerator, config, run folder, dataset) and runs a
supervised phase (`Phases.supervised`: one network, one loss, AdamW); `scldm.training.gan` runs
the two-player phase. Also here: the resume rule across phases, the refusal to resume another
method's run, and the validation helpers (batches, one clip per speaker, grids).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader, Subset

from scldm.config import EvalConfig, OptimConfig, load_config
from scldm.data.datasets import SpeakerBatchSampler, SpeechFaceDataset, collate
from scldm.data.synthvox import training_data
from scldm.errors import InputError
from scldm.faces import make_grid, save_image, to_pil
from scldm.io import write_json
from scldm.optim import EMA, lr_at
from scldm.training.checkpoint import CHECKPOINTS, maybe_resume, save_checkpoint, write_meta
from scldm.training.guard import active
from scldm.training.loop import (
    LogWindow,
    TrainState,
    background_worker,
    batch_everywhere,
    batch_stream,
    check_ranks_agree,
    due,
    log_scalars,
    optimizer_step,
    plot_scalars,
    progress_bar,
)

log = logging.getLogger("scldm.train")
EXPORT = "export"
LossFn = Callable[[torch.nn.Module, dict[str, Any], TrainState], tuple[torch.Tensor, dict]]
Validate = Callable[[torch.nn.Module, int], dict[str, float]]


class Phases:
    """The phases of one run: the same data, accelerator and cadence (`cfg.train`)."""

    def __init__(
        self, accelerator: Accelerator, cfg: Any, run_dir: Path, dataset: SpeechFaceDataset
    ) -> None:
        self.accelerator, self.cfg, self.run_dir, self.dataset = accelerator, cfg, run_dir, dataset
        self.phase_dir = run_dir
        self.last_validation: dict[str, float] = {}

    def start(self, name: str) -> Path:
        """Enter phase `name`: its folder, created on the main process."""
        self.phase_dir = self.run_dir / name
        self.last_validation = {}
        if self.accelerator.is_main_process:
            self.phase_dir.mkdir(parents=True, exist_ok=True)
        return self.phase_dir

    def loader(self, batch_size: int) -> tuple[DataLoader, SpeakerBatchSampler]:
        """Batches of `batch_size` clips of different speakers, seeded by the run's seed."""
        cfg = self.cfg
        sampler = SpeakerBatchSampler(self.dataset.speaker_index, batch_size, seed=cfg.train.seed)
        loader = DataLoader(
            self.dataset,
            batch_sampler=sampler,
            collate_fn=collate,
            num_workers=cfg.data.num_workers,
            persistent_workers=cfg.data.num_workers > 0,
            worker_init_fn=background_worker,
        )
        return loader, sampler

    def reusable(self, name: str, steps: int, resume: str | None) -> Path | None:
        """The export of phase `name` when resuming and it was trained for `steps`, else None."""
        exported = self.run_dir / name / EXPORT
        if resume and exported_steps(exported) == steps:
            log.info("%s: reusing %s", name, exported)
            return exported
        return None

    def validate(self, name: str, validate: Validate | None, model: torch.nn.Module, step: int):
        """Run `validate` on the main process, log its numbers and keep them."""
        if validate is None or not self.accelerator.is_main_process:
            return
        self.last_validation = validate(model, step)
        if not self.last_validation:  # e.g. no validation split
            return
        log_scalars(self.accelerator, self.phase_dir, self.last_validation, step)
        log.info("%s step %d %s", name, step, fmt(self.last_validation))

    def finish(self, name: str, logged: Sequence[str], steps: int) -> None:
        """The phase's curves.png: the loss, the `logged` terms and the validation numbers."""
        if self.accelerator.is_main_process and steps > 0:
            keys = ["train/loss", *(f"train/{k}" for k in logged)]
            keys += [f"val/{k.removeprefix('val/')}" for k in self.last_validation]
            plot_scalars(self.phase_dir, keys, self.phase_dir / "curves.png")

    def export(self, name: str, module: torch.nn.Module, step: int) -> None:
        """PHASE/export: `module.save_pretrained` and its scldm_meta.json."""
        if self.accelerator.is_main_process:
            exported = self.run_dir / name / EXPORT
            module.save_pretrained(exported)
            write_meta(exported, self.run_dir, step, phase=name)
        self.accelerator.wait_for_everyone()

    def supervised(
        self,
        name: str,
        model: torch.nn.Module,
        loss_fn: LossFn,
        *,
        steps: int,
        batch_size: int,
        optim: OptimConfig,
        resume: str | None,
        validate: Validate | None,
        logged: Sequence[str] = (),
        exported: Callable[[torch.nn.Module], Any] | None = lambda m: m,
    ) -> torch.nn.Module:
        """Train `model` for `steps` with `loss_fn` and return its EMA weights (eval mode).

        `exported(model)` is the part saved as PHASE/export (None: nothing is exported); when
        resuming, an export trained for `steps` is loaded (into that part) instead of training.
        """
        accelerator, cfg = self.accelerator, self.cfg
        if exported is not None and (done := self.reusable(name, steps, resume)):
            part = exported(model)
            part.load_state_dict(type(part).from_pretrained(done).state_dict())
            return model.eval()
        phase_dir = self.start(name)
        train_cfg = dataclasses.replace(cfg.train, max_steps=steps, batch_size=batch_size)
        loader, sampler = self.loader(batch_size)
        optimizer = torch.optim.AdamW(
            model.parameters(),
            lr=optim.lr,
            betas=optim.betas,
            eps=optim.eps,
            weight_decay=optim.weight_decay,
        )
        for group in optimizer.param_groups:
            group["base_lr"] = optim.lr
        prepared, optimizer, loader = accelerator.prepare(model, optimizer, loader)
        unwrapped = accelerator.unwrap_model(prepared)
        ema, state = EMA(unwrapped, cfg.train.ema_decay), TrainState()
        maybe_resume(
            accelerator, phase_dir, resume, model=unwrapped, optimizer=optimizer, ema=ema,
            state=state,
        )  # fmt: skip
        bar = progress_bar(accelerator, train_cfg, state.step, name)
        window = LogWindow(accelerator, phase_dir, batch_size, bar)
        prepared.train()
        guard = active()
        try:  # the bar ends its line before any error is printed
            for batch in batch_stream(loader, sampler, state.step, accelerator):
                if state.step >= steps:
                    break
                if not batch_everywhere(batch, accelerator):  # all clips unreadable somewhere
                    continue
                with accelerator.accumulate(prepared):
                    loss, logs = loss_fn(prepared, batch, state)
                    accelerator.backward(loss)
                    if guard.finite({"loss": loss}, state.step, name, phase_dir):
                        factor = lr_at(state.step, optim, steps)
                        logs |= optimizer_step(
                            accelerator, prepared, optimizer, factor, optim.grad_clip
                        )
                    else:
                        optimizer.zero_grad(set_to_none=True)
                window.add(logs)
                if not accelerator.sync_gradients:
                    continue
                state.step += 1
                state.samples += batch_size * accelerator.num_processes
                ema.update(unwrapped)
                if due(state.step, cfg.train.log_every, steps):
                    window.report(state.step, optimizer.param_groups[0]["lr"])
                bar.update()
                if due(state.step, cfg.train.eval_every, steps):
                    self.validate(name, validate, ema_copy(unwrapped, ema), state.step)
                guard.checkpoint(
                    state.step,
                    cfg.train.save_every,
                    steps,
                    lambda: save_checkpoint(
                        accelerator,
                        phase_dir,
                        model=unwrapped,
                        optimizer=optimizer,
                        ema=ema,
                        state=state,
                        keep_last=cfg.train.keep_last,
                    ),  # fmt: skip
                )
        finally:
            bar.close()
        check_ranks_agree(accelerator, unwrapped)
        final = ema_copy(unwrapped, ema)
        self.finish(name, logged, steps)
        if exported is not None:
            self.export(name, exported(final), state.step)
        accelerator.wait_for_everyone()
        return final


def export_pipeline(
    phases: Phases, pipe: Any, parts: Sequence[str], steps: int, metrics: dict[str, Any]
) -> Path:
    """RUN/pipeline (`pipe.save_pretrained`, with scldm_meta.json beside each trained part) and
    RUN/metrics.json, on the main process; then the run's trackers end."""
    accelerator, run_dir = phases.accelerator, phases.run_dir
    out = run_dir / "pipeline"
    if accelerator.is_main_process:
        pipe.save_pretrained(out)
        for part in parts:
            write_meta(
                out / part, run_dir, steps, training_data=training_data(phases.cfg.data.root)
            )
        write_json(run_dir / "metrics.json", metrics, indent=2)
        log.info("exported %s; %s", out, metrics)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return out


def exported_steps(folder: Path) -> int | None:
    """The steps a phase's export was trained for (None when there is none)."""
    meta = folder / "scldm_meta.json"
    if not (folder / "config.json").is_file() or not meta.is_file():
        return None
    return int(json.loads(meta.read_text())["step"])


def ema_copy(model: torch.nn.Module, ema: EMA) -> torch.nn.Module:
    """A copy of `model` holding the EMA weights, in eval mode."""
    final = copy.deepcopy(model)
    ema.copy_to(final)
    return final.eval()


def fmt(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in metrics.items())


def resume_for(phase: str, resume: str | None, phases: Sequence[str], method: str) -> str | None:
    """A phase's resume: `latest` for all; a checkpoint folder for its own phase, `latest` for
    the phases before it (their exports are reused) and nothing for those after it."""
    if resume in (None, "latest"):
        return resume
    path = Path(resume)
    if path.parent.name != CHECKPOINTS or path.parent.parent.name not in phases:
        raise InputError(path, f"not a checkpoint of a {method} phase ({', '.join(phases)})")
    own = path.parent.parent.name
    if phase == own:
        return str(path)
    return "latest" if phases.index(phase) < phases.index(own) else None


def check_run(run_dir: Path, resume: str | None, cls: type, method: str) -> None:
    """Refuse to resume a run folder of another method (its config.yaml is not a `cls`)."""
    config = run_dir / "config.yaml"
    if resume and config.is_file():
        try:
            load_config(cls, config)
        except InputError:
            raise InputError(
                run_dir, f"is not a {method} run (its config.yaml is another method's); "
                "use a new --out",
            ) from None  # fmt: skip


# --- Validation helpers ------------------------------------------------------------------------


def val_batches(dataset: SpeechFaceDataset | None, cfg: EvalConfig) -> Iterator[dict[str, Any]]:
    """Batches of the first `cfg.max_clips` clips of the validation set (none without one)."""
    if dataset is None:
        return
    n = min(len(dataset), cfg.max_clips)
    loader = DataLoader(Subset(dataset, range(n)), batch_size=64, collate_fn=collate)
    yield from (b for b in loader if b is not None)


def one_per_speaker(speakers: torch.Tensor, n: int) -> list[int]:
    """Rows of the first clip of each of the first `n` speakers: the grids show n people."""
    seen: dict[int, int] = {}
    for row, speaker in enumerate(speakers.tolist()):
        seen.setdefault(speaker, row)
    return list(seen.values())[:n]


def save_grid(faces: list[torch.Tensor], ncols: int, phase_dir: Path, step: int) -> None:
    """PHASE/samples/step_NNNNNNN.png: faces in [-1, 1], `ncols` a row."""
    grid = make_grid([to_pil(f.detach().float().cpu()) for f in faces], ncols=ncols)
    save_image(grid, phase_dir / "samples" / f"step_{step:07d}.png")


__all__ = [
    "EXPORT",
    "Phases",
    "check_run",
    "ema_copy",
    "export_pipeline",
    "exported_steps",
    "one_per_speaker",
    "resume_for",
    "save_grid",
    "val_batches",
]
