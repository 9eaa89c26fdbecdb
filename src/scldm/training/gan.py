"""The two-player training loop the GAN baselines share (Wen et al.; Wav2Pix reuses it).

Each step, as the official implementations order it: the generating side makes its fakes once
(`GanMethod.generate`, with gradients); the discriminating side's loss (`d_loss`, on the fakes
detached) updates the discriminating networks; then the generating side's loss (`g_loss`, on
the same fakes, through the just-updated discriminating networks, which are frozen for it)
updates the generating networks. Every network has its own optimizer (`optims`).

Around that: accelerate (one code path from one CPU to many GPUs; each prepared network is
called once per loss, as DDP requires), an EMA of the exported network, safetensors checkpoints
of every network and optimizer, exact resume (random crops, flips and noise come from the
step's seeded generator), logging, validation grids of fixed voices, and a loud stop when a
loss becomes NaN, keeping the last good checkpoint.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from scldm.config import OptimConfig
from scldm.errors import InputError
from scldm.optim import EMA, lr_at
from scldm.training.checkpoint import maybe_resume, save_checkpoint
from scldm.training.guard import active
from scldm.training.loop import (
    LogWindow,
    TrainState,
    batch_everywhere,
    batch_stream,
    check_ranks_agree,
    due,
    optimizer_step,
    progress_bar,
)
from scldm.training.phases import Phases, ema_copy

Nets = Mapping[str, nn.Module]


class GanMethod(Protocol):
    """What a GAN baseline defines; the loop owns everything else. `nets` maps names to the
    networks to call: the prepared (DDP-wrapped) ones of the player being updated, plain
    modules for the rest. Logged scalars are named "loss/..." (shown as train/...)."""

    def generate(self, nets: Nets, batch: dict[str, Any], state: TrainState) -> dict[str, Any]:
        """The generating side's forward pass (with gradients): fakes and what the losses
        need, including the step's random draws."""
        ...

    def d_loss(
        self, nets: Nets, batch: dict[str, Any], fake: dict[str, Any], state: TrainState
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """The discriminating side's loss; `fake` holds the fakes detached."""
        ...

    def g_loss(
        self, nets: Nets, batch: dict[str, Any], fake: dict[str, Any], state: TrainState
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """The generating side's loss on `generate`'s output."""
        ...


@dataclass(frozen=True)
class Players:
    """Which networks each loss updates, which one is exported (with an EMA), and the frozen
    networks both sides may call (e.g. a pre-trained voice encoder)."""

    d: tuple[str, ...]
    g: tuple[str, ...]
    exported: str

    def __post_init__(self) -> None:
        if set(self.d) & set(self.g) or self.exported not in self.g:
            raise ValueError(f"players must be disjoint and export a generating net: {self}")


def train_gan(
    phases: Phases,
    name: str,
    method: GanMethod,
    *,
    nets: dict[str, nn.Module],
    players: Players,
    optims: Mapping[str, OptimConfig],
    frozen: Mapping[str, nn.Module] | None = None,
    steps: int,
    batch_size: int,
    resume: str | None,
    validate: Callable[[dict[str, nn.Module], int], dict[str, float]] | None = None,
    logged: Sequence[str] = (),
) -> dict[str, nn.Module]:
    """Train `nets` as two players for `steps` in the phase folder RUN/`name` and return them
    (eval mode, the exported one with its EMA weights). `validate(nets, step)` gets the same."""
    accelerator, cfg = phases.accelerator, phases.cfg
    if cfg.train.grad_accum_steps != 1:
        raise InputError(None, "train.grad_accum_steps must be 1 for a GAN baseline")
    phase_dir = phases.start(name)
    names = [*players.d, *players.g]
    optimizers = {  # Adam when weight_decay is 0, as the originals
        n: torch.optim.AdamW(
            nets[n].parameters(),
            lr=optims[n].lr,
            betas=optims[n].betas,
            eps=optims[n].eps,
            weight_decay=optims[n].weight_decay,
        )
        for n in names
    }
    for n, opt in optimizers.items():
        for group in opt.param_groups:
            group["base_lr"] = optims[n].lr
    loader, sampler = phases.loader(batch_size)
    prepared = accelerator.prepare(*(nets[n] for n in names), *optimizers.values(), loader)
    models = dict(zip(names, prepared[: len(names)], strict=True))
    optimizers = dict(zip(names, prepared[len(names) : 2 * len(names)], strict=True))
    loader = prepared[-1]
    plain = {n: accelerator.unwrap_model(m) for n, m in models.items()}
    frozen = {
        n: m.to(accelerator.device).eval().requires_grad_(False) for n, m in (frozen or {}).items()
    }
    exported = players.exported
    ema, state = EMA(plain[exported], cfg.train.ema_decay), TrainState()
    extras = {n: (plain[n], optimizers[n]) for n in names if n != exported}
    maybe_resume(
        accelerator, phase_dir, resume, model=plain[exported], optimizer=optimizers[exported],
        ema=ema, state=state, extras=extras,
    )  # fmt: skip
    train_cfg = dataclasses.replace(cfg.train, max_steps=steps, batch_size=batch_size)
    bar = progress_bar(accelerator, train_cfg, state.step, name)
    window = LogWindow(accelerator, phase_dir, batch_size, bar)
    for m in models.values():
        m.train()
    d_view = {**frozen, **{n: models[n] for n in players.d}}
    g_view = {**frozen, **{n: models[n] for n in players.g}, **{n: plain[n] for n in players.d}}

    def update(player: Sequence[str], finite: bool) -> dict[str, Any]:
        """Step the player's optimizers, or drop their gradients when its loss was not finite."""
        logs: dict[str, Any] = {}
        for n in player:
            if not finite:
                optimizers[n].zero_grad(set_to_none=True)
                continue
            factor = lr_at(state.step, optims[n], steps)
            grad = optimizer_step(
                accelerator, models[n], optimizers[n], factor, optims[n].grad_clip
            )
            logs |= {f"grad_norm_{n}": v for v in grad.values()}
        return logs

    guard = active()
    try:  # the bar ends its line before any error is printed
        for batch in batch_stream(loader, sampler, state.step, accelerator):
            if state.step >= steps:
                break
            if not batch_everywhere(batch, accelerator):  # all clips unreadable somewhere
                continue
            with accelerator.autocast():
                fake = method.generate(g_view, batch, state)
                detached = {k: v.detach() if torch.is_tensor(v) else v for k, v in fake.items()}
                d_loss, logs = method.d_loss(d_view, batch, detached, state)
            accelerator.backward(d_loss)
            logs |= update(players.d, guard.finite({"d": d_loss}, state.step, name, phase_dir))
            # the generating side's loss reads the discriminating nets; they do not learn from it
            _requires_grad(plain, players.d, False)
            try:
                with accelerator.autocast():
                    g_loss, g_logs = method.g_loss(g_view, batch, fake, state)
                accelerator.backward(g_loss)
            finally:
                _requires_grad(plain, players.d, True)
            g_ok = guard.finite({"g": g_loss}, state.step, name, phase_dir)
            logs |= g_logs | update(players.g, g_ok)
            window.add({"loss/d": d_loss.detach(), "loss/g": g_loss.detach(), **logs})
            state.step += 1
            state.samples += batch_size * accelerator.num_processes
            ema.update(plain[exported])
            if due(state.step, cfg.train.log_every, steps):
                window.report(state.step, optimizers[exported].param_groups[0]["lr"])
            bar.update()
            if due(state.step, cfg.train.eval_every, steps) and accelerator.is_main_process:
                phases.validate(name, validate, _final(plain, exported, ema), state.step)
            guard.checkpoint(
                state.step,
                cfg.train.save_every,
                steps,
                lambda: save_checkpoint(
                    accelerator,
                    phase_dir,
                    model=plain[exported],
                    optimizer=optimizers[exported],
                    ema=ema,
                    state=state,
                    keep_last=cfg.train.keep_last,
                    extras=extras,
                ),  # fmt: skip
            )
    finally:
        bar.close()
    for n in names:
        check_ranks_agree(accelerator, plain[n])
    phases.finish(name, ["d", "g", *logged], steps)
    return _final(plain, exported, ema)


def _final(plain: dict[str, nn.Module], exported: str, ema: EMA) -> dict[str, nn.Module]:
    """The networks for validation and export: copies, eval mode, the exported one's EMA."""
    out = {n: copy.deepcopy(m).eval() for n, m in plain.items() if n != exported}
    return {**out, exported: ema_copy(plain[exported], ema)}


def _requires_grad(nets: Mapping[str, nn.Module], names: Sequence[str], flag: bool) -> None:
    for n in names:
        nets[n].requires_grad_(flag)


__all__ = ["GanMethod", "Players", "train_gan"]
