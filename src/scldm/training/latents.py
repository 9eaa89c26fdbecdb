"""What stage 2 reads instead of images and audio: the frozen stage-1 encoders, a cache of face
latents and speech tokens computed once with them, and (`face_prior`) the face prior of those
latents, computed by `scldm.diffusion.prior`.

A cache lives in `<stage-1 run>/cache/<split>-<key>/`: one raw little-endian array per tensor
(`<name>.bin`, float32 or int64, rows first) and `done.json` with their dtypes and shapes; the key
hashes the encoder weights, the front end, the manifest and the image size, so a new stage-1
export or an edited manifest builds a new cache and every later stage-2 run reuses it. It is
written batch by batch as it is encoded and read memory-mapped, so neither building nor reading
it holds the split in memory, and the processes of a multi-GPU run share one copy (the page
cache) instead of each loading its own: at VoxCeleb2's 1.1 M clips it is 34 GB at `base`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from scldm.audio import MelFrontend, SpectrogramFrontend
from scldm.data.datasets import SpeechFaceDataset, collate
from scldm.data.manifest import MANIFEST_NAME
from scldm.diffusion.prior import PRIOR_FILE, PriorReport, compute_prior, load_prior, save_prior
from scldm.errors import InputError
from scldm.io import atomic_dir, write_json
from scldm.models import (
    FaceDecoder,
    FaceEncoder,
    GE2ESpeechEncoder,
    SpeechEncoder,
    component_class,
)

log = logging.getLogger("scldm.train")
CACHE_FORMAT = 2  # 1: safetensors shards loaded whole (rebuilt when found)
PARTS = ("frontend", "speech_encoder", "face_encoder", "face_decoder")


@dataclass
class Encoders:
    """The frozen stage-1 models (eval mode, no gradients) and the folder they came from."""

    path: Path
    frontend: SpectrogramFrontend | MelFrontend
    speech_encoder: SpeechEncoder | GE2ESpeechEncoder
    face_encoder: FaceEncoder
    face_decoder: FaceDecoder

    @property
    def image_size(self) -> int:
        return int(self.face_encoder.config.image_size)


def export_dir(run: str | Path) -> Path:
    """A stage-1 run folder or its export/ folder → the export folder."""
    run = Path(run)
    for candidate in (run / "export", run):
        if all((candidate / part / "config.json").is_file() for part in PARTS):
            return candidate
    raise InputError(run, "is not a stage-1 run (no export/ with " + ", ".join(PARTS) + ")")


def load_encoders(run: str | Path) -> Encoders:
    """Load a stage-1 export (from `scldm pretrain`) frozen, in eval mode."""
    path = export_dir(run)
    loaded = {}
    for name in PARTS:  # each part's class is the one its config.json names
        model = component_class(path / name).from_pretrained(path / name)
        loaded[name] = model.eval().requires_grad_(False)
    return Encoders(path=path, **loaded)


def _file_digest(path: Path, h: Any) -> None:
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)


def digest_parts(encoders: Encoders, parts: tuple[str, ...], h: Any) -> None:
    """Feed the weights and configs of these export parts (not their run metadata) into `h`."""
    for part in parts:
        for file in sorted((encoders.path / part).glob("*")):
            if file.name != "scldm_meta.json":
                _file_digest(file, h)


def cache_key(encoders: Encoders, data: Path, split: str) -> str:
    """16 hex digits over everything a cached row depends on."""
    h = hashlib.sha256()
    digest_parts(encoders, ("frontend", "speech_encoder", "face_encoder"), h)
    _file_digest(data / MANIFEST_NAME, h)
    h.update(f"{split}|{encoders.image_size}".encode())
    return h.hexdigest()[:16]


@dataclass
class LatentCache:
    """Rows of one split: unscaled face `latents` (N, C, h, w), speech `tokens` (N, L, D),
    `speech_embedding` (N, D), `speaker` (N,) and `row` (N,) indices into `rows` (the split's
    manifest rows), with `speakers` the split's sorted speaker ids. The tensors are backed by
    the cache's files: index the rows a step needs rather than copying a whole tensor."""

    path: Path
    tensors: dict[str, torch.Tensor]
    rows: list[dict[str, Any]]
    speakers: list[str]

    def __len__(self) -> int:
        return len(self.tensors["latents"])

    @property
    def latents(self) -> torch.Tensor:
        return self.tensors["latents"]

    @property
    def tokens(self) -> torch.Tensor:
        return self.tensors["tokens"]


