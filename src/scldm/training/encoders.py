"""Stage 1 (paper eq. 1): collaborative pre-training of the speech encoder, the VGG-16 face
encoder and the face decoder — a CLIP-style loss aligns speech and face embeddings while the
decoder learns to reconstruct faces from the face latents. One `train(cfg)`, STYLE.md §4.7;
what it validates and reports is in `scldm.evaluation.stage1`."""

from __future__ import annotations

import copy
import logging
import math
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader

from scldm.audio import augment, random_crop
from scldm.config import EncoderStageConfig, component_kwargs
from scldm.data.datasets import SpeakerBatchSampler, SpeechFaceDataset, collate
from scldm.errors import InputError
from scldm.evaluation.stage1 import score_export, validate
from scldm.io import write_json
from scldm.losses import encoder_stage_loss, region_weights
from scldm.models import FaceDecoder, FaceEncoder, build_speech
from scldm.models.contrastive import SpeechFaceModel
from scldm.models.face_decoder import FACE_DECODER_PRESETS
from scldm.models.face_encoder import FACE_ENCODER_PRESETS
from scldm.models.ge2e import REAL_SPEECH_FILE, real_speech_mean
from scldm.optim import EMA, lr_at, param_groups
from scldm.training.adversarial import Adversary
from scldm.training.checkpoint import maybe_resume, save_checkpoint, write_meta
from scldm.training.guard import active, guarded
from scldm.training.loop import (
    LogWindow,
    TrainState,
    background_worker,
    batch_everywhere,
    batch_stream,
    check_ranks_agree,
    crop_samples,
    due,
    global_batch,
    log_scalars,
    make_accelerator,
    maybe_split,
    optimizer_step,
    plot_scalars,
    progress_bar,
    setup_run,
    step_generator,
)

__all__ = ["build_model", "component_kwargs", "make_optimizer", "train"]
log = logging.getLogger("scldm.train")
LOGIT_SCALE_MAX = 4.6052  # ln 100, CLIP's clamp
REAL_DIRECTION_CLIPS = 512  # training clips whose mean GE2E embedding sets the real direction
CURVES = ["train/loss", "train/contrastive", "train/mae", "val/R@1", "val/R@10", "val/psnr"]
GAN_CURVES = ["train/adversarial", "train/discriminator", "train/feature_matching"]


def build_model(cfg: EncoderStageConfig) -> tuple[torch.nn.Module, SpeechFaceModel]:
    """The front end, and the three networks with the temperature, built from the config's
    constructor kwargs (`speech_encoder.type` picks the speech side, `scldm.models.speech`)."""
    frontend, speech_encoder = build_speech(
        cfg.frontend, cfg.speech_encoder, ge2e_weights=cfg.ge2e_weights
    )
    try:
        model = SpeechFaceModel(
            speech_encoder=speech_encoder,
            face_encoder=FaceEncoder(
                **component_kwargs(cfg.face_encoder, FACE_ENCODER_PRESETS, "face_encoder")
            ),
            face_decoder=FaceDecoder(
                **component_kwargs(cfg.face_decoder, FACE_DECODER_PRESETS, "face_decoder")
            ),
        )
    except (TypeError, ValueError) as e:  # an unknown keyword, or parts that do not fit
        raise InputError(None, f"model config: {e}") from None
    if cfg.vggface_weights:
        report = model.face_encoder.load_vggface(cfg.vggface_weights)
        log.info("VGGFace weights from %s: %s", cfg.vggface_weights, report)
    return frontend, model


def make_optimizer(model: SpeechFaceModel, cfg: EncoderStageConfig) -> torch.optim.AdamW:
    """Fused AdamW (one kernel) with a base LR per part: speech (and the temperature), face."""
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
    return torch.optim.AdamW(groups, betas=cfg.optim.betas, eps=cfg.optim.eps, fused=True)


