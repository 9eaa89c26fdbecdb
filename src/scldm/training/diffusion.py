"""Stage 2 (paper eq. 2, 4–6): the speech-conditioned latent diffusion model with the face
prior, trained on cached latents of the frozen stage-1 encoders. One `train(cfg, encoders)`,
the same loop conventions as stage 1 (STYLE.md §4.7)."""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from diffusers import DDPMScheduler
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler

from scldm.config import DiffusionStageConfig
from scldm.data.synthvox import training_data
from scldm.diffusion.objective import diffusion_loss
from scldm.diffusion.pipeline import SpeechToFacePipeline
from scldm.diffusion.prior import FacePrior
from scldm.diffusion.sampling import make_scheduler, sample_latents
from scldm.diffusion.unet import build_unet
from scldm.errors import InputError
from scldm.faces import load_face_tensor, make_grid, save_image
from scldm.optim import EMA, lr_at
from scldm.training.checkpoint import maybe_resume, save_checkpoint, write_meta
from scldm.training.decoder import refined_decoder
from scldm.training.guard import active, guarded
from scldm.training.latents import Encoders, LatentCache, build_cache, face_prior, load_encoders
from scldm.training.loop import (
    LogWindow,
    TrainState,
    batch_stream,
    check_ranks_agree,
    due,
    global_batch,
    make_accelerator,
    optimizer_step,
    plot_scalars,
    progress_bar,
    setup_run,
    step_generator,
)

log = logging.getLogger("scldm.train")
CURVES = ["train/loss", "train/grad_norm", "train/lr"]


