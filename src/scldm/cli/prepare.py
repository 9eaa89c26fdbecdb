"""`scldm prepare SOURCE`: a corpus on disk → a prepared, speaker-disjoint dataset folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from scldm.cli.options import Command, add_commands, add_prepare_options, prepare_options


def _voxceleb_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--audio-root",
        type=Path,
        required=True,
        help="folder holding wav/idXXXXX/... or aac/idXXXXX/...",
    )
    p.add_argument(
        "--faces-root",
        type=Path,
        required=True,
        help="unzippedIntervalFaces/data/... crops, or one folder of images per VGGFace name",
    )
    p.add_argument(
        "--meta", type=Path, required=True, help="vox1_meta.csv or vox2_meta.csv (tab-separated)"
    )
    p.add_argument(
        "--split",
        choices=("official", "wen"),
        default="official",
        help="official: VoxCeleb's test set is test, dev is cut into train/val; "
        "wen: names A-E are val/test, F-Z train (Wen et al. 2019)",
    )
    p.add_argument(
        "--max-clips-per-speaker",
        type=int,
        default=None,
        help="keep at most this many clips per speaker",
    )
    add_prepare_options(p)


def _voxceleb(args: argparse.Namespace) -> int:
    from scldm.data.prepare.voxceleb import prepare_voxceleb

    report = prepare_voxceleb(
        args.audio_root,
        args.faces_root,
        args.meta,
        args.out,
        split=args.split,
        max_clips_per_speaker=args.max_clips_per_speaker,
        options=prepare_options(args),
    )
    print(report.summary())
    return 0


def _avspeech_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--csv", type=Path, required=True, help="header-less ytid,start,end,x,y CSV")
    p.add_argument(
        "--clips",
        type=Path,
        required=True,
        help="folder of {ytid}_{start:010.6f}-{end:010.6f}.mp4 clips",
    )
    p.add_argument(
        "--face-scale",
        type=float,
        default=0.4,
        help="crop side as a fraction of the frame's shorter side (default: %(default)s)",
    )
    add_prepare_options(p)


def _avspeech(args: argparse.Namespace) -> int:
    from scldm.data.prepare.avspeech import prepare_avspeech

    options = prepare_options(args)
    report = prepare_avspeech(
        args.csv, args.clips, args.out, face_scale=args.face_scale, options=options
    )
    print(report.summary())
    return 0


def _folder_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", type=Path, required=True, help="one sub-folder per speaker")
    add_prepare_options(p)


def _folder(args: argparse.Namespace) -> int:
    from scldm.data.prepare.folder import prepare_folder

    print(prepare_folder(args.root, args.out, options=prepare_options(args)).summary())
    return 0


def _synthvox_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True, help="folder to write the dataset to")
    p.add_argument(
        "--speakers", type=int, default=1000, help="number of speakers (default: %(default)s)"
    )
    p.add_argument("--clips-per-speaker", type=int, default=4, help="(default: %(default)s)")
    p.add_argument("--faces-per-speaker", type=int, default=2, help="(default: %(default)s)")
    p.add_argument(
        "--image-size",
        type=int,
        default=64,
        help="face side in pixels, 64-256 (default: %(default)s)",
    )
    p.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    p.add_argument(
        "--workers", type=int, default=None, help="worker processes (default: all cores)"
    )
    p.add_argument("--overwrite", action="store_true", help="regenerate files that already exist")


def _synthvox(args: argparse.Namespace) -> int:
    from scldm.data.synthvox import prepare_synthvox

    report = prepare_synthvox(
        args.out,
        speakers=args.speakers,
        clips_per_speaker=args.clips_per_speaker,
        faces_per_speaker=args.faces_per_speaker,
        image_size=args.image_size,
        seed=args.seed,
        workers=args.workers,
        overwrite=args.overwrite,
    )
    print(report.summary())
    return 0


SOURCES: tuple[Command, ...] = (
    Command(
        "voxceleb",
        "VoxCeleb1 (wav) or VoxCeleb2 (m4a) with face crops or images",
        _voxceleb_options,
        _voxceleb,
    ),
    Command(
        "avspeech",
        "AVSpeech CSV plus the clips you already downloaded",
        _avspeech_options,
        _avspeech,
    ),
    Command(
        "folder",
        "root/<speaker>/ folders holding audio files and face images",
        _folder_options,
        _folder,
    ),
    Command(
        "synthvox",
        "the built-in synthetic paired voice-face benchmark",
        _synthvox_options,
        _synthvox,
    ),
)

PREPARE = Command(
    "prepare",
    "turn a corpus on disk into a prepared, speaker-disjoint dataset",
    lambda p: add_commands(p, SOURCES, dest="source", metavar="SOURCE"),
    None,
    description="Write manifest.jsonl, 16 kHz mono audio and face crops into --out. Re-running "
    "skips finished items; corrupt or missing items are skipped and counted.",
)
