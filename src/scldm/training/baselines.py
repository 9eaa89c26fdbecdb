"""How each baseline of `scldm.baselines.BASELINES` is trained: its run config class (in
`scldm.config`) and its trainer (`scldm.training.<method>.train`). The one table `scldm
train-baseline` and `scldm compare --train` read; nothing heavy is imported until asked."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from scldm.errors import InputError

CONFIGS = {
    "speech2face": "Speech2FaceConfig",
    "wen": "WenConfig",
    "wav2pix": "Wav2PixConfig",
}


def baseline_trainer(method: str) -> tuple[type, Callable[..., Path]]:
    """(config class, `train(cfg, *, resume, cpu) -> RUN/pipeline`) of a baseline."""
    if method not in CONFIGS:
        raise InputError(None, f"unknown baseline {method!r}; known: {', '.join(CONFIGS)}")
    config: Any = importlib.import_module("scldm.config")
    module = importlib.import_module(f"scldm.training.{method}")
    return getattr(config, CONFIGS[method]), module.train


__all__ = ["CONFIGS", "baseline_trainer"]
