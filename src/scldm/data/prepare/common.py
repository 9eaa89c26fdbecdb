"""What every preparer shares: a parallel map with a progress bar, the skip report, atomic
writers for audio, and the end-of-run summary."""

from __future__ import annotations

import io
import logging
import subprocess
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import soundfile as sf
from PIL import Image
from tqdm.auto import tqdm

from scldm.data.prepare.options import PrepareOptions
from scldm.io import atomic_path

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
    noted: Counter = field(default_factory=Counter)  # clips kept with a caveat, by caveat

    def skip(self, reason: str) -> None:
        self.skipped[reason] += 1

    def note(self, caveat: str) -> None:
        self.noted[caveat] += 1

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
        if self.noted:
            lines.append(f"kept with a caveat {sum(self.noted.values())}:")
            lines += [f"  {n:6d}  {caveat}" for caveat, n in self.noted.most_common()]
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
    with atomic_path(path) as tmp:
        sf.write(str(tmp), np.clip(wave, -1.0, 1.0), sample_rate, subtype="PCM_16", format="WAV")
    return path


def safe_name(text: str) -> str:
    """A file-system-safe version of an identifier (keeps letters, digits, '-', '_', '.')."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text).strip(".") or "_"


def count_rows(rows: Iterable[dict[str, Any]], report: PrepareReport) -> None:
    rows = list(rows)
    report.splits = Counter(r["split"] for r in rows)
    report.speakers = len({r["speaker_id"] for r in rows})


# --- The per-clip work every real-corpus preparer shares ---------------------------------------


VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".mov", ".avi")


@dataclass(frozen=True)
class ClipJob:
    """One clip to prepare: where its audio and face come from, and its labels.

    `face` is an image, or a video whose frame at `frame_seconds` is used. With `face_point`
    (normalised x, y: AVSpeech's face centre) the crop is taken around that point — refined
    by dlib's detector and 5-point alignment when the `eval` extra is installed — instead of
    the centred square.
    """

    speaker_id: str
    clip_id: str
    audio: Path
    face: Path
    gender: str | None = None
    age: float | None = None
    source: str = "folder"
    extras: dict[str, Any] = field(default_factory=dict)
    face_point: tuple[float, float] | None = None
    face_scale: float = 0.4
    frame_seconds: float = 0.0

    @property
    def audio_out(self) -> str:
        return f"audio/{safe_name(self.speaker_id)}/{safe_name(self.clip_id)}.wav"

    @property
    def face_out(self) -> str:
        return f"faces/{safe_name(self.speaker_id)}/{safe_name(self.clip_id)}.jpg"


def _prepare_clip(args: tuple[ClipJob, Path, int, float, bool]) -> str | None:
    """Write one clip's audio and face crop; return None, "reused", or a skip reason."""
    from scldm.audio import load_audio
    from scldm.errors import InputError
    from scldm.faces import center_crop_resize, load_face, save_image

    job, out, image_size, seconds, overwrite = args
    audio_out, face_out = out / job.audio_out, out / job.face_out
    if not overwrite and audio_out.is_file() and face_out.is_file():
        return "reused"
    try:
        wave = load_audio(job.audio, max_seconds=seconds)
    except InputError as e:
        return f"unreadable audio ({e.problem.split(' (')[0]})"
    if wave.size < 0.5 * 16_000:
        return "audio shorter than 0.5 s"
    try:
        if job.face.suffix.lower() in VIDEO_SUFFIXES:
            image = video_frame(job.face, job.frame_seconds)
        else:
            image = load_face(job.face)
    except InputError as e:
        return f"unreadable face image ({e.problem.split(' (')[0]})"
    if job.face_point is None:
        face = center_crop_resize(image, image_size)
    else:
        face = _face_near(image, job.face_point, job.face_scale, image_size)
    write_audio(audio_out, wave, 16_000)
    save_image(face, face_out, quality=95)
    return None


def video_frame(path: Path, seconds: float) -> Image.Image:
    """The frame of a video at `seconds` (the last one if the video is shorter), via ffmpeg."""
    from scldm.errors import InputError

    if not path.is_file():
        raise InputError(path, "no such file")
    for seek in (seconds, 0.0):
        cmd = [
            "ffmpeg",
            "-nostdin",
            "-loglevel",
            "error",
            "-ss",
            f"{seek:.3f}",
            "-i",
            str(path),
            "-frames:v",
            "1",
            "-f",
            "image2pipe",
            "-vcodec",
            "png",
            "-",
        ]
        proc = subprocess.run(cmd, capture_output=True)
        if proc.returncode == 0 and proc.stdout:
            return Image.open(io.BytesIO(proc.stdout)).convert("RGB")
    raise InputError(path, "no video frame could be decoded")


def _face_near(
    image: Image.Image, point: tuple[float, float], scale: float, size: int
) -> Image.Image:
    from scldm.faces import align_face, center_crop_resize, crop_around, detect_faces

    px, py = point[0] * image.width, point[1] * image.height
    try:  # refine with the detected face that contains the given centre, if any
        boxes = [b for b in detect_faces(image) if b[0] <= px <= b[2] and b[1] <= py <= b[3]]
    except ValueError:  # InputError: the eval extra (dlib) is not installed
        boxes = []
    if boxes:
        return align_face(image, size, box=boxes[0])
    return center_crop_resize(crop_around(image, *point, scale=scale), size)


def run_clip_jobs(
    jobs: Sequence[ClipJob],
    out: Path,
    report: PrepareReport,
    options: PrepareOptions,
    *,
    empty_hint: str,
    split_of: Callable[[dict[str, str | None]], dict[str, str]] | None = None,
) -> PrepareReport:
    """Prepare every job in parallel, assign speaker-disjoint splits and write the manifest.

    `split_of` maps {speaker: gender} to {speaker: split}; by default a seeded, gender-stratified
    80/10/10 split (`options.seed`). Items already done are reused unless `options.overwrite`.
    """
    from scldm.data.manifest import split_speakers, write_manifest
    from scldm.errors import InputError

    options.check()
    args = [(job, out, options.image_size, options.seconds, options.overwrite) for job in jobs]
    done = []
    for job, result in zip(
        jobs,
        parallel_map(_prepare_clip, args, workers=options.workers, desc="prepare", unit="clip"),
        strict=True,
    ):
        if result is None:
            report.written += 1
        elif result == "reused":
            report.reused += 1
        else:
            report.skip(result)
            continue
        done.append(job)
    if not done:
        raise InputError(None, empty_hint)
    genders = {job.speaker_id: job.gender for job in done}
    splits = (split_of or (lambda g: split_speakers(g, seed=options.seed)))(genders)
    rows = [
        {
            "speaker_id": job.speaker_id,
            "audio": job.audio_out,
            "face": job.face_out,
            "split": splits[job.speaker_id],
            "gender": job.gender,
            "age": job.age,
            "source": job.source,
            **job.extras,
        }
        for job in done
    ]
    write_manifest(rows, out)
    count_rows(rows, report)
    return report
