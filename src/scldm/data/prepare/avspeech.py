"""`scldm prepare avspeech`: the AVSpeech CSV plus the clips the user already downloaded.

The CSV has no header: `ytid,start,end,x,y`, (x, y) being the speaker's normalised face centre.
Clips are named as the official download script names them,
`{ytid}_{start:010.6f}-{end:010.6f}.mp4` (or that name as a `.wav` + `.jpg` pair). AVSpeech has
no identity labels: one YouTube video is treated as one speaker (its segments share the speaker
id), which keeps splits disjoint by video. Reference: Ephrat et al., SIGGRAPH 2018; Speech2Face
(Oh et al., CVPR 2019) §1.2 of REFERENCES.md for the face crop.
"""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

from scldm.data.prepare.common import ClipJob, PrepareReport, run_clip_jobs
from scldm.data.prepare.options import PrepareOptions
from scldm.errors import InputError

VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm")
Row = tuple[str, float, float, float, float]


def clip_stem(ytid: str, start: float, end: float) -> str:
    """The official download script's clip name, without the suffix."""
    return f"{ytid}_{start:010.6f}-{end:010.6f}"


def read_avspeech_csv(path: Path) -> list[Row]:
    """Rows (ytid, start, end, x, y) of the header-less AVSpeech CSV.

    A header line someone added is tolerated; any other malformed line is an error naming it.
    """
    if not path.is_file():
        raise InputError(path, "no such file")
    rows = []
    with open(path, newline="", encoding="utf-8-sig") as f:
        for lineno, fields in enumerate(csv.reader(f), 1):
            if not fields:
                continue
            try:
                ytid, start, end, x, y = (s.strip() for s in fields)
                rows.append((ytid, float(start), float(end), float(x), float(y)))
            except ValueError:
                if lineno == 1 and len(fields) == 5:
                    continue  # a header line, e.g. "ytid,start,end,x,y"
                raise InputError(f"{path}:{lineno}", "expected ytid,start,end,x,y") from None
    if not rows:
        raise InputError(path, "no rows (expected header-less ytid,start,end,x,y lines)")
    return rows


def _find_clip(stem: str, names: set[str], clips: Path) -> tuple[Path, Path] | None:
    """(audio source, face source) of a clip: the video twice, or a wav + image pair."""
    for suffix in VIDEO_SUFFIXES:
        if stem + suffix in names:
            return clips / (stem + suffix), clips / (stem + suffix)
    if stem + ".wav" in names:
        for suffix in (".jpg", ".png"):
            if stem + suffix in names:
                return clips / (stem + ".wav"), clips / (stem + suffix)
    return None


def prepare_avspeech(
    csv_path: str | Path,
    clips: str | Path,
    out: str | Path,
    *,
    face_scale: float = 0.4,
    options: PrepareOptions | None = None,
) -> PrepareReport:
    """Prepare the downloaded AVSpeech clips listed in `csv_path`; returns the report.

    Per clip: the first `options.seconds` of audio (ffmpeg), and the frame in the middle of them
    cropped to a square of `face_scale`·(shorter side) around the CSV's (x, y) — replaced by a
    dlib 5-point aligned crop of the detected face containing (x, y) when the `eval` extra is
    installed. Rows whose clip is not in `clips` are counted as "clip not downloaded".
    """
    csv_path, clips, out = Path(csv_path), Path(clips), Path(out)
    options = options or PrepareOptions()
    rows = read_avspeech_csv(csv_path)
    if not clips.is_dir():
        raise InputError(clips, "no such folder")
    if not 0 < face_scale <= 1:
        raise InputError(None, f"--face-scale must be in (0, 1], got {face_scale}")
    if shutil.which("ffmpeg") is None:
        raise InputError(None, "AVSpeech clips need ffmpeg; install it (apt-get install ffmpeg)")
    names = set(os.listdir(clips))  # one listing instead of a stat per row (millions of rows)
    report = PrepareReport(out=out)
    jobs, seen = [], set()
    for ytid, start, end, x, y in rows:
        stem = clip_stem(ytid, start, end)
        if stem in seen:
            report.skip("duplicate CSV row")
            continue
        seen.add(stem)
        found = _find_clip(stem, names, clips)
        if found is None:
            report.skip("clip not downloaded")
            continue
        if not (0 <= x <= 1 and 0 <= y <= 1) or end <= start:
            report.skip("bad CSV row (face centre outside [0, 1] or end <= start)")
            continue
        audio, face = found
        jobs.append(
            ClipJob(
                speaker_id=ytid,
                clip_id=stem,
                audio=audio,
                face=face,
                source="avspeech",
                face_point=(x, y),
                face_scale=face_scale,
                frame_seconds=min(options.seconds, end - start) / 2,
                extras={
                    "ytid": ytid,
                    "start": start,
                    "end": end,
                    "face_x": x,
                    "face_y": y,
                    "orig_audio": audio.name,
                },
            )
        )
    return run_clip_jobs(
        jobs,
        out,
        report,
        options,
        empty_hint=f"no usable clips found under {clips} (for the rows of {csv_path})",
    )
