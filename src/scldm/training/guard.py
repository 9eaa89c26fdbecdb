"""What makes a training run safe to stop, to share a machine and to rerun.

`guarded` wraps each trainer's `train(cfg, ...)`; while it runs, the training loops ask the
active `RunGuard` (`active()`):

- **One run per folder.** The main process holds an exclusive `flock` on RUN/.lock; a second run
  pointed at the same folder stops at once with one line naming the first one's process id. The
  kernel drops the lock when the holder dies, so a killed run never leaves it stuck.
- **Preemption.** The first SIGTERM or SIGINT (cluster schedulers send SIGTERM before they
  kill) is noted, the current step finishes, a checkpoint is written at it and the run stops
  with `Preempted`: one line, exit status 128 + the signal. `--resume latest` continues from
  it exactly. A second signal stops at once (KeyboardInterrupt). All processes of a run agree
  on the step to stop at (one small all-reduce a step), so none waits for the others forever.
  Processes forked during a run (the loader workers) are born with the stop signals blocked
  and leave them to the main process: a signal sent to the whole process group never kills a
  worker before the checkpoint, while their parent can still end them (`_take_stop_signals`).
- **Non-finite losses.** A loss that is NaN or infinite on any process stops the run with one
  line naming the step and the last good checkpoint (none is written for the diverged state);
  `train.skip_nonfinite: N` skips up to N such steps instead (no update; the step counts, so
  the data order stays that of a run without them).
"""

from __future__ import annotations

import fcntl
import functools
import logging
import os
import signal
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from scldm.errors import InputError, Preempted, TrainingDiverged
from scldm.training.checkpoint import CHECKPOINTS
from scldm.training.loop import due

log = logging.getLogger(__name__)

LOCK = ".lock"
_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_active: RunGuard | None = None


class RunGuard:
    """The lock, the stop signals and the non-finite budget of one run (see the module doc)."""

    def __init__(self, run_dir: Path | None, *, skip_nonfinite: int = 0) -> None:
        self.run_dir = run_dir
        self.skip_nonfinite = skip_nonfinite
        self.skipped = 0
        self.signum: int | None = None  # the signal received by this process
        self.stopping = False  # whether any process of the run received one
        self._lock_file: Any = None
        self._previous: dict[int, Any] = {}
        self._made = False  # whether the lock made the run folder

    # --- entering and leaving ---------------------------------------------------------------

    def __enter__(self) -> RunGuard:
        if self.run_dir is not None and int(os.environ.get("RANK", "0")) == 0:
            self._lock()
        if threading.current_thread() is threading.main_thread():
            for s in _SIGNALS:
                self._previous[s] = signal.signal(s, self._on_signal)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()
        if self._lock_file is not None:
            self._lock_file.close()  # releases the flock
            self._lock_file = None
            # a folder this guard made for a run that wrote nothing (refused settings): gone
            if self._made and [p.name for p in self.run_dir.iterdir()] == [LOCK]:
                (self.run_dir / LOCK).unlink()
                self.run_dir.rmdir()

    def _lock(self) -> None:
        self._made = not self.run_dir.exists()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.run_dir / LOCK
        f = open(path, "a+")  # noqa: SIM115 (held until __exit__)
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            f.close()
            raise InputError(
                self.run_dir,
                f"is in use by another run (process {holder}); wait for it to end or choose "
                "another output folder",
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        self._lock_file = f

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.signum is not None:  # the second one: stop now
            raise KeyboardInterrupt
        self.signum = signum
        log.warning(
            "%s received: finishing this step, then a checkpoint (send it again to stop now)",
            signal.Signals(signum).name,
        )

    # --- inside the loop ----------------------------------------------------------------------

    def finite(
        self, losses: Mapping[str, torch.Tensor], step: int, name: str, checkpoints: Path
    ) -> bool:
        """Whether the (micro-)step's losses are finite on every process; call it once per
        micro-step, before the optimizer steps. False: skip this step's update (the caller
        zeroes the gradients), within the `skip_nonfinite` budget; past it, TrainingDiverged
        names the step and the last good checkpoint in `checkpoints` (a run folder or phase).
        Also where the processes agree on a stop signal (`stopping`)."""
        bad = {k: v for k, v in losses.items() if not bool(torch.isfinite(v.detach()).all())}
        flags = torch.tensor(
            [float(bool(bad)), float(self.signum is not None)],
            device=next(iter(losses.values())).device,
        )
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        any_bad, self.stopping = bool(flags[0]), bool(flags[1])
        if not any_bad:
            return True
        terms = ", ".join(f"{k} = {v.detach().float().mean().item()}" for k, v in bad.items())
        terms = terms or "a loss on another process is not finite"
        if self.skipped >= self.skip_nonfinite:
            raise TrainingDiverged(
                f"{name}: {terms} at step {step + 1}; training stopped; " + _last_good(checkpoints)
            )
        self.skipped += 1
        log.warning(
            "%s: %s at step %d; its update is skipped (%d of train.skip_nonfinite = %d)",
            name, terms, step + 1, self.skipped, self.skip_nonfinite,
        )  # fmt: skip
        return False

    def checkpoint(
        self, step: int, every: int, max_steps: int | None, save: Callable[[], Path]
    ) -> None:
        """After `step`: `save()` a checkpoint (it returns the folder) when the run's cadence
        says so or a stop signal arrived; after a signal, Preempted naming that folder."""
        if not (self.stopping or due(step, every, max_steps)):
            return
        path = save()
        if not self.stopping:
            return
        signum = self.signum or signal.SIGTERM  # received by another process of the run
        raise Preempted(
            signum,
            f"stopped by {signal.Signals(signum).name} after step {step}; checkpoint {path} "
            "written; continue with --resume latest",
        )


def _last_good(checkpoints: Path) -> str:
    done = sorted((checkpoints / CHECKPOINTS).glob("step_*"))
    if not done:
        return "no checkpoint was written yet"
    return (
        f"the last good checkpoint is {done[-1]} (continue from it with --resume {done[-1]}, "
        "e.g. at a lower learning rate, or skip such steps with --set train.skip_nonfinite=N)"
    )


# --- processes forked during a run ---------------------------------------------------------------


def _block_before_fork() -> None:
    # blocked in the forking thread across the fork, so the child is born with them blocked
    # and none arrives in between; a signal meanwhile waits for the parent's unblock
    if _active is not None:
        _forking.mask = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)