class RowFiles:
    """Rows of named tensors appended to FOLDER/<name>.bin (float32 or int64, little-endian, rows
    first) as they are computed; `close()` gives their {name: {"dtype", "shape"}} for done.json
    and `map_rows` reads them back."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.rows = folder, 0
        self.files: dict[str, Any] = {}
        self.layout: dict[str, dict[str, Any]] = {}

    def append(self, tensors: dict[str, torch.Tensor]) -> None:
        """One batch: the same names and the same number of rows every time."""
        for k, v in tensors.items():
            v = v.detach().float() if v.is_floating_point() else v.detach().long()
            if k not in self.files:
                self.files[k] = open(self.folder / f"{k}.bin", "wb")  # noqa: SIM115 (closed by close)
                self.layout[k] = {
                    "dtype": str(v.dtype).removeprefix("torch."),
                    "shape": list(v.shape),
                }
            array = v.cpu().contiguous().numpy()
            self.files[k].write(array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes())
        self.rows += len(next(iter(tensors.values())))

    def close(self) -> dict[str, dict[str, Any]]:
        for f in self.files.values():
            f.close()
        return {k: {**v, "shape": [self.rows, *v["shape"][1:]]} for k, v in self.layout.items()}


def map_rows(folder: Path, layout: dict[str, dict[str, Any]]) -> dict[str, torch.Tensor]:
    """The tensors `RowFiles` wrote to FOLDER, each backed by its file (copy-on-write: reading
    shares the page cache between processes, and a write would stay private to this one)."""
    out = {}
    for k, v in layout.items():
        little_endian = np.dtype(v["dtype"]).newbyteorder("<")
        array = np.memmap(
            folder / f"{k}.bin", dtype=little_endian, mode="c", shape=tuple(v["shape"])
        )
        out[k] = torch.from_numpy(array)
    return out


@torch.no_grad()
def _encode_split(
    encoders: Encoders, dataset: SpeechFaceDataset, out: Path, batch_size: int, num_workers: int
) -> dict[str, Any]:
    """Encode the split batch by batch into `RowFiles` in OUT; their layout."""
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate, num_workers=num_workers)
    files = RowFiles(out)
    try:
        desc = f"caching {len(dataset)} clips"
        for batch in tqdm(loader, desc=desc, unit="batch", disable=None):
            if batch is None:  # every clip of it unreadable (logged by `collate`); rows say which
                continue
            speech = encoders.speech_encoder(encoders.frontend(batch["waveform"]))
            files.append({
                "latents": encoders.face_encoder.encode(batch["face"]),
                "tokens": speech.tokens,
                "speech_embedding": speech.embedding,
                "speaker": batch["speaker"],
                "row": batch["index"],
            })  # fmt: skip
    finally:
        layout = files.close()
    if not files.rows:
        raise InputError(dataset.root, f"no readable clip in split {dataset.split!r}")
    return layout


def _cache_info(done: Path) -> dict[str, Any] | None:
    """done.json of a complete cache of this format whose files have the sizes it states, or
    None (missing, older, unreadable, or a file gone or cut short since)."""
    try:
        info = json.loads(done.read_text())
        if not (isinstance(info, dict) and info.get("format") == CACHE_FORMAT):
            return None
        for name, t in info["tensors"].items():
            size = np.dtype(t["dtype"]).itemsize * int(np.prod(t["shape"]))
            if (done.parent / f"{name}.bin").stat().st_size != size:
                return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return info


def build_cache(
    encoders: Encoders,
    data: str | Path,
    split: str = "train",
    *,
    batch_size: int = 64,
    num_workers: int = 0,
    rebuild: bool = False,
) -> LatentCache:
    """The split's cache, built now if no valid one exists (`rebuild` forces it), memory-mapped."""
    data = Path(data)
    dataset = SpeechFaceDataset(
        data, split, frontend=encoders.frontend, image_size=encoders.image_size
    )
    key = cache_key(encoders, data, split)
    path = encoders.path.parent / "cache" / f"{split}-{key}"
    info = None if rebuild else _cache_info(path / "done.json")
    if info is None:
        with atomic_dir(path) as tmp:
            layout = _encode_split(encoders, dataset, tmp, batch_size, num_workers)
            n = layout["row"]["shape"][0]
            info = {"format": CACHE_FORMAT, "rows": n, "split": split, "key": key}
            info |= {"data": str(data.resolve()), "tensors": layout}
            write_json(tmp / "done.json", info, indent=2)
        log.info("cached %d %s clips in %s", n, split, path)
    else:
        log.info("reusing the latent cache %s", path)
    tensors = map_rows(path, info["tensors"])
    return LatentCache(path=path, tensors=tensors, rows=dataset.rows, speakers=dataset.speakers)


def prior_folder(encoders: Encoders) -> Path:
    """Where a stage-1 run keeps its face prior: `<run>/prior/`."""
    return encoders.path.parent / "prior"


def face_prior(
    encoders: Encoders,
    data: str | Path,
    *,
    num_faces: int | None = 10_000,
    seed: int = 0,
    recompute: bool = False,
    cache: LatentCache | None = None,
) -> PriorReport:
    """The face prior of a stage-1 run, in `<run>/prior/`: the one place `scldm prior`, stage 2
    and the ablation get it from. Reused when it exists, unless `recompute`; otherwise computed
    from the training split's latent cache (`cache`, or built now) and saved with its
    convergence table."""
    folder = prior_folder(encoders)
    if not recompute and (folder / PRIOR_FILE).is_file():
        return load_prior(folder)
    if cache is None:
        cache = build_cache(encoders, data, "train")
    rows = [cache.rows[i] for i in cache.tensors["row"].tolist()]
    report = compute_prior(
        cache.latents,
        [r["face"] for r in rows],
        [r.get("gender") for r in rows],
        num_faces=num_faces,
        seed=seed,
    )
    save_prior(report, folder)
    log.info("face prior of %d faces saved in %s\n%s", report.num_faces, folder, report.table())
    return report
