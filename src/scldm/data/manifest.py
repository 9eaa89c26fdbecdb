"""`manifest.jsonl`, the one format every preparer writes and every trainer reads (DESIGN.md §4).

One JSON object per line, one line per clip. Required fields: `speaker_id` (str), `audio` and
`face` (paths relative to the manifest's folder), `split` (train/val/test, disjoint by speaker),
`gender` ("f", "m" or null), `age` (years or null), `source` (str). Any other field is a
source-specific extra (SynthVox stores its hidden attributes there).
"""

from __future__ import annotations

import json
import random
import string
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from scldm.errors import InputError
from scldm.io import write_text

MANIFEST_NAME = "manifest.jsonl"
SPLITS = ("train", "val", "test")
REQUIRED = ("speaker_id", "audio", "face", "split", "gender", "age", "source")
_TYPES: dict[str, tuple[type, ...]] = {
    "speaker_id": (str,),
    "audio": (str,),
    "face": (str,),
    "split": (str,),
    "source": (str,),
}


def validate_row(row: Any, where: str = "row") -> dict[str, Any]:
    """Check one manifest row against the schema; raise `InputError` naming `where` otherwise."""
    if not isinstance(row, dict):
        raise InputError(where, f"expected a JSON object, got {type(row).__name__}")
    missing = [k for k in REQUIRED if k not in row]
    if missing:
        raise InputError(where, f"missing field(s) {', '.join(missing)}")
    for key, types in _TYPES.items():
        if not isinstance(row[key], types) or not row[key]:
            raise InputError(where, f"field {key!r} must be a non-empty string, got {row[key]!r}")
    if row["split"] not in SPLITS:
        raise InputError(where, f"split must be one of {'/'.join(SPLITS)}, got {row['split']!r}")
    if row["gender"] not in ("f", "m", None):
        raise InputError(where, f"gender must be 'f', 'm' or null, got {row['gender']!r}")
    age = row["age"]
    if age is not None and (isinstance(age, bool) or not isinstance(age, int | float) or age < 0):
        raise InputError(where, f"age must be a non-negative number or null, got {age!r}")
    for key in ("audio", "face"):
        if Path(row[key]).is_absolute() or ".." in Path(row[key]).parts:
            raise InputError(
                where, f"{key} path must be relative to the manifest folder: {row[key]!r}"
            )
    return row


def check_speaker_disjoint(rows: Iterable[Mapping[str, Any]], where: str = "manifest") -> None:
    """Raise if any speaker appears in more than one split (retrieval metrics would leak)."""
    seen: dict[str, str] = {}
    for row in rows:
        first = seen.setdefault(row["speaker_id"], row["split"])
        if first != row["split"]:
            raise InputError(
                where, f"speaker {row['speaker_id']!r} is in both {first!r} and {row['split']!r}"
            )


def read_manifest(path: str | Path, *, split: str | None = None) -> list[dict[str, Any]]:
    """Read and validate a manifest (a file or the folder holding `manifest.jsonl`).

    Returns the rows (optionally only those of `split`). Schema errors name the line.
    """
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    if not path.is_file():
        raise InputError(path, "no such manifest; prepare the data first (scldm prepare ...)")
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{path}:{lineno}", f"invalid JSON ({e.msg})") from None
            rows.append(validate_row(row, f"{path}:{lineno}"))
    if not rows:
        raise InputError(path, "manifest has no rows")
    check_speaker_disjoint(rows, str(path))
    if split is not None:
        if split not in SPLITS:
            raise InputError(None, f"split must be one of {'/'.join(SPLITS)}, got {split!r}")
        rows = [r for r in rows if r["split"] == split]
    return rows


def write_manifest(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Validate and write rows as `manifest.jsonl`, atomically (a folder gets the default name)."""
    path = Path(path)
    if path.is_dir() or not path.suffix:
        path = path / MANIFEST_NAME
    for i, row in enumerate(rows):
        validate_row(dict(row), f"row {i}")
    check_speaker_disjoint(rows)
    lines = (json.dumps(dict(row), ensure_ascii=False, sort_keys=False) + "\n" for row in rows)
    return write_text(path, "".join(lines))


# --- Speaker-disjoint splits -----------------------------------------------------------------


def split_speakers(
    genders: Mapping[str, str | None],
    *,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int = 0,
) -> dict[str, str]:
    """Assign every speaker to train/val/test, stratified by gender, reproducibly.

    `genders` maps speaker id → "f"/"m"/None. Speakers are ordered by gender (unknown is its
    own group), shuffled within each group with `seed`, and the test then val speakers are
    picked at evenly spaced positions of that order: every split keeps the population's
    gender balance, and with three or more speakers every split asked for gets one.
    """
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1: {fractions}")
    groups: dict[str | None, list[str]] = defaultdict(list)
    for spk in sorted(genders):
        groups[genders[spk]].append(spk)
    rng = random.Random(seed)
    order: list[str] = []
    for key in sorted(groups, key=str):
        rng.shuffle(groups[key])
        order += groups[key]
    n = len(order)
    counts = [round(n * f) for f in fractions]
    if n >= 3:
        counts = [max(c, 1) if f > 0 else c for c, f in zip(counts, fractions, strict=True)]
    n_test = min(counts[2], n)
    n_val = n - n_test if fractions[0] == 0 else min(counts[1], n - n_test)
    out = {}
    remaining = order
    for name, k in (("test", n_test), ("val", n_val)):
        offset = rng.random()
        picks = {int((i + offset) * len(remaining) / k) for i in range(k)} if k else set()
        out.update({remaining[p]: name for p in picks})
        remaining = [s for p, s in enumerate(remaining) if p not in picks]
    out.update(dict.fromkeys(remaining, "train"))
    return out


def split_official(
    sets: Mapping[str, str],
    genders: Mapping[str, str | None],
    *,
    val_fraction: float = 0.05,
    seed: int = 0,
) -> dict[str, str]:
    """VoxCeleb's official split: its `test` set is our test; `dev` is cut into train and val."""
    dev = {s: g for s, g in genders.items() if sets[s] != "test"}
    out = split_speakers(dev, fractions=(1 - val_fraction, val_fraction, 0.0), seed=seed)
    out.update({s: "test" for s in genders if sets[s] == "test"})
    return out


def split_wen(
    names: Mapping[str, str], genders: Mapping[str, str | None], *, seed: int = 0
) -> dict[str, str]:
    """Wen et al. (NeurIPS 2019): names starting F–Z train; A–E are halved into val and test."""
    held = {
        s: genders[s] for s, name in names.items() if name[:1].upper() in string.ascii_uppercase[:5]
    }
    out = {s: "train" for s in names if s not in held}
    out.update(split_speakers(held, fractions=(0.0, 0.5, 0.5), seed=seed))
    return out
