"""The face prior of SCLDM (paper eq. 3, Table 1): P, the mean scaled latent of gender-balanced
training faces, and the shift μ = λ·P that the diffusion runs around (PriorGrad's mean).

Everything about the prior lives here: the `FacePrior` component a pipeline carries, the shift,
the latent scale, the computation with its convergence table, and saving/loading
`prior.safetensors`. `scldm.training.latents.face_prior` is the one function that makes or
reuses the prior of a stage-1 run (for `scldm prior`, stage 2 and the ablation).

The latent scale (LDM's `scale_by_std`) is computed here, once, with the prior: the prior file
keeps it because P lives in the scaled space, and stage 2 writes it into the pipeline's face
decoder config (`scaling_factor`), the one place inference reads it.
"""

from __future__ import annotations

import csv
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from scldm.errors import InputError
from scldm.io import atomic_path, save_figure, write_csv

PRIOR_FILE = "prior.safetensors"
CONVERGENCE_SIZES = (10, 30, 100, 300, 1000, 3000, 10_000, 30_000)


class FacePrior(ModelMixin, ConfigMixin):
    """The face prior P of paper eq. 3: the mean scaled face latent, (C, h, w).

    Stored as a persistent buffer `latent` (the weights file), in the scaled latent space the
    diffusion runs in. `lambda_infer` is the prior scale of pipelines saved before they carried
    a sampling config; newer pipelines read theirs from `SpeechToFacePipeline.sampling`.
    Build it with `FacePrior(prior=P)`; the shape is then taken from P. `from_pretrained`
    builds it from `latent_shape` and loads P from the weights.
    """

    ignore_for_config = ["prior"]  # the tensor lives in the weights, not in config.json

    @register_to_config
    def __init__(
        self,
        *,
        latent_shape: tuple[int, int, int] = (4, 28, 28),
        lambda_infer: float = 0.01,
        prior: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        if prior is not None:
            if prior.dim() != 3:
                raise ValueError(f"prior must be (C, h, w), got {tuple(prior.shape)}")
            latent_shape = prior.shape
        # a tuple also after config.json gave a list
        latent_shape = tuple(int(n) for n in latent_shape)
        self.register_to_config(latent_shape=latent_shape)
        latent = torch.zeros(latent_shape) if prior is None else prior.detach().float().clone()
        self.register_buffer("latent", latent)  # (C, h, w)


def prior_shift(prior: torch.Tensor | None, prior_scale: float) -> torch.Tensor | None:
    """μ = λ·P, (C, h, w); None when there is no shift (no prior or λ = 0)."""
    if prior is None or prior_scale == 0:
        return None
    return prior_scale * prior


def latent_scale(latents: torch.Tensor, chunk: int = 4096) -> float:
    """LDM's `scale_by_std`: the factor that gives the training latents unit variance. Summed
    in float64 over `chunk` rows at a time, so a memory-mapped cache is never copied whole;
    rounded to float32, as it is saved."""
    n, total, squares = latents.numel(), 0.0, 0.0
    for start in range(0, len(latents), chunk):
        rows = latents[start : start + chunk].double()
        total, squares = total + rows.sum().item(), squares + rows.square().sum().item()
    std = max((squares - total * total / n) / max(n - 1, 1), 0.0) ** 0.5  # unbiased, as torch's
    return torch.tensor(1.0 / max(std, 1e-8)).item()  # float32, as prior.safetensors keeps it


def balanced_order(
    faces: Sequence[str], genders: Sequence[Any], num_faces: int | None, seed: int = 0
) -> list[int]:
    """Indices of up to `num_faces` distinct face images (`faces[i]` names row i's image), half
    women and half men where the genders are known (alternating in a seeded random order), so a
    prefix of any length is itself balanced."""
    by_gender: dict[Any, list[int]] = {}
    seen: set[str] = set()
    for i, (face, gender) in enumerate(zip(faces, genders, strict=True)):
        if face in seen:
            continue
        seen.add(face)
        by_gender.setdefault(gender, []).append(i)
    if not by_gender:
        return []
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
    latents: torch.Tensor,
    faces: Sequence[str],
    genders: Sequence[Any],
    *,
    num_faces: int | None = 10_000,
    seed: int = 0,
) -> PriorReport:
    """P = mean scaled latent over `num_faces` gender-balanced faces (`balanced_order`), and how
    fast the mean of the first n of them converges to it (n = 10, 30, 100, … up to N).

    latents: (N, C, h, w) unscaled latents of every training row; the scale is `latent_scale`
    of all of them. faces, genders: each row's image name and gender label.
    """
    order = balanced_order(faces, genders, num_faces, seed)
    if not order:
        raise InputError(None, "no faces to compute a prior from")
    scale = latent_scale(latents)
    z = latents[order].float() * scale  # (N, C, h, w)
    prior = z.mean(0)
    csum = z.cumsum(0)
    sizes = [n for n in CONVERGENCE_SIZES if n < len(z)] + [len(z)]
    rows = []
    for n in sizes:
        p = csum[n - 1] / n
        rms = (p - prior).pow(2).mean().sqrt().item()
        cos = torch.nn.functional.cosine_similarity(p.flatten(), prior.flatten(), dim=0).item()
        rows.append({"n": n, "rms": rms, "cosine": cos})
    return PriorReport(prior=prior, scale=scale, num_faces=len(z), convergence=rows)


def save_prior(report: PriorReport, out: Path) -> None:
    """OUT/prior.safetensors (prior, scale), prior_convergence.csv and .png, each atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with atomic_path(Path(out) / PRIOR_FILE) as tmp:
        save_file(
            {"prior": report.prior.contiguous(), "scale": torch.tensor(report.scale)},
            tmp,
            metadata={"num_faces": str(report.num_faces)},
        )
    write_csv(out / "prior_convergence.csv", report.convergence, ["n", "rms", "cosine"])
    fig, ax = plt.subplots(figsize=(4.5, 3))
    ns = [r["n"] for r in report.convergence]
    ax.loglog(ns[:-1], [r["rms"] for r in report.convergence[:-1]], marker="o")
    ax.set_xlabel("faces averaged (N)")
    ax.set_ylabel("RMS distance to the full prior")
    ax.set_title(f"face prior convergence ({report.num_faces} faces)", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    save_figure(fig, out / "prior_convergence.png")


def load_prior(path: str | Path) -> PriorReport:
    """The `PriorReport` saved by `save_prior`, from its folder or its prior.safetensors (the
    convergence table read back from prior_convergence.csv beside it, when there)."""
    path = Path(path)
    if path.is_dir():
        path = path / PRIOR_FILE
    if not path.is_file():
        raise InputError(path, "no such prior file (make one with `scldm prior`)")
    try:
        with safe_open(path, framework="pt") as f:
            num_faces = int((f.metadata() or {}).get("num_faces", 0))
        tensors = load_file(path)
        prior, scale = tensors["prior"], float(tensors["scale"])
    except (OSError, KeyError, RuntimeError, ValueError) as e:
        raise InputError(path, f"is not a usable prior file ({e})") from None
    table = path.with_name("prior_convergence.csv")
    convergence = []
    if table.is_file():
        with open(table, newline="", encoding="utf-8") as f:
            convergence = [
                {"n": int(r["n"]), "rms": float(r["rms"]), "cosine": float(r["cosine"])}
                for r in csv.DictReader(f)
            ]
    return PriorReport(prior=prior, scale=scale, num_faces=num_faces, convergence=convergence)
