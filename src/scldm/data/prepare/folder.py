"""`scldm prepare folder`: `root/<speaker>/` folders holding audio files and face images.

One manifest row per audio file, paired with the speaker's images in turn (sorted names, so the
pairing is reproducible). An optional `root/speakers.csv` (columns speaker, gender, age) labels
speakers; without it gender and age are null.
"""

from __future__ import annotations

import csv
from pathlib import Path

from scldm.data.prepare.common import ClipJob, PrepareReport, run_clip_jobs
from scldm.errors import InputError

AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".m4a", ".mp4", ".aac", ".opus", ".webm")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def _labels(root: Path) -> dict[str, dict]:
    path = root / "speakers.csv"
    if not path.is_file():
        return {}
    labels = {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "speaker" not in reader.fieldnames:
            raise InputError(
                path, "needs a header with a 'speaker' column (and optional gender, age)"
            )
        for lineno, row in enumerate(reader, 2):
            gender = (row.get("gender") or "").strip().lower()[:1] or None
            if gender not in (None, "f", "m"):
                raise InputError(
                    f"{path}:{lineno}", f"gender must be f or m, got {row['gender']!r}"
                )
            age = (row.get("age") or "").strip()
            try:
                labels[row["speaker"].strip()] = {
                    "gender": gender,
                    "age": float(age) if age else None,
                }
            except ValueError:
                raise InputError(f"{path}:{lineno}", f"age must be a number, got {age!r}") from None
    return labels


def prepare_folder(
    root: str | Path,
    out: str | Path,
    *,
    image_size: int = 224,
    seconds: float = 6.0,
    workers: int = 1,
    seed: int = 0,
    overwrite: bool = False,
) -> PrepareReport:
    """Prepare `root/<speaker>/{audio, images}` into `out` (see the module docstring)."""
    root, out = Path(root), Path(out)
    if not root.is_dir():
        raise InputError(root, "no such folder")
    labels = _labels(root)
    report = PrepareReport(out=out)
    jobs = []
    for speaker_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(p for p in speaker_dir.rglob("*") if p.is_file())
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
        for i, path in enumerate(audio):
            jobs.append(
                ClipJob(
                    speaker_id=spk,
                    clip_id=path.relative_to(speaker_dir).with_suffix("").as_posix(),
                    audio=path,
                    face=images[i % len(images)],
                    gender=info["gender"],
                    age=info["age"],
                    source="folder",
                    extras={"orig_audio": path.relative_to(root).as_posix()},
                )
            )
    return run_clip_jobs(
        jobs,
        out,
        report,
        image_size=image_size,
        seconds=seconds,
        workers=workers,
        seed=seed,
        overwrite=overwrite,
        empty_hint=f"no usable clips found under {root}",
    )
