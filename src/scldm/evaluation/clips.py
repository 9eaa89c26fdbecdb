"""What an evaluation covers: its settings, and the clips of a split with the references each
is compared with (the true face, the floor's other image of the speaker, chance's face of another
speaker), and where a clip's generated faces are cached.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from scldm.data.manifest import read_manifest
from scldm.errors import InputError

NOT_LABELS = {"speaker_id", "audio", "face", "faces", "split", "source"}  # manifest fields


@dataclass(frozen=True)
class EvalSettings:
    split: str = "test"
    num_images: int = 1
    seed: int = 0
    max_clips: int | None = None
    batch_size: int = 16
    pool_size: int = 100
    age_tolerance: float = 10.0
    bootstrap: int = 1000
    image_size: int | None = None  # scoring size; None: the split's true faces as stored


@dataclass
class Clip:
    index: int  # its row in every tensor of the evaluation (its position in the clip list)
    speaker: str
    audio: Path
    face: Path
    other_face: Path | None  # another image of the same speaker: the floor's reference
    chance_face: Path  # a face of a different speaker: chance
    labels: dict[str, Any] = field(default_factory=dict)
    row: int | None = None  # its row in the split: names and seeds its images (None: index)

    @property
    def key(self) -> int:
        """What names and seeds the clip's generated images: its row in the split, which stays
        when clips before it are left out (its `index` then changes)."""
        return self.index if self.row is None else self.row


def _unreadable(path: Path) -> str | None:
    """Why the image at `path` cannot be decoded, or None."""
    try:
        with Image.open(path) as img:
            img.load()
    except (OSError, UnidentifiedImageError, ValueError) as e:
        return str(e) or type(e).__name__
    return None


def plan_clips(
    data: Path,
    split: str,
    *,
    max_clips: int | None,
    seed: int,
    unreadable: dict[str, str] | None = None,
) -> list[Clip]:
    """The clips of `split` in manifest order (the first `max_clips`), each with its floor and
    chance references. Chance pairs every speaker with another by a seeded derangement.

    Face images that cannot be decoded (damaged after `scldm prepare`) are left out: a clip
    whose own face is one is dropped, and no floor or chance reference is one. They are
    recorded in `unreadable` ({path: problem}) when a dict is given."""
    rows = read_manifest(data, split=split)
    if max_clips is not None:
        rows = rows[:max_clips]
    if not rows:
        raise InputError(data, f"has no clips in split {split!r}")
    candidates = {r["speaker_id"] for r in rows}
    images: dict[str, list[str]] = {}
    for r in read_manifest(data):  # every image of a speaker, from all of its rows
        if r["speaker_id"] in candidates:
            for f in [r["face"], *r.get("faces", [])]:
                if f not in images.setdefault(r["speaker_id"], []):
                    images[r["speaker_id"]].append(f)
    bad = {f: problem for fs in images.values() for f in fs if (problem := _unreadable(data / f))}
    if unreadable is not None:
        unreadable.update({str(data / f): problem for f, problem in bad.items()})
    images = {s: [f for f in fs if f not in bad] for s, fs in images.items()}
    kept = [(i, r) for i, r in enumerate(rows) if r["face"] not in bad]
    speakers = sorted({r["speaker_id"] for _, r in kept})
    if len(speakers) < 2:
        raise InputError(data, f"split {split!r} needs at least 2 speakers for chance")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(speakers))
    # a cyclic shift of a random order: a derangement, so nobody is paired with themself
    partner = {speakers[perm[i]]: speakers[perm[(i + 1) % len(perm)]] for i in range(len(perm))}
    clips = []
    for i, r in kept:
        s = r["speaker_id"]
        others = [f for f in images[s] if f != r["face"]]
        clips.append(
            Clip(
                index=len(clips),
                speaker=s,
                audio=data / r["audio"],
                face=data / r["face"],
                other_face=data / others[i % len(others)] if others else None,
                chance_face=data / images[partner[s]][i % len(images[partner[s]])],
                labels={k: v for k, v in r.items() if k not in NOT_LABELS},
                row=i,
            )
        )
    return clips


def face_size(clips: Sequence[Clip]) -> int:
    """The side of the clips' true face images as stored (the smaller side, as faces are
    centre-cropped; the most common one if they differ): the default scoring size."""
    sides: Counter[int] = Counter()
    for path in dict.fromkeys(c.face for c in clips):
        try:
            with Image.open(path) as img:  # reads the header only
                sides[min(img.size)] += 1
        except (OSError, UnidentifiedImageError) as e:
            raise InputError(path, f"not a readable image ({e})") from None
    return sides.most_common(1)[0][0]


def image_path(out: Path, clip: Clip, k: int) -> Path:
    return out / "images" / f"{clip.key:06d}_{k}.png"


def first_clips(clips: Sequence[Clip], speakers: int | None = None) -> list[Clip]:
    """The first clip of each speaker, in clip order, for up to `speakers` speakers: one voice a
    speaker, for sample grids."""
    firsts: dict[str, Clip] = {}
    for c in clips:
        firsts.setdefault(c.speaker, c)
    return list(firsts.values())[:speakers]


def true_caption(clip: Clip) -> str:
    """ "true" and the clip's gender and age labels, where it has them: a grid's caption."""
    tag = " ".join(str(clip.labels[k]) for k in ("gender", "age") if clip.labels.get(k) is not None)
    return f"true {tag}".strip()
