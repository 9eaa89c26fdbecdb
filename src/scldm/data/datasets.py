"""Map-style datasets over a prepared folder, and the one-clip-per-speaker batch sampler."""

from __future__ import annotations

import logging
import os
import random
from collections import defaultdict
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info
from tqdm.auto import tqdm

from scldm.audio import SpectrogramFrontend
from scldm.data.manifest import REQUIRED, read_manifest
from scldm.errors import InputError
from scldm.faces import load_face_tensor

log = logging.getLogger(__name__)


class SpeechFaceDataset(Dataset):
    """Clips of one split of a prepared dataset.

    Each item is a dict: `waveform` (S,) float32 — the front end's fixed-length segment — or,
    with `return_spectrogram=True`, `spectrogram` (2, F, T); `face` (3, H, W) in [-1, 1];
    `speaker` (int index into `self.speakers`); `index` (row number); and `attributes` (the
    row's gender/age and every extra field). Speaker indices are stable: sorted speaker ids.
    """

    def __init__(
        self,
        root: str | Path,
        split: str | None = "train",
        *,
        frontend: SpectrogramFrontend | None = None,
        image_size: int = 64,
        return_spectrogram: bool = False,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.rows = read_manifest(self.root, split=split)
        if not self.rows:
            raise InputError(self.root, f"no clips in split {split!r}")
        self.frontend = frontend or SpectrogramFrontend()
        self.image_size = image_size
        self.return_spectrogram = return_spectrogram
        self.speakers = sorted({r["speaker_id"] for r in self.rows})
        index = {s: i for i, s in enumerate(self.speakers)}
        self.speaker_index = [index[r["speaker_id"]] for r in self.rows]
        self._memory: list[tuple[torch.Tensor | None, torch.Tensor]] | None = None
        self.audio = True  # False after `drop_audio`: items hold no waveform
        self._unusable: set[int] = set()

    def __len__(self) -> int:
        return len(self.rows)

    def load_into_memory(self, *, num_workers: int | None = None, progress: bool = True) -> None:
        """Decode every clip's waveform and face once and serve items from RAM from then on.

        For small sets on few cores: decoding a batch of 64 wav files and PNGs costs 0.1-0.2 s
        of CPU, which a loader worker otherwise takes from the training step at every step of
        every epoch. Items stay bitwise those read from disk; waveforms that are exact 16-bit
        PCM and faces that are exact 8-bit images are kept as int16 and uint8 (SynthVox 2,000
        speakers: 1.3 GB for the 6,400 train clips of 6 s). Decoding runs in `num_workers`
        processes (default: one per core, at most 8) and draws nothing from the global RNG.
        """
        if self._memory is not None:
            return
        workers = min(8, os.cpu_count() or 1) if num_workers is None else num_workers
        loader = DataLoader(
            _Packed(self),
            batch_size=64,
            num_workers=workers,
            collate_fn=list,
            generator=torch.Generator(),  # worker seeds from here, not from the global RNG
        )
        memory: list[tuple[torch.Tensor, torch.Tensor] | _Unreadable] = []
        with tqdm(
            total=len(self), desc=f"{self.split} clips into memory", disable=not progress
        ) as bar:
            for items in loader:
                memory += items
                bar.update(len(items))
        unreadable = [item for item in memory if isinstance(item, _Unreadable)]
        if len(unreadable) == len(memory):
            raise InputError(self.root, f"no readable clip in split {self.split!r}")
        if unreadable:  # kept in place (indices stay rows) and skipped by `collate`
            first = unreadable[0]
            log.warning(
                "%d of %d %s clips are unreadable and will be skipped (first: %s: %s)",
                len(unreadable), len(memory), self.split, first.path, first.problem,
            )  # fmt: skip
        self._memory = memory

    def drop_audio(self, unusable: Collection[int] = ()) -> None:
        """Serve items without audio from now on (face, speaker, index, attributes) and free
        the decoded waveforms: for a trainer that has cached what it needs of the audio. The
        clips `unusable` (whose audio the trainer could not use) become unreadable items,
        which `collate` skips and counts."""
        self.audio = False
        self._unusable = set(unusable)
        if self._memory is not None:
            self._memory = [m if isinstance(m, _Unreadable) else (None, m[1]) for m in self._memory]

    def __getitem__(self, i: int) -> dict[str, Any] | _Unreadable:
        """The clip's item, or an `_Unreadable` (which `collate` drops and counts) when its
        audio or face can no longer be read."""
        row = self.rows[i]
        if i in self._unusable:
            return _Unreadable(str(self.root / row["audio"]), "its audio was not usable")
        if self._memory is None:
            try:
                waveform = self.frontend.load(self.root / row["audio"]) if self.audio else None
                face = load_face_tensor(self.root / row["face"], self.image_size)  # (3, H, W)
            except InputError as e:
                return _Unreadable(e.path, e.problem)
        elif isinstance(self._memory[i], _Unreadable):
            return self._memory[i]
        else:
            waveform, face = (None if x is None else _unpack(x) for x in self._memory[i])
        item: dict[str, Any] = {
            "face": face,
            "speaker": self.speaker_index[i],
            "index": i,
            "attributes": {
                k: v for k, v in row.items() if k not in REQUIRED or k in ("gender", "age")
            },
        }
        if waveform is not None and self.return_spectrogram:
            with torch.no_grad():
                item["spectrogram"] = self.frontend(waveform)[0]  # (2, F, T)
        elif waveform is not None:
            item["waveform"] = waveform
        return item


# Exact integer encodings of the two float tensors of an item: x = q / 32768 for 16-bit PCM
# audio (libsndfile's float reading) and x = u / 127.5 - 1 for 8-bit faces (`to_tensor`).
_WAVE_SCALE, _FACE_SCALE = 32768.0, 127.5


def _pack(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`x` as int16 audio or uint8 face when that encoding gives it back bitwise, else `x`."""
    info = torch.iinfo(dtype)
    if dtype == torch.int16:
        q = torch.round(x * _WAVE_SCALE)
    else:
        q = torch.round((x + 1.0) * _FACE_SCALE)
    if q.numel() and (q.min() < info.min or q.max() > info.max):
        return x
    packed = q.to(dtype)
    return packed if torch.equal(_unpack(packed), x) else x


def _unpack(x: torch.Tensor) -> torch.Tensor:
    if x.dtype == torch.int16:
        return x.to(torch.float32) / _WAVE_SCALE
    if x.dtype == torch.uint8:
        return x.to(torch.float32) / _FACE_SCALE - 1.0
    return x


class _Packed(Dataset):
    """(waveform, face) of each clip of a dataset, packed for `load_into_memory`."""

    def __init__(self, dataset: SpeechFaceDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor] | _Unreadable:
        row, ds = self.dataset.rows[i], self.dataset
        try:
            waveform = ds.frontend.load(ds.root / row["audio"])
            face = load_face_tensor(ds.root / row["face"], ds.image_size)
        except InputError as e:
            return _Unreadable(e.path, e.problem)
        return _pack(waveform, torch.int16), _pack(face, torch.uint8)


@dataclass(frozen=True)
class _Unreadable:
    """A clip whose audio or face could not be read: an item `collate` drops and counts."""

    path: str | None
    problem: str


_skipped: set[str | None] = set()  # unreadable files this process has warned about


def stack(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """`torch.stack`, straight into shared memory inside a DataLoader worker (as torch's
    `default_collate` does), since the batch crosses to the main process through shared memory
    anyway. Stacked in private memory and then copied, each batch's size stayed behind in the
    worker: 23.5 MB a batch at `small` (its 6 s waveforms), 8 GB after 350 steps
    (docs/notes/2026-11-30-loader-memory.md)."""
    if get_worker_info() is None:
        return torch.stack(list(tensors))
    first = tensors[0]
    storage = first.untyped_storage()._new_shared(
        len(tensors) * first.numel() * first.element_size(), device="cpu"
    )
    out = first.new(storage).resize_(len(tensors), *first.shape)
    return torch.stack(list(tensors), out=out)


def collate(batch: Sequence[dict[str, Any] | _Unreadable]) -> dict[str, Any] | None:
    """Stack tensors, turn speaker/index into LongTensors and keep attributes as a list.

    Unreadable clips (a file damaged or removed after `scldm prepare`) are left out of the
    batch, each logged once as a warning with the running count; a batch with nothing readable
    is None, which the training and encoding loops skip.
    """
    items = [it for it in batch if not isinstance(it, _Unreadable)]
    for it in batch:
        if isinstance(it, _Unreadable) and it.path not in _skipped:
            _skipped.add(it.path)
            log.warning("skipping unreadable clip %s: %s (%d so far)", it.path, it.problem,
                        len(_skipped))  # fmt: skip
    if not items:
        return None
    out: dict[str, Any] = {"attributes": [it["attributes"] for it in items]}
    for key in ("waveform", "spectrogram", "face"):
        if key in items[0]:
            out[key] = stack([it[key] for it in items])
    out["speaker"] = torch.tensor([it["speaker"] for it in items], dtype=torch.long)
    out["index"] = torch.tensor([it["index"] for it in items], dtype=torch.long)
    return out


class SpeakerBatchSampler(Sampler[list[int]]):
    """Batches in which every clip comes from a different speaker (for the contrastive loss).

    Each epoch visits every clip once: clips are dealt in rounds of one clip per speaker in a
    seeded random order, and a clip whose speaker is already in the batch being filled waits
    for the next one. Call `set_epoch` for a new order (the seed is `seed + epoch`).
    """

    def __init__(
        self, speakers: Sequence[int], batch_size: int, *, seed: int = 0, drop_last: bool = True
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        num_speakers = len(set(speakers))
        if batch_size > num_speakers:
            raise InputError(
                None, f"batch size {batch_size} exceeds the {num_speakers} speakers available"
            )
        self.speakers = list(speakers)
        self.batch_size = batch_size
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
        rng = random.Random(self.seed + self.epoch)
        by_speaker: dict[int, list[int]] = defaultdict(list)
        for i, s in enumerate(self.speakers):
            by_speaker[s].append(i)
        for clips in by_speaker.values():
            rng.shuffle(clips)
        stream: list[int] = []  # round r holds the r-th clip of every speaker that has one
        for r in range(max(len(c) for c in by_speaker.values())):
            round_ = [clips[r] for clips in by_speaker.values() if r < len(clips)]
            rng.shuffle(round_)
            stream += round_
        batches, batch, in_batch, waiting = [], [], set(), []
        for i in stream:
            for j in [*waiting, i]:
                if self.speakers[j] in in_batch:
                    if j == i:
                        waiting.append(i)
                    continue
                if j != i:
                    waiting.remove(j)
                batch.append(j)
                in_batch.add(self.speakers[j])
                if len(batch) == self.batch_size:
                    batches.append(batch)
                    batch, in_batch = [], set()
        leftovers = batch + waiting  # a few repeats of the last speakers
        while leftovers and not self.drop_last:
            batch, in_batch, rest = [], set(), []
            for j in leftovers:
                (
                    rest if self.speakers[j] in in_batch or len(batch) == self.batch_size else batch
                ).append(j)
                in_batch.add(self.speakers[j])
            batches.append(batch)
            leftovers = rest
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._batches())

    def __len__(self) -> int:
        return len(self._batches())
