"""What stage 1 validates and reports: the speech/face embeddings of a split, speech→face
retrieval between speakers, reconstruction error and grids, and linear probes of gender and age
on the speech embeddings. The training stage (`scldm.training.encoders`) calls `validate` every
`eval_every` steps and `score_export` on its exported weights."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from scldm.audio import MelFrontend, SpectrogramFrontend
from scldm.config import EncoderStageConfig
from scldm.data.datasets import collate
from scldm.evaluation.metrics import mean_by_group, pearson_r, pooled_recall, psnr, ridge_probe
from scldm.faces import make_grid, save_image

log = logging.getLogger(__name__)
GRID_FACES = 16  # reconstructions kept for the validation grid, one per speaker
PROBE_ALPHAS = (0.1, 1.0, 10.0, 100.0, 1000.0)  # ridge strengths tried on the validation split
# train clips embedded for the probes: a cap on the export's time (their cost and how the probe
# scores depend on the number of speakers: benchmarks/results/pretrain_cpu.md, docs/results.md)
PROBE_TRAIN_CLIPS = 4000


@torch.no_grad()
def embed_split(
    model: torch.nn.Module,
    frontend: SpectrogramFrontend | MelFrontend,
    dataset: Dataset,
    *,
    max_clips: int,
    batch_size: int,
    device: torch.device,
    speech_only: bool = False,
    num_workers: int = 0,
    worker_init_fn: Callable[[int], None] | None = None,
) -> dict[str, torch.Tensor]:
    """Speech and face embeddings, speakers and reconstructions of up to `max_clips` clips of a
    SpeechFaceDataset, through a SpeechFaceModel (only speech embeddings and speakers with
    `speech_only`, for the probes)."""
    model.eval()
    subset = Subset(dataset, range(min(len(dataset), max_clips)))
    out, shown = defaultdict(list), set()
    loader = DataLoader(
        subset,
        batch_size=batch_size,
        collate_fn=collate,
        num_workers=num_workers,
        worker_init_fn=worker_init_fn,
    )
    for batch in loader:
        if batch is None:  # every clip of it unreadable (logged by `collate`)
            continue
        if speech_only:
            spectrogram = frontend(batch["waveform"].to(device))
            out["speech"].append(model.speech_encoder(spectrogram).embedding.float().cpu())
            out["speaker"].append(batch["speaker"])
            continue
        face = batch["face"].to(device)
        outputs = model(frontend(batch["waveform"].to(device)), face)
        out["speech"].append(outputs["speech_embedding"].float().cpu())
        out["face"].append(outputs["face_embedding"].float().cpu())
        out["mae"].append((outputs["reconstruction"] - face).abs().flatten(1).mean(1).cpu())
        out["psnr"].append(torch.tensor([psnr(outputs["reconstruction"], face)] * len(face)))
        out["speaker"].append(batch["speaker"])
        for j, spk in enumerate(batch["speaker"].tolist()):  # one face per speaker, for grids
            if spk not in shown and len(shown) < GRID_FACES:
                shown.add(spk)
                out["faces"].append(face[j : j + 1].cpu())
                out["recons"].append(outputs["reconstruction"][j : j + 1].float().cpu())
    model.train()
    return {k: torch.cat(v) for k, v in out.items()}


def retrieval_by_speaker(emb: dict[str, torch.Tensor], pool_size: int) -> dict[str, float]:
    """Speech→face Recall@K between per-speaker mean embeddings, in pools of speakers."""
    speakers = emb["speaker"].tolist()
    speech, _ = mean_by_group(torch.nn.functional.normalize(emb["speech"], dim=-1), speakers)
    face, _ = mean_by_group(torch.nn.functional.normalize(emb["face"], dim=-1), speakers)
    return pooled_recall(speech, face, pool_size=pool_size)


def split_metrics(emb: dict[str, torch.Tensor], pool_size: int, prefix: str) -> dict[str, float]:
    """Retrieval and reconstruction metrics of an `embed_split` result, keys "<prefix>/..."."""
    metrics = {f"{prefix}/{k}": v for k, v in retrieval_by_speaker(emb, pool_size).items()}
    metrics[f"{prefix}/recon_mae"] = emb["mae"].mean().item()
    metrics[f"{prefix}/psnr"] = emb["psnr"].mean().item()
    return metrics


def save_reconstruction_grid(emb: dict[str, torch.Tensor], n: int, path: Path) -> None:
    """Pairs of true face | reconstruction for the first `n` speakers of an `embed_split`."""
    pairs = [im for pair in zip(emb["faces"][:n], emb["recons"][:n], strict=True) for im in pair]
    grid = make_grid(pairs, ncols=2 * min(4, n), captions=["true", "recon"] * (len(pairs) // 2))
    save_image(grid, path)


def validate(
    model: torch.nn.Module,
    frontend: SpectrogramFrontend | MelFrontend,
    dataset: Dataset,
    cfg: EncoderStageConfig,
    device: torch.device,
    grid_path: Path,
    worker_init_fn: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """Embed `dataset` (up to `eval.max_clips` clips): "val/" retrieval and reconstruction
    metrics, and the reconstruction grid saved at `grid_path`."""
    emb = embed_split(
        model,
        frontend,
        dataset,
        max_clips=cfg.eval.max_clips,
        batch_size=cfg.train.batch_size,
        device=device,
        num_workers=cfg.data.num_workers,
        worker_init_fn=worker_init_fn,
    )
    metrics = split_metrics(emb, cfg.eval.pool_size, "val")
    save_reconstruction_grid(emb, cfg.eval.grid_size, grid_path)
    return metrics


def score_export(
    model: torch.nn.Module,
    frontend: SpectrogramFrontend | MelFrontend,
    cfg: EncoderStageConfig,
    *,
    train: Dataset,
    test: Dataset,
    val: Dataset | None,
    grid_path: Path,
    worker_init_fn: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """Score (exported) weights on the CPU: "test/" retrieval and reconstruction metrics, the
    probes (fit on up to PROBE_TRAIN_CLIPS `train` clips, ridge strength chosen on `val`,
    scored on `test`) and the test reconstruction grid."""
    kw: dict[str, Any] = {
        "max_clips": cfg.eval.max_clips,
        "batch_size": cfg.train.batch_size,
        "device": torch.device("cpu"),
        "num_workers": cfg.data.num_workers,
        "worker_init_fn": worker_init_fn,
    }
    test_emb = embed_split(model, frontend, test, **kw)
    metrics = split_metrics(test_emb, cfg.eval.pool_size, "test")
    probe_kw = kw | {"speech_only": True}
    train_emb = embed_split(model, frontend, train, **(probe_kw | {"max_clips": PROBE_TRAIN_CLIPS}))
    val_pair = None if val is None else (embed_split(model, frontend, val, **probe_kw), val)
    metrics |= linear_probes((train_emb, train), (test_emb, test), val_pair)
    save_reconstruction_grid(test_emb, cfg.eval.grid_size, grid_path)
    return metrics


def _speaker_table(emb, ds) -> tuple[torch.Tensor, list[dict]]:
    """Per-speaker mean of the normalised speech embeddings, and each speaker's manifest row."""
    x, ids = mean_by_group(
        torch.nn.functional.normalize(emb["speech"], dim=-1), emb["speaker"].tolist()
    )
    rows: dict[int, dict] = {}
    for row, spk in zip(ds.rows, ds.speaker_index, strict=True):
        rows.setdefault(spk, row)
    return x, [rows[i] for i in ids]


