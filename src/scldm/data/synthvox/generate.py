"""`scldm prepare synthvox`: write the SynthVox benchmark as a prepared dataset (DESIGN.md §4).

Layout: `audio/<speaker>/<k>.wav` (16 kHz, 16-bit), `faces/<speaker>/<k>.png`, `manifest.jsonl`
(one row per clip, every hidden attribute as a field) and `synthvox.json` (the settings).
Each speaker is one unit of parallel work whose randomness comes only from (seed, speaker
index), so the files are byte-identical for any number of workers and on every re-run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from scldm.data.manifest import MANIFEST_NAME, split_speakers, write_manifest
from scldm.data.prepare.common import PrepareReport, count_rows, parallel_map, write_audio
from scldm.data.synthvox.attributes import Speaker, sample_speaker
from scldm.data.synthvox.render import render_face
from scldm.data.synthvox.voice import SAMPLE_RATE, synthesize_clip, voice_params
from scldm.errors import InputError
from scldm.faces import save_image
from scldm.io import write_text

SETTINGS_NAME = "synthvox.json"


def training_data(root: str | Path) -> dict[str, Any]:
    """What a model trained on the prepared dataset `root` was trained on, for its export's
    metadata (`generate` says so when it is synthetic): {"path", "name", "synthetic"}."""
    root = Path(root)
    synthetic = (root / SETTINGS_NAME).is_file()
    name = "SynthVox" if synthetic else root.name
    return {"path": str(root.resolve()), "name": name, "synthetic": synthetic}


FORMAT_VERSION = 1  # bump when the generator changes what a seed produces


def _audio_path(speaker: Speaker, clip: int) -> str:
    return f"audio/{speaker.speaker_id}/{clip}.wav"


def _face_path(speaker: Speaker, image: int) -> str:
    return f"faces/{speaker.speaker_id}/{image}.png"


def _make_speaker(job: tuple[Speaker, Path, int, int, int, bool]) -> tuple[int, int]:
    """Write one speaker's clips and faces; return (clips written, clips already there)."""
    speaker, out, clips, faces, image_size, overwrite = job
    written = reused = 0
    for k in range(clips):
        path = out / _audio_path(speaker, k)
        if not overwrite and path.is_file():
            reused += 1
            continue
        write_audio(path, synthesize_clip(speaker, k), SAMPLE_RATE)
        written += 1
    for m in range(faces):
        path = out / _face_path(speaker, m)
        if overwrite or not path.is_file():
            save_image(render_face(speaker, m, image_size), path)
    return written, reused


def _check_args(speakers: int, clips: int, faces: int, image_size: int, workers: int | None):
    if speakers < 3:
        raise InputError(None, f"--speakers must be at least 3 (one per split), got {speakers}")
    if clips < 1 or faces < 1:
        raise InputError(
            None, f"--clips-per-speaker and --faces-per-speaker must be ≥ 1, got {clips}, {faces}"
        )
    if not 32 <= image_size <= 256:
        raise InputError(None, f"--image-size must be between 32 and 256, got {image_size}")
    if workers is not None and workers < 1:
        raise InputError(None, f"--workers must be at least 1, got {workers}")


def _claim_folder(out: Path, settings: dict[str, Any], overwrite: bool) -> None:
    """Refuse to mix two datasets in one folder: files made with other settings would be reused."""
    path = out / SETTINGS_NAME
    if path.is_file():
        before = json.loads(path.read_text())
        if before != settings and not overwrite:
            changed = ", ".join(
                f"{k} {before.get(k)} → {settings[k]}"
                for k in settings
                if before.get(k) != settings[k]
            )
            raise InputError(
                out,
                f"holds a SynthVox set made with other settings ({changed}); "
                "pass --overwrite to regenerate it, or choose another --out",
            )
    elif (out / MANIFEST_NAME).is_file() and not overwrite:
        raise InputError(out, "holds another prepared dataset; choose another --out")
    write_text(path, json.dumps(settings, indent=2) + "\n")


def manifest_rows(
    speakers: list[Speaker], splits: dict[str, str], *, clips: int, faces: int
) -> list[dict[str, Any]]:
    """One manifest row per clip; clip k is paired with face k mod `faces`."""
    rows = []
    for spk in speakers:
        voice = voice_params(spk)
        face_paths = [_face_path(spk, m) for m in range(faces)]
        for k in range(clips):
            rows.append(
                {
                    "speaker_id": spk.speaker_id,
                    "audio": _audio_path(spk, k),
                    "face": face_paths[k % faces],
                    "split": splits[spk.speaker_id],
                    **spk.attributes(),  # gender and age first: the required fields
                    "source": "synthvox",
                    "faces": face_paths,
                    # derived voice physics, for analysis: mean F0 and vocal-tract length
                    "f0_hz": round(voice.f0_hz, 2),
                    "vtl_cm": round(voice.vtl_cm, 3),
                }
            )
    return rows


def prepare_synthvox(
    out: Path,
    *,
    speakers: int = 1000,
    clips_per_speaker: int = 4,
    faces_per_speaker: int = 2,
    image_size: int = 64,
    seed: int = 0,
    workers: int | None = None,
    overwrite: bool = False,
) -> PrepareReport:
    """Generate (or complete) a SynthVox dataset in `out` and return what was done.

    Speakers are split 80/10/10 by speaker, stratified by gender. Files already present from
    an earlier run with the same settings are kept (`overwrite` regenerates them).
    """
    _check_args(speakers, clips_per_speaker, faces_per_speaker, image_size, workers)
    out = Path(out)
    settings = {
        "format_version": FORMAT_VERSION,
        "seed": seed,
        "speakers": speakers,
        "clips_per_speaker": clips_per_speaker,
        "faces_per_speaker": faces_per_speaker,
        "image_size": image_size,
        "sample_rate": SAMPLE_RATE,
    }
    _claim_folder(out, settings, overwrite)
    population = [sample_speaker(seed, i) for i in range(speakers)]
    jobs = [
        (spk, out, clips_per_speaker, faces_per_speaker, image_size, overwrite)
        for spk in population
    ]
    report = PrepareReport(out=out)
    for written, reused in parallel_map(
        _make_speaker, jobs, workers=workers or os.cpu_count() or 1, desc="synthvox", unit="speaker"
    ):
        report.written += written
        report.reused += reused
    splits = split_speakers({s.speaker_id: s.gender for s in population}, seed=seed)
    rows = manifest_rows(population, splits, clips=clips_per_speaker, faces=faces_per_speaker)
    write_manifest(rows, out)
    count_rows(rows, report)
    return report
