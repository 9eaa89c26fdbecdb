"""What stage 2 reads instead of images and audio: the frozen stage-1 encoders, a cache of face
latents and speech tokens computed once with them, the latent scale, and the face prior
(paper eq. 3) with its convergence table (paper Table 1).

A cache lives in `<stage-1 run>/cache/<split>-<key>/` as safetensors shards; the key hashes the
encoder weights, the front end, the manifest and the image size, so a new stage-1 export or an
edited manifest builds a new cache and every later stage-2 run reuses it.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from scldm.audio import SpectrogramFrontend
from scldm.data.datasets import SpeechFaceDataset, collate
from scldm.data.manifest import MANIFEST_NAME
from scldm.errors import InputError
from scldm.models import FaceDecoder, FaceEncoder, SpeechEncoder

log = logging.getLogger("scldm.train")
SHARD_ROWS = 4096
PARTS = ("frontend", "speech_encoder", "face_encoder", "face_decoder")


@dataclass
class Encoders:
    """The frozen stage-1 models (eval mode, no gradients) and the folder they came from."""

    path: Path
    frontend: SpectrogramFrontend
    speech_encoder: SpeechEncoder
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
    parts = {
        "frontend": SpectrogramFrontend,
        "speech_encoder": SpeechEncoder,
        "face_encoder": FaceEncoder,
        "face_decoder": FaceDecoder,
    }
    loaded = {}
    for name, cls in parts.items():
        model = cls.from_pretrained(path / name)
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
        tmp = path.with_name(f".{path.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        n = len(tensors["latents"])
        for i, start in enumerate(range(0, n, SHARD_ROWS)):
            shard = {k: v[start : start + SHARD_ROWS].contiguous() for k, v in tensors.items()}
            save_file(shard, tmp / f"shard_{i:05d}.safetensors")
        info = {"rows": n, "split": split, "data": str(data.resolve()), "key": key}
        (tmp / "done.json").write_text(json.dumps(info, indent=2))
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
        log.info("cached %d %s clips in %s", n, split, path)
    else:
        log.info("reusing the latent cache %s", path)
    shards = [load_file(p) for p in sorted(path.glob("shard_*.safetensors"))]
    tensors = {k: torch.cat([s[k] for s in shards]) for k in shards[0]}
    return LatentCache(path=path, tensors=tensors, rows=dataset.rows, speakers=dataset.speakers)


def latent_scale(latents: torch.Tensor) -> float:
    """LDM's `scale_by_std`: the factor that gives the training latents unit variance."""
    return float(1.0 / latents.float().std().clamp_min(1e-8))


# --- The face prior (paper eq. 3, Table 1) ----------------------------------------------------


def balanced_faces(cache: LatentCache, num_faces: int | None, seed: int = 0) -> list[int]:
    """Cache rows of up to `num_faces` distinct face images, half women and half men where the
    genders are known (alternating in a seeded random order), so a prefix of any length is
    itself balanced."""
    by_gender: dict[Any, list[int]] = {}
    seen: set[str] = set()
    for i, row_index in enumerate(cache.tensors["row"].tolist()):
        row = cache.rows[row_index]
        if row["face"] in seen:
            continue
        seen.add(row["face"])
        by_gender.setdefault(row.get("gender"), []).append(i)
    rng = random.Random(seed)
    groups = [sorted(v) for _, v in sorted(by_gender.items(), key=lambda kv: str(kv[0]))]
    for g in groups:
        rng.shuffle(g)
    order: list[int] = []
    for k in range(max(len(g) for g in groups)):
        order += [g[k] for g in groups if k < len(g)]
    return order[:num_faces] if num_faces else order


@dataclass
class PriorReport:
    prior: torch.Tensor  # (C, h, w), in scaled latent space
    scale: float
    num_faces: int
    convergence: list[dict[str, float]]  # n, rms distance to the full prior, cosine

    def table(self) -> str:
        lines = ["| faces N | RMS distance to P_full | cosine to P_full |", "|---:|---:|---:|"]
        lines += [f"| {r['n']} | {r['rms']:.4f} | {r['cosine']:.4f} |" for r in self.convergence]
        return "\n".join(lines)


def compute_prior(
    cache: LatentCache, scale: float, *, num_faces: int | None = 10_000, seed: int = 0
) -> PriorReport:
    """P = mean scaled latent over `num_faces` gender-balanced training faces, and how fast the
    mean of the first n of them converges to it (n = 10, 30, 100, … up to N)."""
    order = balanced_faces(cache, num_faces, seed)
    if not order:
        raise InputError(cache.path, "no faces to compute a prior from")
    z = cache.latents[order].float() * scale  # (N, C, h, w)
    prior = z.mean(0)
    csum = z.cumsum(0)
    sizes = [n for n in (10, 30, 100, 300, 1000, 3000, 10_000, 30_000) if n < len(z)] + [len(z)]
    rows = []
    for n in sizes:
        p = csum[n - 1] / n
        rms = (p - prior).pow(2).mean().sqrt().item()
        cos = torch.nn.functional.cosine_similarity(p.flatten(), prior.flatten(), dim=0).item()
        rows.append({"n": n, "rms": rms, "cosine": cos})
    return PriorReport(prior=prior, scale=scale, num_faces=len(z), convergence=rows)


def save_prior(report: PriorReport, out: Path) -> None:
    """prior.safetensors (prior, scale), prior_convergence.csv and .png, atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".prior.safetensors.tmp"
    save_file(
        {"prior": report.prior.contiguous(), "scale": torch.tensor(report.scale)},
        tmp,
        metadata={"num_faces": str(report.num_faces)},
    )
    os.replace(tmp, out / "prior.safetensors")
    tmp = out / ".prior_convergence.csv.tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["n", "rms", "cosine"])
        writer.writeheader()
        writer.writerows(report.convergence)
    os.replace(tmp, out / "prior_convergence.csv")
    fig, ax = plt.subplots(figsize=(4.5, 3))
    ns = [r["n"] for r in report.convergence]
    ax.loglog(ns[:-1], [r["rms"] for r in report.convergence[:-1]], marker="o")
    ax.set_xlabel("faces averaged (N)")
    ax.set_ylabel("RMS distance to the full prior")
    ax.set_title(f"face prior convergence ({report.num_faces} faces)", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    tmp = out / ".prior_convergence.tmp.png"
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    os.replace(tmp, out / "prior_convergence.png")


def load_prior(path: str | Path) -> tuple[torch.Tensor, float]:
    """(prior (C, h, w), latent scale) from a prior.safetensors or the folder holding it."""
    path = Path(path)
    if path.is_dir():
        path = path / "prior.safetensors"
    if not path.is_file():
        raise InputError(path, "no such prior file (make one with `scldm prior`)")
    tensors = load_file(path)
    return tensors["prior"], float(tensors["scale"])