def linear_probes(train, test, val=None) -> dict[str, float]:
    """Gender accuracy and age correlation a linear read-out gets from speech embeddings, per
    speaker (means over clips): ridge fit on train speakers, its strength chosen on `val`
    speakers when given (else 1), scored on test speakers. Each of train/test/val is a pair
    (embed_split output, dataset)."""
    tables = {"train": _speaker_table(*train), "test": _speaker_table(*test)}
    if val is not None:
        tables["val"] = _speaker_table(*val)
    targets = {
        "gender": (lambda r: r["gender"] in ("f", "m"), lambda r: float(r["gender"] == "f")),
        "age": (lambda r: r["age"] is not None, lambda r: float(r["age"])),
    }

    def score(name: str, pred: torch.Tensor, y: torch.Tensor) -> float:
        if name == "gender":
            return ((pred > 0.5) == (y > 0.5)).float().mean().item()
        return pearson_r(pred, y)

    results: dict[str, float] = {}
    for name, (usable, value) in targets.items():
        data = {}
        for split, (x, rows) in tables.items():
            keep = [i for i, r in enumerate(rows) if usable(r)]
            data[split] = (x[keep], torch.tensor([value(rows[i]) for i in keep]))
        if len(data["train"][1]) < 3 or len(data["test"][1]) < 3:
            continue
        alpha = 1.0
        if "val" in data and len(data["val"][1]) >= 3:
            alpha = max(
                PROBE_ALPHAS,
                key=lambda a: score(
                    name, ridge_probe(*data["train"], data["val"][0], alpha=a), data["val"][1]
                ),
            )
        pred = ridge_probe(*data["train"], data["test"][0], alpha=alpha)
        key = "probe/gender_accuracy" if name == "gender" else "probe/age_r"
        results[key] = score(name, pred, data["test"][1])
        results[f"probe/{name}_alpha"] = alpha
    return results