def _unblock_in_parent() -> None:
    mask = getattr(_forking, "mask", None)
    if mask is not None:
        _forking.mask = None
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def _wait_in_child() -> None:
    if getattr(_forking, "mask", None) is not None:
        _forking.mask = None
        threading.Thread(
            target=_take_stop_signals, args=(os.getppid(),), daemon=True, name="stop-signals"
        ).start()


def _take_stop_signals(parent: int) -> None:
    """The stop signals of a process forked during a run (blocked since its birth): SIGTERM
    from `parent` (torch shutting its loader workers down, multiprocessing terminating them at
    exit) ends it, as torch's own worker handler would; any other (a scheduler's SIGTERM or a
    Ctrl-C to the process group) is the main process's to act on and is ignored here. A worker
    that ignored them all would hang its parent's exit, which terminates workers and joins them.
    Programs a worker starts inherit the blocked signals (training's workers start none)."""
    while True:
        info = signal.sigwaitinfo(_SIGNALS)
        if info.si_signo == signal.SIGTERM and info.si_pid == parent:
            os._exit(0)


_forking = threading.local()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_block_before_fork,
        after_in_parent=_unblock_in_parent,
        after_in_child=_wait_in_child,
    )


def active() -> RunGuard:
    """The guard of the run in progress (`guarded`); outside one, a guard with no lock that
    stops on the first non-finite loss."""
    return _active if _active is not None else RunGuard(None)


F = TypeVar("F", bound=Callable[..., Path])


def guarded(train: F) -> F:
    """Run a trainer `train(cfg, ...)` under a `RunGuard` of `cfg.train.output_dir`."""

    @functools.wraps(train)
    def wrapper(cfg: Any, *args: Any, **kwargs: Any) -> Path:
        global _active
        outer = _active
        run_dir = Path(cfg.train.output_dir)
        with RunGuard(run_dir, skip_nonfinite=cfg.train.skip_nonfinite) as guard:
            _active = guard
            try:
                return train(cfg, *args, **kwargs)
            finally:
                _active = outer

    return wrapper  # type: ignore[return-value]