class EpochSampler(Sampler[int]):
    """A seeded permutation of range(n) per epoch (`set_epoch`), so resuming is exact."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


class CachedPairs(Dataset):
    """(z_0, tokens) rows of a latent cache for the UNet: latents times `scale`, both float32,
    gathered a batch at a time from the memory-mapped cache (`__getitems__`), so no process
    holds a copy of the split. Its loader's collate_fn is `as_batch`."""

    def __init__(self, cache: LatentCache, scale: float) -> None:
        self.latents, self.tokens, self.scale = cache.latents, cache.tokens, scale

    def __len__(self) -> int:
        return len(self.latents)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.latents[i].float() * self.scale, self.tokens[i].float()

    def __getitems__(self, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.as_tensor(rows)
        return self.latents[index].float() * self.scale, self.tokens[index].float()


def as_batch(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The collate_fn of a `CachedPairs` loader: its batch is already gathered."""
    return batch


# --- Validation ------------------------------------------------------------------------------


@torch.no_grad()
def sample_grid(
    unet,
    scheduler,
    encoders: Encoders,
    cache: LatentCache,
    cfg: DiffusionStageConfig,
    prior: torch.Tensor,
    scale: float,
    path: Path,
) -> None:
    """Rows of true face | generated faces for the first `eval.grid_size` voices (one clip per
    speaker) with fixed seeds, so grids of successive steps compare directly."""
    picks, seen = [], set()
    for i, spk in enumerate(cache.tensors["speaker"].tolist()):
        if spk not in seen:
            seen.add(spk)
            picks.append(i)
        if len(picks) == cfg.eval.grid_size:
            break
    k = cfg.images_per_voice
    tokens = cache.tokens[picks].float().repeat_interleave(k, dim=0)
    device = next(unet.parameters()).device
    latents = sample_latents(
        unet,
        scheduler,
        tokens.to(device),
        prior=prior.to(device),
        prior_scale=cfg.sampling.prior_scale,
        num_inference_steps=cfg.sampling.num_inference_steps,
        guidance_scale=cfg.sampling.guidance_scale,
        temperature=cfg.sampling.temperature,
        generator=torch.Generator(device).manual_seed(0),
        latent_shape=tuple(prior.shape),
    )
    faces = encoders.face_decoder.to(device)(latents / scale).float().cpu()
    images, captions = [], []
    root = Path(cfg.data.root)
    for j, i in enumerate(picks):
        row = cache.rows[int(cache.tensors["row"][i])]
        images.append(load_face_tensor(root / row["face"], encoders.image_size))
        captions.append(f"{row.get('gender') or '?'} {row.get('age') or ''}".strip())
        images += list(faces[j * k : (j + 1) * k])
        captions += [""] * k
    save_image(make_grid(images, ncols=k + 1, captions=captions), path)


# --- Training --------------------------------------------------------------------------------


def unet_config_for(unet: Mapping[str, Any], latent_shape: tuple[int, ...]) -> dict[str, Any]:
    """The UNet config with the latent shape of the stage-1 encoders filled in (channels and
    side come from stage 1, not the preset); a value the config gives explicitly must agree."""
    channels, side = latent_shape[0], latent_shape[-1]
    shape = {"sample_size": side, "in_channels": channels, "out_channels": channels}
    for key, value in shape.items():
        if key in unet and unet[key] != value:
            raise InputError(
                None,
                f"unet.{key} is {unet[key]} but the stage-1 latents are "
                f"{'×'.join(map(str, latent_shape))}: set it to {value} or leave it out",
            )
    return {**unet, **shape}


@guarded
def train(
    cfg: DiffusionStageConfig,
    encoders_run: str | Path,
    *,
    resume: str | None = None,
    cpu: bool = False,
) -> Path:
    """Run stage 2 and return the exported pipeline folder (RUN/pipeline)."""
    run_dir = Path(cfg.train.output_dir)
    accelerator = make_accelerator(cfg.train, run_dir, cpu=cpu)
    set_seed(cfg.train.seed)
    setup_run(accelerator, cfg, run_dir, "scldm-train")
    device = accelerator.device
    encoders = load_encoders(encoders_run)
    if encoders.image_size != cfg.data.image_size:
        log.info("faces are read at the encoders' %d px", encoders.image_size)
    with accelerator.main_process_first():  # rank 0 builds the caches, the others read them
        cache = build_cache(encoders, cfg.data.root, "train", num_workers=cfg.data.num_workers)
        try:
            val_cache = build_cache(encoders, cfg.data.root, cfg.eval.split)
        except InputError:
            val_cache = None
        report = face_prior(encoders, cfg.data.root, num_faces=cfg.prior_faces, cache=cache)
        prior, scale = report.prior, report.scale
        decoder = refined_decoder(
            encoders, cache, cfg.decoder, cfg.data.root, val_cache, device=device
        )
    encoders = dataclasses.replace(encoders, face_decoder=decoder)  # for the grids and export
    dataset = CachedPairs(cache, scale)
    log.info(
        "stage 2: %d cached clips, latents %s (scale %.4f), tokens %s, λ_train %g, global batch "
        "%d over %d process(es)",
        len(cache),
        tuple(cache.latents.shape[1:]),
        scale,
        tuple(cache.tokens.shape[1:]),
        cfg.lambda_train,
        global_batch(cfg.train, accelerator),
        accelerator.num_processes,
    )
    if len(dataset) < cfg.train.batch_size:
        raise InputError(None, f"{len(dataset)} clips < train.batch_size {cfg.train.batch_size}")
    sampler = EpochSampler(len(dataset), cfg.train.seed)
    loader = DataLoader(
        dataset,
        batch_sampler=BatchSampler(sampler, cfg.train.batch_size, drop_last=True),
        collate_fn=as_batch,
    )
    set_seed(cfg.train.seed)  # the same draws whether this run built the caches or read them
    unet = build_unet(unet_config_for(cfg.unet, tuple(cache.latents.shape[1:])))
    noise_scheduler = DDPMScheduler(**cfg.scheduler)
    optimizer = torch.optim.AdamW(
        unet.parameters(),
        lr=cfg.optim.lr,
        betas=cfg.optim.betas,
        eps=cfg.optim.eps,
        weight_decay=cfg.optim.weight_decay,
        fused=True,  # one kernel for all parameters
    )
    for group in optimizer.param_groups:
        group["base_lr"] = cfg.optim.lr
    unet, optimizer, loader = accelerator.prepare(unet, optimizer, loader)
    prior = prior.to(device)
    set_seed(cfg.train.seed, device_specific=True)
    unwrapped = accelerator.unwrap_model(unet)
    ema, state = EMA(unwrapped, cfg.train.ema_decay), TrainState()
    maybe_resume(
        accelerator, run_dir, resume, model=unwrapped, optimizer=optimizer, ema=ema, state=state
    )
    bar = progress_bar(accelerator, cfg.train, state.step, "train")
    window = LogWindow(accelerator, run_dir, cfg.train.batch_size, bar)
    samples_per_step = global_batch(cfg.train, accelerator)
    world, micro = accelerator.num_processes, 0  # micro: the micro-batch within the step
    guard = active()
    try:  # the bar ends its line before any error is printed
        for z0, tokens in batch_stream(loader, sampler, state.step, accelerator):
            if state.step >= cfg.train.max_steps:
                break
            with accelerator.accumulate(unet):
                loss, _ = diffusion_loss(
                    unet,
                    noise_scheduler,
                    z0,
                    tokens,
                    prior=prior,
                    prior_scale=cfg.lambda_train,
                    cond_drop=cfg.cond_drop,
                    # t, ε and the dropout mask from a (seed, step) generator, drawn for the
                    # global batch, of which each process keeps its rows: a resumed run draws
                    # what a straight one does (the global RNG also feeds the loader's
                    # iterator, which a resumed run makes at another step), and N processes
                    # what one process with the global batch does
                    generator=step_generator(cfg.train.seed, state, micro=micro),
                    rows=(accelerator.process_index * len(z0), len(z0) * world),
                )
                accelerator.backward(loss)
                logs = {"loss": loss}
                if guard.finite(logs, state.step, "train", run_dir):
                    lr = lr_at(state.step, cfg.optim, cfg.train.max_steps)
                    logs |= optimizer_step(accelerator, unet, optimizer, lr, cfg.optim.grad_clip)
                else:
                    optimizer.zero_grad(set_to_none=True)
            window.add(logs)
            micro += 1
            if not accelerator.sync_gradients:
                continue
            micro = 0
            state.step += 1
            state.samples += samples_per_step
            ema.update(unwrapped)
            if due(state.step, cfg.train.log_every, cfg.train.max_steps):
                window.report(state.step, optimizer.param_groups[0]["lr"])
            bar.update()
            main = accelerator.is_main_process
            if val_cache is not None and due(state.step, cfg.train.eval_every) and main:
                ema_unet = copy.deepcopy(unwrapped)
                ema.copy_to(ema_unet)
                scheduler = make_scheduler(cfg.sampling.scheduler, noise_scheduler.config)
                path = run_dir / "samples" / f"step_{state.step:07d}.png"
                sample_grid(
                    ema_unet.eval(), scheduler, encoders, val_cache, cfg, prior, scale, path
                )
                del ema_unet
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
                ),
            )
    finally:
        bar.close()
    return export(accelerator, unwrapped, ema, noise_scheduler, encoders, prior, scale, cfg, state)


def export(
    accelerator: Accelerator,
    unet: torch.nn.Module,
    ema: EMA,
    noise_scheduler: DDPMScheduler,
    encoders: Encoders,
    prior: torch.Tensor,
    scale: float,
    cfg: DiffusionStageConfig,
    state: TrainState,
) -> Path:
    """Save the pipeline with the EMA UNet, the prior and the (refined) decoder whose config
    records the latent `scale`; return its folder, RUN/pipeline."""
    run_dir = Path(cfg.train.output_dir)
    check_ranks_agree(accelerator, unet)
    out = run_dir / "pipeline"
    if accelerator.is_main_process:
        final = copy.deepcopy(unet).cpu()
        ema.copy_to(final)
        decoder = copy.deepcopy(encoders.face_decoder)
        decoder.register_to_config(scaling_factor=scale)
        pipe = SpeechToFacePipeline(
            frontend=encoders.frontend,
            speech_encoder=encoders.speech_encoder,
            unet=final.eval(),
            scheduler=make_scheduler(cfg.sampling.scheduler, noise_scheduler.config),
            face_decoder=decoder,
            prior=FacePrior(prior=prior.cpu(), lambda_infer=cfg.sampling.prior_scale),
            sampling=dataclasses.asdict(cfg.sampling),
        )
        pipe.save_pretrained(out)
        for part in ("unet", "prior"):
            write_meta(
                out / part,
                run_dir,
                state.step,
                encoders=str(encoders.path),
                training_data=training_data(cfg.data.root),
            )
        plot_scalars(run_dir, CURVES, run_dir / "curves.png")
        log.info("exported %s", out)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return out
