"""`scldm prepare voxceleb`: VoxCeleb1 (wav) or VoxCeleb2 (m4a) audio with face images.

Audio: `wav/idXXXXX/<ytid>/NNNNN.wav` (VoxCeleb1) or `aac/idXXXXX/<ytid>/NNNNN.m4a` (VoxCeleb2),
found anywhere under `--audio-root` (dev and test trees alike). Faces: the VoxCeleb1 face crops
`unzippedIntervalFaces/data/<VGGFace1 name>/1.6/<ytid>/<utterance as int>/*.jpg` (the middle
frame of the utterance's track), or one folder of images per identity (named by VGGFace name,
VGGFace2 id or VoxCeleb id), cycled over the speaker's clips. Metadata: the tab-separated
`vox1_meta.csv` / `vox2_meta.csv` (name, gender, official set), recognised by their headers.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

from scldm.data.manifest import split_official, split_wen
from scldm.data.prepare.common import ClipJob, PrepareReport, run_clip_jobs
from scldm.errors import InputError

SPEAKER_DIR = re.compile(r"^id\d{5}$")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True)
class Speaker:
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
    with open(path, newline="", encoding="utf-8") as f:
        lines = [[cell.strip() for cell in row] for row in csv.reader(f, delimiter="\t") if row]
    if not lines:
        raise InputError(path, "empty metadata file")
    header = lines[0]
    if header[:3] == ["VoxCeleb1 ID", "VGGFace1 ID", "Gender"] and "Set" in header:
        version, cols = "voxceleb1", {"id": 0, "name": 1, "face": 1}
    elif header[:4] == ["Name", "VoxCeleb2 ID", "VGGFace2 ID", "Gender"] and "Set" in header:
        version, cols = "voxceleb2", {"id": 1, "name": 0, "face": 2}
    else:
        raise InputError(path, f"not a VoxCeleb meta file (header {header[:5]})")
    g, s = header.index("Gender"), header.index("Set")
    nat = header.index("Nationality") if "Nationality" in header else None
    speakers = {}
    for lineno, row in enumerate(lines[1:], 2):
        if len(row) < len(header):
            raise InputError(f"{path}:{lineno}", f"expected {len(header)} tab-separated columns")
        gender = row[g].lower()[:1] or None
        speakers[row[cols["id"]]] = Speaker(
            voxceleb_id=row[cols["id"]],
            name=row[cols["name"]],
            face_id=row[cols["face"]],
            gender=gender if gender in ("f", "m") else None,
            set=row[s].lower(),
            nationality=row[nat] if nat is not None else None,
        )
    return version, speakers


def find_utterances(audio_root: Path) -> dict[str, list[Path]]:
    """{voxceleb id: sorted utterance files} for every idXXXXX/<ytid>/NNNNN.{wav,m4a} below."""
    found: dict[str, list[Path]] = {}
    for suffix in ("*.wav", "*.m4a"):
        for path in audio_root.rglob(suffix):
            if SPEAKER_DIR.match(path.parent.parent.name):
                found.setdefault(path.parent.parent.name, []).append(path)
    return {spk: sorted(paths) for spk, paths in sorted(found.items())}


def _faces_data_dir(faces_root: Path) -> Path:
    for candidate in (faces_root / "unzippedIntervalFaces" / "data", faces_root / "data"):
        if candidate.is_dir():
            return candidate
    return faces_root


def _speaker_face_dir(data: Path, spk: Speaker) -> Path | None:
    for name in (spk.name, spk.face_id, spk.voxceleb_id):
        if name and (data / name).is_dir():
            return data / name
    return None


def _face_for(
    face_dir: Path, utterance: Path, index: int, cache: dict[Path, list[Path]]
) -> Path | None:
    """The middle frame of this utterance's crop track, else the speaker's images in turn."""
    track = face_dir / "1.6" / utterance.parent.name / str(int(utterance.stem))
    if track.is_dir():
        frames = sorted(p for p in track.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if frames:
            return frames[len(frames) // 2]
    if face_dir not in cache:
        cache[face_dir] = sorted(
            p for p in face_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
    images = cache[face_dir]
    return images[index % len(images)] if images else None


def prepare_voxceleb(
    audio_root: str | Path,
    faces_root: str | Path,
    meta: str | Path,
    out: str | Path,
    *,
    split: str = "official",
    max_clips_per_speaker: int | None = None,
    image_size: int = 224,
    seconds: float = 6.0,
    workers: int = 1,
    seed: int = 0,
    overwrite: bool = False,
) -> PrepareReport:
    """Prepare VoxCeleb1 or 2 into `out` (see the module docstring)."""
    audio_root, faces_root, out = Path(audio_root), Path(faces_root), Path(out)
    for folder in (audio_root, faces_root):
        if not folder.is_dir():
            raise InputError(folder, "no such folder")
    if split not in ("official", "wen"):
        raise InputError(None, f"--split must be official or wen, got {split!r}")
    version, speakers = read_meta(Path(meta))
    data = _faces_data_dir(faces_root)
    report = PrepareReport(out=out)
    jobs, cache = [], {}
    for spk_id, utterances in find_utterances(audio_root).items():
        spk = speakers.get(spk_id)
        if spk is None:
            report.skipped["speaker not in the meta file"] += len(utterances)
            continue
        face_dir = _speaker_face_dir(data, spk)
        if face_dir is None:
            report.skipped["no face images for the speaker"] += len(utterances)
            continue
        for i, utt in enumerate(utterances[:max_clips_per_speaker]):
            face = _face_for(face_dir, utt, i, cache)
            if face is None:
                report.skip("no face image for the utterance")
                continue
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
                    },
                )
            )

    def split_of(genders: dict[str, str | None]) -> dict[str, str]:
        if split == "wen":
            return split_wen({s: speakers[s].name for s in genders}, genders, seed=seed)
        return split_official({s: speakers[s].set for s in genders}, genders, seed=seed)

    return run_clip_jobs(
        jobs,
        out,
        report,
        image_size=image_size,
        seconds=seconds,
        workers=workers,
        seed=seed,
        overwrite=overwrite,
        split_of=split_of,
        empty_hint=f"no usable clips found under {audio_root}",
    )