@guarded
def train(cfg: EncoderStageConfig, *, resume: str | None = None, cpu: bool = False) -> Path:
    """Run stage 1 and return the export folder (speech_encoder/, face_encoder/, face_decoder/,
    frontend/ — EMA weights, `save_pretrained` format)."""
    set_seed(cfg.train.seed)  # identical initialisation on every rank
    frontend, model = build_model(cfg)
    crop = crop_samples(cfg.train_crop_seconds, frontend)  # checked before anything is written
    real_mean = _real_speech_mean(model.speech_encoder, cfg)  # so is this
    if not 0 < cfg.recon_fraction <= 1:
        raise InputError(None, f"recon_fraction {cfg.recon_fraction:g} must lie in (0, 1]")
    # faces the decoder reconstructs per step (per process): at least one
    num_reconstructed = max(1, math.ceil(cfg.recon_fraction * cfg.train.batch_size))
    region = cfg.recon_region
    pixel_weights = (
        region_weights(cfg.data.image_size, region.box, region.weight)
        if region.weight != 1.0
        else None
    )
    run_dir = Path(cfg.train.output_dir)
    accelerator = make_accelerator(cfg.train, run_dir, cpu=cpu)
    setup_run(accelerator, cfg, run_dir, "scldm-pretrain")
    device = accelerator.device

    train_ds = SpeechFaceDataset(
        cfg.data.root, "train", frontend=frontend, image_size=cfg.data.image_size
    )
    if cfg.data.in_memory:
        train_ds.load_into_memory(progress=accelerator.is_local_main_process)
    if real_mean is not None:
        _set_real_direction(model.speech_encoder, frontend, train_ds, cfg, real_mean)
    sampler = SpeakerBatchSampler(train_ds.speaker_index, cfg.train.batch_size, seed=cfg.train.seed)
    loader = DataLoader(
        train_ds,
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=cfg.data.num_workers,
        persistent_workers=cfg.data.num_workers > 0,
        worker_init_fn=background_worker,
    )
    # channels-last convolutions: faster on CPU (oneDNN) for the speech encoder and the decoder,
    # and the layout tensor cores want on GPU (benchmarks/results/pretrain_cpu.md)
    model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, cfg)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    frontend.to(device)
    perceptual = _perceptual(cfg, device)
    unwrapped = accelerator.unwrap_model(model)
    adversary = None
    if cfg.adversarial.enabled:
        last_layer = unwrapped.face_decoder.conv_out.weight
        adversary = Adversary(cfg.adversarial, accelerator, last_layer)
    extras = adversary.checkpoint_parts() if adversary else None
    set_seed(cfg.train.seed, device_specific=True)  # per-rank randomness from here on

    ema, state = EMA(unwrapped, cfg.train.ema_decay), TrainState()
    maybe_resume(
        accelerator,
        run_dir,
        resume,
        model=unwrapped,
        optimizer=optimizer,
        ema=ema,
        state=state,
        extras=extras,
    )
    samples_per_step = global_batch(cfg.train, accelerator)
    log.info(
        "stage 1: %d train clips of %d speakers, global batch %d, %d steps, %s",
        len(train_ds),
        len(train_ds.speakers),
        samples_per_step,
        cfg.train.max_steps,
        device,
    )
    val_ds = maybe_split(cfg.data, frontend, cfg.eval.split)
    if val_ds is not None and cfg.data.in_memory and accelerator.is_main_process:
        val_ds.load_into_memory()  # validated every eval_every steps, on the main process
    bar = progress_bar(accelerator, cfg.train, state.step, "pretrain")
    window = LogWindow(accelerator, run_dir, cfg.train.batch_size, bar)
    guard = active()
    try:  # the bar ends its line before any error is printed
        for batch in batch_stream(loader, sampler, state.step, accelerator):
            if state.step >= cfg.train.max_steps:
                break
            if not batch_everywhere(batch, accelerator):  # all clips unreadable somewhere
                continue
            with accelerator.accumulate(model, *([adversary.disc] if adversary else [])):
                wave = batch["waveform"]
                draws = step_generator(cfg.train.seed, state, accelerator)  # crops, then effects
                if crop is not None:
                    wave = random_crop(wave, crop, draws)
                wave = augment(wave, frontend.config.sample_rate, cfg.augment, draws)
                outputs = model(  # through DDP's forward
                    frontend(wave), batch["face"], num_reconstructed=num_reconstructed
                )
                adversarial = adversary is not None and adversary.active(state.step)
                loss, logs = encoder_stage_loss(
                    outputs,
                    batch,
                    cfg.loss_weights,
                    perceptual=perceptual,
                    adversarial=adversary.generator_terms if adversarial else None,
                    gather=cfg.gather_negatives,
                    pixel_weights=pixel_weights,
                )
                accelerator.backward(loss)
                if not guard.finite({"loss": loss}, state.step, "pretrain", run_dir):
                    optimizer.zero_grad(set_to_none=True)
                    adversarial = False
                else:
                    lr = lr_at(state.step, cfg.optim, cfg.train.max_steps)
                    logs |= optimizer_step(accelerator, model, optimizer, lr, cfg.optim.grad_clip)
                if adversarial:
                    faces = batch["face"][:num_reconstructed]
                    logs |= adversary.discriminator_step(
                        faces, outputs["reconstruction"], lr, cfg.optim.grad_clip
                    )
            window.add(logs)
            if not accelerator.sync_gradients:
                continue
            state.step += 1
            state.samples += samples_per_step
            with torch.no_grad():
                unwrapped.logit_scale.clamp_(0, LOGIT_SCALE_MAX)
            ema.update(unwrapped)
            if due(state.step, cfg.train.log_every, cfg.train.max_steps):
                window.report(state.step, optimizer.param_groups[0]["lr"])
            bar.update()
            if val_ds is not None and due(state.step, cfg.train.eval_every):
                _validate(accelerator, unwrapped, frontend, val_ds, cfg, run_dir, state.step)
            guard.checkpoint(
                state.step,
                cfg.train.save_every,
                cfg.train.max_steps,
                lambda: save_checkpoint(
                    accelerator,
                    run_dir,
                    model=unwrapped,
                    optimizer=optimizer,
                    ema=ema,
                    state=state,
                    keep_last=cfg.train.keep_last,
                    extras=extras,
                ),
            )
    finally:
        bar.close()
    return export(accelerator, unwrapped, ema, frontend, cfg, run_dir, state, train_ds, val_ds)


