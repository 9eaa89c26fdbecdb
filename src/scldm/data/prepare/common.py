"""What every preparer shares: a parallel map with a progress bar, the skip report, atomic
writers for audio, and the end-of-run summary."""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import soundfile as sf
from tqdm.auto import tqdm

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")


@dataclass
class PrepareReport:
    """Counts of what a preparer wrote, reused from an earlier run, and skipped (by reason)."""

    out: Path
    written: int = 0
    reused: int = 0
    skipped: Counter = field(default_factory=Counter)
    splits: Counter = field(default_factory=Counter)
    speakers: int = 0

    def skip(self, reason: str) -> None:
        self.skipped[reason] += 1

    def summary(self) -> str:
        lines = [
            f"prepared {self.out / 'manifest.jsonl'}: {self.written + self.reused} clips of "
            f"{self.speakers} speakers ({self.written} written, {self.reused} already done)",
            "splits: " + ", ".join(f"{k} {self.splits[k]}" for k in ("train", "val", "test")),
        ]
        if self.skipped:
            lines.append(f"skipped {sum(self.skipped.values())}:")
            lines += [f"  {n:6d}  {reason}" for reason, n in self.skipped.most_common()]
        else:
            lines.append("skipped 0")
        return "\n".join(lines)


def parallel_map(
    fn: Callable[[T], R],
    items: Sequence[T],
    *,
    workers: int = 1,
    desc: str = "",
    unit: str = "item",
) -> Iterator[R]:
    """`map(fn, items)` in `workers` processes, in order, with a progress bar.

    `fn` must be a module-level function (it is pickled to the workers) and should catch its
    own per-item errors and return them as values, so one bad item never stops the run.
    """
    bar = tqdm(total=len(items), desc=desc, unit=unit, dynamic_ncols=True, disable=None)
    try:
        if workers <= 1 or len(items) <= 1:
            for item in items:
                yield fn(item)
                bar.update()
            return
        chunk = max(1, min(64, len(items) // (workers * 8)))
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for result in pool.map(fn, items, chunksize=chunk):
                yield result
                bar.update()
    finally:
        bar.close()


def write_audio(path: Path, wave: np.ndarray, sample_rate: int) -> Path:
    """Write mono float audio as 16-bit PCM wav, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    sf.write(str(tmp), np.clip(wave, -1.0, 1.0), sample_rate, subtype="PCM_16", format="WAV")
    os.replace(tmp, path)
    return path


def safe_name(text: str) -> str:
    """A file-system-safe version of an identifier (keeps letters, digits, '-', '_', '.')."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text).strip(".") or "_"


def count_rows(rows: Iterable[dict[str, Any]], report: PrepareReport) -> None:
    rows = list(rows)
    report.splits = Counter(r["split"] for r in rows)
    report.speakers = len({r["speaker_id"] for r in rows})
