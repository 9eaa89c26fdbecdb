"""What stage 2 reads instead of images and audio: the frozen stage-1 encoders, a cache of face
latents and speech tokens computed once with them, and (`face_prior`) the face prior of those
latents, computed by `scldm.diffusion.prior`.

A cache lives in `<stage-1 run>/cache/<split>-<key>/` as safetensors shards; the key hashes the
encoder weights, the front end, the manifest and the image size, so a new stage-1 export or an
edited manifest builds a new cache and every later stage-2 run reuses it.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
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
SHARD_ROWS = 4096
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
    manifest rows), with `speakers` the split's sorted speaker ids."""

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


@torch.no_grad()
def _encode_split(
    encoders: Encoders, dataset: SpeechFaceDataset, batch_size: int, num_workers: int
) -> dict[str, torch.Tensor]:
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate, num_workers=num_workers)
    out: dict[str, list[torch.Tensor]] = {
        k: [] for k in ("latents", "tokens", "speech_embedding", "speaker", "row")
    }
    for batch in tqdm(loader, desc=f"caching {len(dataset)} clips", unit="batch", disable=None):
        if batch is None:  # every clip of it unreadable (logged by `collate`); rows say which
            continue
        speech = encoders.speech_encoder(encoders.frontend(batch["waveform"]))
        out["latents"].append(encoders.face_encoder.encode(batch["face"]))
        out["tokens"].append(speech.tokens)
        out["speech_embedding"].append(speech.embedding)
        out["speaker"].append(batch["speaker"])
        out["row"].append(batch["index"])
    if not out["row"]:
        raise InputError(dataset.root, f"no readable clip in split {dataset.split!r}")
    return {k: torch.cat(v).contiguous() for k, v in out.items()}


def build_cache(
    encoders: Encoders,
    data: str | Path,
    split: str = "train",
    *,
    batch_size: int = 64,
    num_workers: int = 0,
    rebuild: bool = False,
) -> LatentCache:
    """The split's cache, built now if no valid one exists (`rebuild` forces it)."""
    data = Path(data)
    dataset = SpeechFaceDataset(
        data, split, frontend=encoders.frontend, image_size=encoders.image_size
    )
    key = cache_key(encoders, data, split)
    path = encoders.path.parent / "cache" / f"{split}-{key}"
    if rebuild or not (path / "done.json").is_file():
        tensors = _encode_split(encoders, dataset, batch_size, num_workers)
        n = len(tensors["latents"])
        with atomic_dir(path) as tmp:
            for i, start in enumerate(range(0, n, SHARD_ROWS)):
                shard = {k: v[start : start + SHARD_ROWS].contiguous() for k, v in tensors.items()}
                save_file(shard, tmp / f"shard_{i:05d}.safetensors")
            info = {"rows": n, "split": split, "data": str(data.resolve()), "key": key}
            write_json(tmp / "done.json", info, indent=2)
        log.info("cached %d %s clips in %s", n, split, path)
    else:
        log.info("reusing the latent cache %s", path)
    shards = [load_file(p) for p in sorted(path.glob("shard_*.safetensors"))]
    tensors = {k: torch.cat([s[k] for s in shards]) for k in shards[0]}
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
