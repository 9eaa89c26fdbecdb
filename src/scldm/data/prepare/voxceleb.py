"""`scldm prepare voxceleb`: VoxCeleb1 (wav) or VoxCeleb2 (m4a) audio with face images.

Audio: `wav/idXXXXX/<ytid>/NNNNN.wav` (VoxCeleb1) or `aac/idXXXXX/<ytid>/NNNNN.m4a` (VoxCeleb2),
found anywhere under `--audio-root` (dev and test trees alike). Faces: the VoxCeleb1 face crops
`unzippedIntervalFaces/data/<VGGFace1 name>/1.6/<ytid>/<utterance as int>/*.jpg` (the middle
frame of the utterance's track), or one folder of images per identity (named by VGGFace name,
VGGFace2 id or VoxCeleb id), cycled over the speaker's clips. Metadata: the tab-separated
`vox1_meta.csv` / `vox2_meta.csv` (name, gender, official set), recognised by their headers.
References: Nagrani et al., Interspeech 2017; Chung et al., Interspeech 2018 (REFERENCES.md §6).
"""

from __future__ import annotations

import csv
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from scldm.data.manifest import split_official, split_wen
from scldm.data.prepare.common import ClipJob, PrepareReport, run_clip_jobs
from scldm.data.prepare.options import PrepareOptions
from scldm.errors import InputError

SPEAKER_DIR = re.compile(r"^id\d{5}$")
AUDIO_SUFFIXES = (".wav", ".m4a")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
# the first columns of each meta file, after stripping vox2_meta.csv's trailing spaces
VOX1_HEADER = ["VoxCeleb1 ID", "VGGFace1 ID", "Gender", "Nationality", "Set"]
VOX2_HEADER = ["Name", "VoxCeleb2 ID", "VGGFace2 ID", "Gender", "Set"]


@dataclass(frozen=True)
class Speaker:
    """One row of a VoxCeleb meta file."""

    voxceleb_id: str
    name: str  # VGGFace1 name (VoxCeleb1) or the Name column (VoxCeleb2)
    face_id: str  # VGGFace1 name or VGGFace2 id: how face folders are named
    gender: str | None
    set: str  # "dev" or "test"
    nationality: str | None = None


def read_meta(path: Path) -> tuple[str, dict[str, Speaker]]:
    """Parse vox1_meta.csv or vox2_meta.csv: ("voxceleb1"|"voxceleb2", {voxceleb id: Speaker})."""
    if not path.is_file():
        raise InputError(path, "no such file")
    with open(path, newline="", encoding="utf-8-sig") as f:
        lines = [[cell.strip() for cell in row] for row in csv.reader(f, delimiter="\t") if row]
    if not lines:
        raise InputError(path, "empty metadata file")
    header = lines[0]
    if header[:5] == VOX1_HEADER:
        version, id_col, name_col, face_col = "voxceleb1", 0, 1, 1
    elif header[:5] == VOX2_HEADER:
        version, id_col, name_col, face_col = "voxceleb2", 1, 0, 2
    else:
        raise InputError(
            path,
            "not a VoxCeleb meta file: expected the tab-separated header of vox1_meta.csv "
            f"({', '.join(VOX1_HEADER)}) or vox2_meta.csv, got {', '.join(header[:5])}",
        )
    gender_col, set_col = header.index("Gender"), header.index("Set")
    speakers = {}
    for lineno, row in enumerate(lines[1:], 2):
        if len(row) < 5:
            raise InputError(f"{path}:{lineno}", "expected 5 tab-separated columns")
        gender = row[gender_col].lower()[:1]
        speakers[row[id_col]] = Speaker(
            voxceleb_id=row[id_col],
            name=row[name_col],
            face_id=row[face_col],
            gender=gender if gender in ("f", "m") else None,
            set=row[set_col].lower(),
            nationality=row[3] if version == "voxceleb1" else None,
        )
    return version, speakers


def find_utterances(audio_root: Path, *, exclude: Path | None = None) -> dict[str, list[Path]]:
    """{voxceleb id: sorted utterance files} for every idXXXXX/<ytid>/NNNNN.{wav,m4a} below.

    One walk of the tree (symlinks followed: datasets often live elsewhere), which stops at the
    <ytid> level; `exclude` (the output folder, if it lies inside) is not entered.
    """
    found: dict[str, list[Path]] = {}
    skip = exclude.resolve() if exclude is not None else None
    for dirpath, dirnames, filenames in os.walk(audio_root, followlinks=True):
        here = Path(dirpath)
        if skip is not None and here.name == skip.name and here.resolve() == skip:
            dirnames.clear()
            continue
        if SPEAKER_DIR.match(here.parent.name):  # here is idXXXXX/<ytid>: the clips
            dirnames.clear()
            found.setdefault(here.parent.name, []).extend(
                here / f for f in filenames if f.lower().endswith(AUDIO_SUFFIXES)
            )
    return {spk: sorted(paths) for spk, paths in sorted(found.items()) if paths}


def _faces_data_dir(faces_root: Path) -> Path:
    """`unzippedIntervalFaces/data` when faces_root is it or lies above it, else faces_root."""
    for candidate in (faces_root / "unzippedIntervalFaces" / "data", faces_root / "data"):
        if candidate.is_dir():
            return candidate
    return faces_root


