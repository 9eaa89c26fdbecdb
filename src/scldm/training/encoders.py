"""Stage 1 (paper eq. 1): collaborative pre-training of the speech encoder, the VGG-16 face
encoder and the face decoder — a CLIP-style loss aligns speech and face embeddings while the
decoder learns to reconstruct faces from the face latents. One `train(cfg)`, STYLE.md §4.7."""

from __future__ import annotations

import copy
import logging
import math
import time
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import set_seed
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from scldm.audio import SpectrogramFrontend, random_crop
from scldm.config import EncoderStageConfig
from scldm.data.datasets import SpeakerBatchSampler, SpeechFaceDataset, collate
from scldm.errors import InputError
from scldm.evaluation.metrics import mean_by_group, pearson_r, pooled_recall, psnr, ridge_probe
from scldm.faces import make_grid, save_image
from scldm.losses import encoder_stage_loss
from scldm.models import FaceDecoder, FaceEncoder, SpeechEncoder
from scldm.models.contrastive import SpeechFaceModel
from scldm.models.face_decoder import FACE_DECODER_PRESETS
from scldm.models.face_encoder import FACE_ENCODER_PRESETS
from scldm.models.speech_encoder import SPEECH_ENCODER_PRESETS
from scldm.training.common import (
    EMA,
    TrainState,
    background_worker,
    batch_stream,
    check_ranks_agree,
    load_checkpoint,
    log_scalars,
    lr_at,
    make_accelerator,
    param_groups,
    plot_scalars,
    report_window,
    resolve_resume,
    save_checkpoint,
    set_lr,
    setup_run,
    write_json,
    write_meta,
)

log = logging.getLogger("scldm.train")
LOGIT_SCALE_MAX = 4.6052  # ln 100, CLIP's clamp
GRID_FACES = 16  # reconstructions kept for the validation grid, one per speaker
CURVES = ["train/loss", "train/contrastive", "train/mae", "val/R@1", "val/R@10", "val/psnr"]


def component_kwargs(mapping: Mapping[str, Any], presets: Mapping[str, dict], what: str) -> dict:
    """Constructor kwargs from a config mapping: `preset: NAME` names an architecture preset of
    the model module; the other keys override its values."""
    kwargs = dict(mapping)
    name = kwargs.pop("preset", None)
    if name is None:
        return kwargs
    if name not in presets:
        raise InputError(None, f"{what}.preset: unknown {name!r}; known: {', '.join(presets)}")
    return {**presets[name], **kwargs}


def build_model(cfg: EncoderStageConfig) -> SpeechFaceModel:
    """The three networks and the temperature, built from the config's constructor kwargs."""
    try:
        model = SpeechFaceModel(
            speech_encoder=SpeechEncoder(
                **component_kwargs(cfg.speech_encoder, SPEECH_ENCODER_PRESETS, "speech_encoder")
            ),
            face_encoder=FaceEncoder(
                **component_kwargs(cfg.face_encoder, FACE_ENCODER_PRESETS, "face_encoder")
            ),
            face_decoder=FaceDecoder(
                **component_kwargs(cfg.face_decoder, FACE_DECODER_PRESETS, "face_decoder")
            ),
        )
    except TypeError as e:  # an unknown constructor keyword in the config
        raise InputError(None, f"model config: {e}") from None
    if cfg.vggface_weights:
        report = model.face_encoder.load_vggface(cfg.vggface_weights)
        log.info("VGGFace weights from %s: %s", cfg.vggface_weights, report)
    return model


def _perceptual(cfg: EncoderStageConfig, device: torch.device):
    if cfg.loss_weights.get("loss/lpips", 0.0) == 0.0:
        return None
    from scldm.models.perceptual import LPIPS

    return LPIPS(backbone_weights=cfg.lpips_weights).to(device).eval().requires_grad_(False)


# --- Validation ------------------------------------------------------------------------------


