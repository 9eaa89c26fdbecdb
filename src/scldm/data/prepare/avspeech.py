"""`scldm prepare avspeech`: the AVSpeech CSV plus the clips the user already downloaded.

The CSV has no header: `ytid,start,end,x,y`, (x, y) being the speaker's normalised face centre.
Clips are named as the official download script names them,
`{ytid}_{start:010.6f}-{end:010.6f}.mp4`. AVSpeech has no identity labels: one YouTube video is
treated as one speaker (its segments share the speaker id), which keeps splits disjoint by video.
"""

from __future__ import annotations

import csv
from pathlib import Path

from scldm.data.prepare.common import ClipJob, PrepareReport, run_clip_jobs
from scldm.errors import InputError


def clip_name(ytid: str, start: float, end: float) -> str:
    return f"{ytid}_{start:010.6f}-{end:010.6f}.mp4"


def read_avspeech_csv(path: Path) -> list[tuple[str, float, float, float, float]]:
    """Rows of the header-less AVSpeech CSV; a malformed line is an error naming it."""
    if not path.is_file():
        raise InputError(path, "no such file")
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        for lineno, fields in enumerate(csv.reader(f), 1):
            if not fields:
                continue
            try:
                ytid, start, end, x, y = fields
                rows.append((ytid.strip(), float(start), float(end), float(x), float(y)))
            except ValueError:
                raise InputError(f"{path}:{lineno}", "expected ytid,start,end,x,y") from None
    if not rows:
        raise InputError(path, "empty CSV")
    return rows


def prepare_avspeech(
    csv_path: str | Path,
    clips: str | Path,
    out: str | Path,
    *,
    face_scale: float = 0.4,
    image_size: int = 224,
    seconds: float = 6.0,
    workers: int = 1,
    seed: int = 0,
    overwrite: bool = False,
) -> PrepareReport:
    """Prepare the downloaded AVSpeech clips listed in `csv_path` (see the module docstring)."""
    csv_path, clips, out = Path(csv_path), Path(clips), Path(out)
    rows = read_avspeech_csv(csv_path)
    if not clips.is_dir():
        raise InputError(clips, "no such folder")
    report = PrepareReport(out=out)
    jobs = []
    for ytid, start, end, x, y in rows:
        video = clips / clip_name(ytid, start, end)
        if not video.is_file():
            report.skip("clip not downloaded")
            continue
        if not (0 <= x <= 1 and 0 <= y <= 1):
            report.skip("face centre outside the frame")
            continue
        jobs.append(
            ClipJob(
                speaker_id=ytid,
                clip_id=video.stem,
                audio=video,
                face=video,
                source="avspeech",
                face_point=(x, y),
                face_scale=face_scale,
                frame_seconds=min(seconds, end - start) / 2,
                extras={"ytid": ytid, "start": start, "end": end, "face_x": x, "face_y": y},
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
        empty_hint=f"no downloaded clip of {csv_path} found in {clips}",
    )