def _real_speech_mean(encoder: torch.nn.Module, cfg: EncoderStageConfig) -> torch.Tensor | None:
    """Real speech's mean GE2E embedding where the encoder removes its real direction, else
    None; `InputError` naming the file for one that does not fit the encoder."""
    if not getattr(encoder.config, "remove_real_direction", False):
        return None
    real = real_speech_mean(cfg.ge2e_real_speech)
    if real.shape != encoder.real_direction.shape:
        path = cfg.ge2e_real_speech or REAL_SPEECH_FILE
        dims = encoder.real_direction.numel()
        raise InputError(path, f"holds a {real.numel()}-d mean, not GE2E's {dims}-d")
    return real


@torch.no_grad()
def _set_real_direction(
    encoder: torch.nn.Module,
    frontend: torch.nn.Module,
    train_ds: SpeechFaceDataset,
    cfg: EncoderStageConfig,
    real: torch.Tensor,
) -> None:
    """GE2E's real direction: from the mean partial embedding of up to REAL_DIRECTION_CLIPS
    training clips, each heard as it is and through the configured augmentation (as stage 1
    hears them; seeded, the same on every rank), to `real`, real speech's."""
    draws = torch.Generator().manual_seed(cfg.train.seed)
    order = torch.randperm(len(train_ds), generator=draws)[:REAL_DIRECTION_CLIPS].tolist()
    total, count = torch.zeros_like(real, dtype=torch.float64), 0
    for start in range(0, len(order), 32):
        batch = collate([train_ds[i] for i in order[start : start + 32]])
        if batch is None:
            continue
        wave = batch["waveform"]
        for heard in (wave, augment(wave, frontend.config.sample_rate, cfg.augment, draws)):
            partials = encoder.partials(frontend(heard)).flatten(0, 1)  # (B·P, ge2e_dim)
            total += partials.double().sum(0)
            count += partials.shape[0]
    if count == 0:
        raise InputError(cfg.data.root, "no readable training clip to set GE2E's real direction")
    gap = encoder.set_real_direction(total / count, real)
    log.info("GE2E real direction from %d partial embeddings: |real - training mean| %.3f",
             count, gap)  # fmt: skip


def _perceptual(cfg: EncoderStageConfig, device: torch.device):
    if cfg.loss_weights.get("loss/lpips", 0.0) == 0.0:
        return None
    from scldm.models.perceptual import LPIPS

    return LPIPS(backbone_weights=cfg.lpips_weights).to(device).eval().requires_grad_(False)


def _validate(accelerator, model, frontend, dataset, cfg, run_dir: Path, step: int) -> None:
    """On the main process: validation metrics to the logs, the reconstruction grid to
    RUN/samples/step_NNNNNNN.png."""
    if not accelerator.is_main_process:
        return
    grid = run_dir / "samples" / f"step_{step:07d}.png"
    metrics = validate(model, frontend, dataset, cfg, accelerator.device, grid, background_worker)
    log_scalars(accelerator, run_dir, metrics, step)
    log.info("step %d %s", step, " ".join(f"{k}={v:.4g}" for k, v in metrics.items()))


def export(
    accelerator: Accelerator,
    model: SpeechFaceModel,
    ema: EMA,
    frontend: torch.nn.Module,
    cfg: EncoderStageConfig,
    run_dir: Path,
    state: TrainState,
    train_ds: SpeechFaceDataset,
    val_ds: SpeechFaceDataset | None,
) -> Path:
    """Save the EMA weights with `save_pretrained`, then score them on the test split (probes
    fit on `train_ds`, their ridge strength chosen on `val_ds`) into RUN/metrics.json."""
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
        test_ds = maybe_split(cfg.data, frontend, "test")
        if test_ds is not None:
            metrics |= score_export(
                final,
                frontend,
                cfg,
                train=train_ds,
                test=test_ds,
                val=val_ds,
                grid_path=run_dir / "samples" / f"step_{state.step:07d}.png",
                worker_init_fn=background_worker,
            )
        write_json(run_dir / "metrics.json", metrics, indent=2)
        curves = CURVES + (GAN_CURVES if cfg.adversarial.enabled else [])
        plot_scalars(run_dir, curves, run_dir / "curves.png")
        log.info("exported %s; %s", out, " ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return out