def _natural_key(path: Path) -> tuple:
    # crop frames may be numbered without zero padding: 2.jpg must come before 10.jpg
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name))


def _images(folder: Path) -> list[Path]:
    files = (p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    return sorted((p for p in files if not p.name.startswith(".")), key=_natural_key)


class _SpeakerFaces:
    """Picks the face image for each of one speaker's utterances.

    Crop layout: the middle frame of the utterance's own track (`1.6/<ytid>/<int utt>/`); if that
    track is missing, the middle frames of the speaker's other tracks in turn. Image-folder
    layout: the folder's images in turn. Either way the choice depends only on the files.
    """

    def __init__(self, face_dir: Path) -> None:
        self.face_dir = face_dir
        self._fallback: list[Path] | None = None

    def _track_face(self, track: Path) -> Path | None:
        frames = _images(track) if track.is_dir() else []
        return frames[len(frames) // 2] if frames else None

    def pick(self, utterance: Path, index: int) -> tuple[Path | None, bool]:
        """(the face image, whether it is a frame of the utterance's own track)."""
        tracks = self.face_dir / "1.6"
        if utterance.stem.isdigit():
            face = self._track_face(tracks / utterance.parent.name / str(int(utterance.stem)))
            if face is not None:
                return face, True
        if self._fallback is None:
            if tracks.is_dir():
                found = (self._track_face(t) for t in sorted(tracks.glob("*/*")))
                self._fallback = [f for f in found if f is not None]
            else:
                self._fallback = _images(self.face_dir)
        if not self._fallback:
            return None, False
        return self._fallback[index % len(self._fallback)], not tracks.is_dir()


def _speaker_face_dir(data: Path, spk: Speaker) -> Path | None:
    for name in (spk.name, spk.face_id, spk.voxceleb_id):
        if name and (data / name).is_dir():
            return data / name
    return None


def prepare_voxceleb(
    audio_root: str | Path,
    faces_root: str | Path,
    meta: str | Path,
    out: str | Path,
    *,
    split: str = "official",
    max_clips_per_speaker: int | None = None,
    options: PrepareOptions | None = None,
) -> PrepareReport:
    """Prepare VoxCeleb1 or 2 into `out` (see the module docstring); returns the report.

    `split`: "official" (VoxCeleb's test identities are test, dev is cut into train/val) or
    "wen" (names A–E val/test, F–Z train). Speakers missing from the meta file or without face
    images, and unreadable clips, are skipped and counted by reason (counts are clips).
    """
    audio_root, faces_root, out = Path(audio_root), Path(faces_root), Path(out)
    options = options or PrepareOptions()
    for folder in (audio_root, faces_root):
        if not folder.is_dir():
            raise InputError(folder, "no such folder")
    if split not in ("official", "wen"):
        raise InputError(None, f"--split must be official or wen, got {split!r}")
    if max_clips_per_speaker is not None and max_clips_per_speaker < 1:
        raise InputError(None, f"--max-clips-per-speaker must be >= 1, got {max_clips_per_speaker}")
    version, speakers = read_meta(Path(meta))
    utterances = find_utterances(audio_root, exclude=out)
    if not utterances:
        raise InputError(
            audio_root, "no idXXXXX/<ytid>/NNNNN.wav or .m4a utterances found below this folder"
        )
    if shutil.which("ffmpeg") is None and any(
        p.suffix.lower() == ".m4a" for paths in utterances.values() for p in paths
    ):
        raise InputError(
            None, "VoxCeleb2 m4a audio needs ffmpeg; install it (apt-get install ffmpeg)"
        )
    data = _faces_data_dir(faces_root)
    report = PrepareReport(out=out)
    jobs = []
    for spk_id, paths in utterances.items():
        spk = speakers.get(spk_id)
        if spk is None:
            report.skipped["speaker not in the meta file"] += len(paths)
            continue
        face_dir = _speaker_face_dir(data, spk)
        if face_dir is None:
            report.skipped["no face images for the speaker"] += len(paths)
            continue
        faces = _SpeakerFaces(face_dir)
        for i, utt in enumerate(paths[:max_clips_per_speaker]):
            face, own = faces.pick(utt, i)
            if face is None:
                report.skip("no face image for the utterance")
                continue
            if not own:  # kept, and said: the face is the speaker's, not of this clip
                report.note("faces from another face track of the speaker (none for the utterance)")
            jobs.append(
                ClipJob(
                    speaker_id=spk_id,
                    clip_id=f"{utt.parent.name}_{utt.stem}",
                    audio=utt,
                    face=face,
                    gender=spk.gender,
                    source=version,
                    extras={
                        "name": spk.name,
                        "ytid": utt.parent.name,
                        "utterance": utt.stem,
                        "nationality": spk.nationality,
                        "orig_audio": utt.relative_to(audio_root).as_posix(),
                        "orig_face": face.relative_to(data).as_posix(),
                        "face_from_other_track": not own,
                    },
                )
            )

    def split_of(genders: dict[str, str | None]) -> dict[str, str]:
        if split == "wen":
            return split_wen({s: speakers[s].name for s in genders}, genders, seed=options.seed)
        return split_official({s: speakers[s].set for s in genders}, genders, seed=options.seed)

    return run_clip_jobs(
        jobs,
        out,
        report,
        options,
        split_of=split_of,
        empty_hint=f"no usable clips found under {audio_root}",
    )
