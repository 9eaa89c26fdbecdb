"""Optimisation helpers with no training-loop machinery: the LR schedule as a pure function of the
step, AdamW parameter groups, and an exponential moving average of a module's weights.

Plain torch (no accelerate), so evaluation code that trains a small model of its own (the SynthVox
oracle) uses the same schedule as the training stages.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from scldm.config import OptimConfig


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


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> None:
    """Each group's LR = its `base_lr` × `factor`."""
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor


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