@torch.no_grad()
def embed_split(
    model: SpeechFaceModel,
    frontend: SpectrogramFrontend,
    dataset: SpeechFaceDataset,
    *,
    max_clips: int,
    batch_size: int,
    device: torch.device,
    speech_only: bool = False,
    num_workers: int = 0,
) -> dict[str, torch.Tensor]:
    """Speech and face embeddings, speakers and reconstructions of up to `max_clips` clips
    (only speech embeddings and speakers with `speech_only`, for the probes)."""
    model.eval()
    subset = Subset(dataset, range(min(len(dataset), max_clips)))
    out, shown = defaultdict(list), set()
    loader = DataLoader(
        subset,
        batch_size=batch_size,
        collate_fn=collate,
        num_workers=num_workers,
        worker_init_fn=background_worker,
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


def validate(
    model,
    frontend,
    dataset,
    cfg: EncoderStageConfig,
    device,
    run_dir: Path,
    step: int,
    emb: dict[str, torch.Tensor] | None = None,
) -> dict[str, float]:
    """Retrieval, reconstruction metrics and the grid of `dataset` (embedded here unless `emb`,
    an `embed_split` result for it, is given)."""
    if emb is None:
        emb = embed_split(
            model,
            frontend,
            dataset,
            max_clips=cfg.eval.max_clips,
            batch_size=cfg.train.batch_size,
            device=device,
            num_workers=cfg.data.num_workers,
        )
    metrics = {f"val/{k}": v for k, v in retrieval_by_speaker(emb, cfg.eval.pool_size).items()}
    metrics["val/recon_mae"] = emb["mae"].mean().item()
    metrics["val/psnr"] = emb["psnr"].mean().item()
    n = cfg.eval.grid_size
    pairs = [im for pair in zip(emb["faces"][:n], emb["recons"][:n], strict=True) for im in pair]
    grid = make_grid(pairs, ncols=2 * min(4, n), captions=["true", "recon"] * (len(pairs) // 2))
    save_image(grid, run_dir / "samples" / f"step_{step:07d}.png")
    return metrics


PROBE_ALPHAS = (0.1, 1.0, 10.0, 100.0, 1000.0)  # ridge strengths tried on the validation split
# train clips behind the probes: SynthVox small, 1,000 of the 1,600 train speakers. Its age r was
# 0.762-0.771 with 800 to 1,600 speakers; each 1,000 clips cost 7 s at 6 s on 2 CPU cores
PROBE_TRAIN_CLIPS = 4000


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


# --- Training --------------------------------------------------------------------------------


def train(cfg: EncoderStageConfig, *, resume: str | None = None, cpu: bool = False) -> Path:
    """Run stage 1 and return the export folder (speech_encoder/, face_encoder/, face_decoder/,
    frontend/ — EMA weights, `save_pretrained` format)."""
    frontend = SpectrogramFrontend(**cfg.frontend)
    crop = _crop_samples(cfg, frontend)  # checked before anything is written
    if not 0 < cfg.recon_fraction <= 1:
        raise InputError(None, f"recon_fraction {cfg.recon_fraction:g} must lie in (0, 1]")
    # faces the decoder reconstructs per step (per process): at least one
    num_reconstructed = max(1, math.ceil(cfg.recon_fraction * cfg.train.batch_size))
    run_dir = Path(cfg.train.output_dir)
    accelerator = make_accelerator(cfg.train, run_dir, cpu=cpu)
    set_seed(cfg.train.seed)  # identical initialisation on every rank
    setup_run(accelerator, cfg, run_dir, "scldm-pretrain")
    device = accelerator.device

    train_ds = SpeechFaceDataset(
        cfg.data.root, "train", frontend=frontend, image_size=cfg.data.image_size
    )
    if cfg.data.in_memory:
        train_ds.load_into_memory(progress=accelerator.is_local_main_process)
    sampler = SpeakerBatchSampler(train_ds.speaker_index, cfg.train.batch_size, seed=cfg.train.seed)
    loader = DataLoader(
        train_ds,
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=cfg.data.num_workers,
        persistent_workers=cfg.data.num_workers > 0,
        worker_init_fn=background_worker,
    )
    # channels-last convolutions: 20-35 % faster on CPU (oneDNN) for the speech encoder and
    # the decoder, and the layout tensor cores want on GPU (benchmarks/results/pretrain_cpu.md)
    model = build_model(cfg).to(memory_format=torch.channels_last)
    face_encoder = model.face_encoder
    if cfg.autoencoder_lr is None:  # one group for the face side, as the paper
        face = {"face": (torch.nn.ModuleList([face_encoder, model.face_decoder]), cfg.face_lr)}
    else:  # the embedding head apart from the autoencoder (image -> latent -> image)
        autoencoder = [face_encoder.latent_layers(), model.face_decoder]
        face = {
            "face": (face_encoder.embedding_layers(), cfg.face_lr),
            "autoencoder": (torch.nn.ModuleList(autoencoder), cfg.autoencoder_lr),
        }
    groups = param_groups(
        {
            "speech": (model.speech_encoder, cfg.speech_lr),
            **face,
            "logit_scale": (torch.nn.ParameterList([model.logit_scale]), cfg.speech_lr),
        },
        cfg.optim.weight_decay,
    )
    optimizer = torch.optim.AdamW(groups, betas=cfg.optim.betas, fused=True)  # one kernel
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    frontend.to(device)
    perceptual = _perceptual(cfg, device)
    set_seed(cfg.train.seed, device_specific=True)  # per-rank randomness from here on

    unwrapped = accelerator.unwrap_model(model)
    ema, state = EMA(unwrapped, cfg.train.ema_decay), TrainState()
    checkpoint = resolve_resume(run_dir, resume)
    if checkpoint is not None:
        load_checkpoint(
            accelerator, checkpoint, model=unwrapped, optimizer=optimizer, ema=ema, state=state
        )
        log.info("resumed from %s at step %d", checkpoint, state.step)
    elif resume == "latest":
        log.info("no checkpoint in %s yet: starting from step 0", run_dir)
    global_batch = cfg.train.batch_size * cfg.train.grad_accum_steps * accelerator.num_processes
    log.info(
        "stage 1: %d train clips of %d speakers, global batch %d, %d steps, %s",
        len(train_ds),
        len(train_ds.speakers),
        global_batch,
        cfg.train.max_steps,
        device,
    )

    val_ds = _maybe_split(cfg, frontend, cfg.eval.split)
    if val_ds is not None and cfg.data.in_memory and accelerator.is_main_process:
        val_ds.load_into_memory()  # validated every eval_every steps, on the main process
    bar = tqdm(
        total=cfg.train.max_steps,
        initial=state.step,
        desc="pretrain",
        dynamic_ncols=True,
        disable=not accelerator.is_local_main_process,
    )
    sums: dict[str, float] = defaultdict(float)
    count, tick = 0, time.perf_counter()
    for batch in batch_stream(loader, sampler, state.step, accelerator):
        if state.step >= cfg.train.max_steps:
            break
        if batch is None:  # every clip of it unreadable (logged by `collate`)
            continue
        with accelerator.accumulate(model):
            wave = batch["waveform"]
            if crop is not None:  # seeded by (seed, step, rank): resumable without saved state
                rng = torch.Generator().manual_seed(
                    (cfg.train.seed * 1_000_003 + state.step) * 1009 + accelerator.process_index
                )
                wave = random_crop(wave, crop, rng)
            outputs = model(  # through DDP's forward
                frontend(wave), batch["face"], num_reconstructed=num_reconstructed
            )
            loss, logs = encoder_stage_loss(
                outputs, batch, cfg.loss_weights, perceptual=perceptual, gather=cfg.gather_negatives
            )
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                logs["grad_norm"] = accelerator.clip_grad_norm_(
                    model.parameters(), cfg.optim.grad_clip
                )
            set_lr(optimizer, lr_at(state.step, cfg.optim, cfg.train.max_steps))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        for key, value in logs.items():
            sums[key] += float(value)
        count += 1
        if not accelerator.sync_gradients:
            continue
        state.step += 1
        state.samples += global_batch
        with torch.no_grad():
            unwrapped.logit_scale.clamp_(0, LOGIT_SCALE_MAX)
        ema.update(unwrapped)
        if state.step % cfg.train.log_every == 0 or state.step == cfg.train.max_steps:
            report_window(
                accelerator,
                run_dir,
                sums,
                count,
                step=state.step,
                lr=optimizer.param_groups[0]["lr"],
                batch_size=cfg.train.batch_size,
                seconds=time.perf_counter() - tick,
                bar=bar,
            )
            sums, count, tick = defaultdict(float), 0, time.perf_counter()
        bar.update()
        if (
            val_ds is not None
            and (state.step % cfg.train.eval_every == 0)
            and accelerator.is_main_process
        ):
            metrics = validate(unwrapped, frontend, val_ds, cfg, device, run_dir, state.step)
            log_scalars(accelerator, run_dir, metrics, state.step)
            log.info("step %d %s", state.step, " ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
        if state.step % cfg.train.save_every == 0 or state.step == cfg.train.max_steps:
            save_checkpoint(
                accelerator,
                run_dir,
                model=unwrapped,
                optimizer=optimizer,
                ema=ema,
                state=state,
                keep_last=cfg.train.keep_last,
            )
    bar.close()
    return export(accelerator, unwrapped, ema, frontend, cfg, run_dir, state, train_ds, val_ds)


def _crop_samples(cfg: EncoderStageConfig, frontend: SpectrogramFrontend) -> int | None:
    """Training window in samples (`train_crop_seconds`), or None for the whole segment."""
    seconds = cfg.train_crop_seconds
    if seconds is None:
        return None
    segment = frontend.config.segment_seconds
    if not 0 < seconds <= segment:
        raise InputError(
            None, f"train_crop_seconds {seconds} must lie in (0, segment_seconds {segment}]"
        )
    return round(seconds * frontend.config.sample_rate)


def _maybe_split(cfg: EncoderStageConfig, frontend, split: str) -> SpeechFaceDataset | None:
    try:
        return SpeechFaceDataset(
            cfg.data.root, split, frontend=frontend, image_size=cfg.data.image_size
        )
    except InputError:
        log.info("no %s split in %s: skipping that evaluation", split, cfg.data.root)
        return None


def export(
    accelerator,
    model: SpeechFaceModel,
    ema: EMA,
    frontend,
    cfg: EncoderStageConfig,
    run_dir: Path,
    state: TrainState,
    train_ds: SpeechFaceDataset,
    val_ds: SpeechFaceDataset | None,
) -> Path:
    """Save the EMA weights with `save_pretrained`, then score them on the test split (probes
    fit on `train_ds`, their ridge strength chosen on `val_ds`)."""
    out = run_dir / "export"
    check_ranks_agree(accelerator, model)
    if accelerator.is_main_process:
        final = copy.deepcopy(model).cpu().to(memory_format=torch.contiguous_format)
        ema.copy_to(final)
        for name, module in (
            ("speech_encoder", final.speech_encoder),
            ("face_encoder", final.face_encoder),
            ("face_decoder", final.face_decoder),
            ("frontend", frontend.cpu()),
        ):
            module.save_pretrained(out / name)
            write_meta(out / name, run_dir, state.step)
        metrics = {"step": state.step, "logit_scale": final.logit_scale.detach().exp().item()}
        test_ds = _maybe_split(cfg, frontend, "test")
        if test_ds is not None:
            kw = {
                "max_clips": cfg.eval.max_clips,
                "batch_size": cfg.train.batch_size,
                "device": torch.device("cpu"),
                "num_workers": cfg.data.num_workers,
            }
            test_emb = embed_split(final, frontend, test_ds, **kw)
            metrics |= {
                f"test/{k}": v
                for k, v in retrieval_by_speaker(test_emb, cfg.eval.pool_size).items()
            }
            metrics["test/recon_mae"] = test_emb["mae"].mean().item()
            metrics["test/psnr"] = test_emb["psnr"].mean().item()
            probe_kw = kw | {"speech_only": True}
            train_emb = embed_split(
                final, frontend, train_ds, **(probe_kw | {"max_clips": PROBE_TRAIN_CLIPS})
            )
            val = (
                None
                if val_ds is None
                else (embed_split(final, frontend, val_ds, **probe_kw), val_ds)
            )
            metrics |= linear_probes((train_emb, train_ds), (test_emb, test_ds), val)
            validate(final, frontend, test_ds, cfg, None, run_dir, state.step, emb=test_emb)
        write_json(run_dir / "metrics.json", metrics)
        plot_scalars(run_dir, CURVES, run_dir / "curves.png")
        log.info("exported %s; %s", out, " ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return out
