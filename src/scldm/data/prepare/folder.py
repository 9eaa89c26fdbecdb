"""`scldm prepare folder`: `root/<speaker>/` folders holding audio files and face images.

One manifest row per audio file, paired with the speaker's images in turn (natural name order,
so the pairing is reproducible). An optional `root/speakers.csv` (columns speaker, gender, age)
labels speakers; without it gender and age are null.
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from pathlib import Path

from scldm.data.prepare.common import ClipJob, PrepareReport, run_clip_jobs, safe_name
from scldm.data.prepare.options import PrepareOptions
from scldm.errors import InputError

AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac", ".mp4", ".webm")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
LABELS_NAME = "speakers.csv"


def read_labels(path: Path) -> dict[str, dict[str, str | float | None]]:
    """{speaker: {"gender": "f"/"m"/None, "age": years or None}} from a speakers.csv file.

    Gender accepts f/m/female/male in any case; empty cells are null. A bad cell is an error
    naming the line.
    """
    labels: dict[str, dict[str, str | float | None]] = {}
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        fields = [c.strip() for c in reader.fieldnames or []]
        if "speaker" not in fields:
            raise InputError(
                path, "needs a header with a 'speaker' column (and optional gender, age)"
            )
        reader.fieldnames = fields  # tolerate "speaker, gender, age"
        for lineno, row in enumerate(reader, 2):
            gender = (row.get("gender") or "").strip().lower()
            gender = {"female": "f", "male": "m"}.get(gender, gender) or None
            if gender not in (None, "f", "m"):
                raise InputError(f"{path}:{lineno}", f"gender must be f or m, got {gender!r}")
            age = (row.get("age") or "").strip()
            try:
                years = float(age) if age else None
            except ValueError:
                raise InputError(f"{path}:{lineno}", f"age must be a number, got {age!r}") from None
            if years is not None and years < 0:
                raise InputError(f"{path}:{lineno}", f"age must be >= 0, got {age!r}")
            labels[(row.get("speaker") or "").strip()] = {"gender": gender, "age": years}
    return labels


def _natural_key(path: Path) -> tuple:
    # clip2.wav before clip10.wav, as a person numbering files expects
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.as_posix()))


def _files(speaker_dir: Path) -> list[Path]:
    """Every non-hidden file below a speaker folder (sub-folders included), in natural order."""
    files = (p for p in speaker_dir.rglob("*") if p.is_file())
    visible = (
        p for p in files if not any(s.startswith(".") for s in p.relative_to(speaker_dir).parts)
    )
    return sorted(visible, key=_natural_key)


def _clip_ids(audio: list[Path], speaker_dir: Path) -> list[str]:
    """Output names for a speaker's audio files: the path without its suffix, unless two files
    share it (a.wav and a.flac): then both keep their suffix, so neither overwrites the other."""
    rel = [p.relative_to(speaker_dir) for p in audio]
    stems = Counter(safe_name(r.with_suffix("").as_posix()) for r in rel)
    ids, used = [], set()
    for r in rel:
        clip = safe_name(r.with_suffix("").as_posix())
        clip = clip if stems[clip] == 1 else safe_name(r.as_posix())
        while clip in used:  # names that differ only in characters safe_name replaces
            clip += "_"
        used.add(clip)
        ids.append(clip)
    return ids


def prepare_folder(
    root: str | Path,
    out: str | Path,
    *,
    options: PrepareOptions | None = None,
) -> PrepareReport:
    """Prepare `root/<speaker>/{audio, images}` into `out` (see the module docstring).

    Hidden folders and the output folder (when it lies inside `root`) are not speakers. Speaker
    folders without audio or without images are skipped and counted (one count per folder);
    unreadable files are skipped per clip.
    """
    root, out = Path(root), Path(out)
    options = options or PrepareOptions()
    if not root.is_dir():
        raise InputError(root, "no such folder")
    labels_path = root / LABELS_NAME
    labels = read_labels(labels_path) if labels_path.is_file() else {}
    report = PrepareReport(out=out)
    inside = out.resolve()
    speaker_dirs = sorted(
        p
        for p in root.iterdir()
        if p.is_dir()
        and not p.name.startswith(".")
        and p.resolve() not in (inside, *inside.parents)
    )
    jobs = []
    for speaker_dir in speaker_dirs:
        files = _files(speaker_dir)
        audio = [p for p in files if p.suffix.lower() in AUDIO_SUFFIXES]
        images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
        if not audio:
            report.skip("speaker folder without audio")
            continue
        if not images:
            report.skip("speaker folder without face images")
            continue
        spk = speaker_dir.name
        info = labels.get(spk, {"gender": None, "age": None})
        for i, (path, clip) in enumerate(zip(audio, _clip_ids(audio, speaker_dir), strict=True)):
            jobs.append(
                ClipJob(
                    speaker_id=spk,
                    clip_id=clip,
                    audio=path,
                    face=images[i % len(images)],
                    gender=info["gender"],
                    age=info["age"],
                    source="folder",
                    extras={
                        "orig_audio": path.relative_to(root).as_posix(),
                        "orig_face": images[i % len(images)].relative_to(root).as_posix(),
                    },
                )
            )
    return run_clip_jobs(
        jobs,
        out,
        report,
        options,
        empty_hint=f"no usable clips found under {root}",
    )
