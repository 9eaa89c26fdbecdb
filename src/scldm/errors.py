"""Errors a user can act on. The CLI prints them as one line and exits with status 2 (bad input),
1 (a training run that diverged) or 128 + the signal (a run stopped by SIGTERM or SIGINT)."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType


class InputError(ValueError):
    """Bad input from the user: a missing, empty, corrupt or unsupported file or setting.

    The message is one line that names the file (or setting) and the problem.
    """

    def __init__(self, path: str | Path | None, problem: str) -> None:
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(problem if path is None else f"{path}: {problem}")


class TrainingDiverged(RuntimeError):
    """Training stopped because a loss became NaN or infinite. The message is one line: the
    loss, the step and the last good checkpoint to resume from. The CLI exits with status 1."""


class CheckpointNotSaved(RuntimeError):
    """A checkpoint could not be written (disk full, folder gone); the previous one is intact.
    The message is one line; the CLI exits with status 1."""


class Preempted(RuntimeError):
    """Training stopped on SIGTERM or SIGINT after writing a checkpoint at the current step. The
    message is one line naming it; the CLI exits with status 128 + the signal."""

    def __init__(self, signum: int, message: str) -> None:
        self.signum = signum
        super().__init__(message)


def require(module: str, *, extra: str = "eval", package: str | None = None) -> ModuleType:
    """Import an optional dependency, or fail with one line naming the install command."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        name = package or module
        raise InputError(
            None, f"{name} is not installed; install it with: pip install 'scldm[{extra}]' ({e})"
        ) from None
