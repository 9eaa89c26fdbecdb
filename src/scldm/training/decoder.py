"""Refining the stage-1 face decoder on the frozen encoder's latents, before stage 2 trains.

Stage 1 trains the decoder jointly with the contrastive encoders and, on a small budget, briefly,
while its reconstructions are what every generated face goes through (how much of the linked
attributes they lose: docs/notes/2026-11-decoder-refinement.md). With the face encoder frozen its
latents are fixed, so the decoder can keep training alone on (latent, face) pairs, as LDM trains
its autoencoder to convergence first. The latents, the latent cache and the prior stay as they
are; only the decoder that ships in the pipeline changes.

With `decoder.model` set, the refinement starts instead from a new decoder of another
architecture (a wider one: stage 1 trains its decoder beside the encoders on a shared budget, but
nothing ties the decoder that ships to that size), trained from scratch on the same latents.

A refined decoder lives in `<stage-1 run>/cache/decoder-<key>/`; the key hashes the stage-1
decoder, the training cache and the settings, so every later stage-2 run with the same
settings reuses it.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from scldm.config import DecoderRefineConfig, OptimConfig, component_kwargs
from scldm.errors import InputError
from scldm.evaluation.metrics import psnr
from scldm.faces import load_face_tensor
from scldm.losses import box_mask, region_weights
from scldm.models import FaceDecoder
from scldm.models.blocks import POOL
from scldm.models.face_decoder import FACE_DECODER_PRESETS
from scldm.optim import lr_at, set_lr
from scldm.training.adversarial import Adversary
from scldm.training.latents import Encoders, LatentCache, digest_parts

log = logging.getLogger("scldm.train")
VAL_FACES = 256  # validation faces decoded for refine.json's PSNR, in one batch
# the refinement's pixel losses in [-1, 1] (`decoder.loss`, whose values the config checks)
LOSSES = {"l1": F.l1_loss, "mse": F.mse_loss}
# what a new decoder (`decoder.model`) always takes from stage 1's: the latents it reads, the faces
# it draws and the latent scale stage 2 writes
FROM_STAGE1 = ("latent_channels", "image_size", "scaling_factor")


def unique_faces(cache: LatentCache, root: str | Path, image_size: int):
    """(unscaled latents (N, C, h, w), faces (N, 3, H, W) uint8) of the cache's distinct face
    images, in cache order (clips of one image share its latent). uint8 holds 8-bit images
    exactly in a quarter of the memory: 10,000 faces of 224 px take 1.5 GB."""
    picks, seen = [], set()
    for i, r in enumerate(cache.tensors["row"].tolist()):
        face = cache.rows[r]["face"]
        if face not in seen:
            seen.add(face)
            picks.append((i, face))
    faces = torch.stack([load_face_tensor(Path(root) / f, image_size) for _, f in picks])
    faces = torch.round((faces + 1) * 127.5).to(torch.uint8)
    return cache.latents[[i for i, _ in picks]].float(), faces


def refine(
    decoder: FaceDecoder,
    latents: torch.Tensor,
    faces: torch.Tensor,
    cfg: DecoderRefineConfig,
    *,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> FaceDecoder:
    """A copy of `decoder` trained `cfg.steps` steps to map `latents` to `faces` (uint8; L1 or,
    with `cfg.loss` "mse", the squared error in [-1, 1], random batches of `cfg.batch_size`
    drawn from a seeded generator; with `cfg.recon_region`, each pixel's error weighed by
    `region_weights`; with `cfg.adversarial`, against a PatchGAN from its
    `start_step` on, as stage 1 trains it, and with `cfg.anchor`, held outside the
    discriminator's box to a frozen copy of itself taken at that step; in channels-last layout,
    autocast to bfloat16 when `cfg.precision` asks for it), returned on the CPU in eval mode."""
    device = torch.device(device)
    bf16 = use_bf16(cfg.precision, device)
    decoder = copy.deepcopy(decoder).float().to(device, memory_format=torch.channels_last)
    decoder.train().requires_grad_(True)
    adversary = None
    if cfg.adversarial.enabled:  # seeded, and leaving the global RNG as it was
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            adversary = Adversary(cfg.adversarial, None, decoder.conv_out.weight)
    optim = OptimConfig(
        lr=cfg.lr, warmup_steps=min(50, cfg.steps // 10), min_lr_ratio=0.0, weight_decay=0.01
    )
    opt = torch.optim.AdamW(decoder.parameters(), lr=cfg.lr, weight_decay=optim.weight_decay)
    for group in opt.param_groups:
        group["base_lr"] = cfg.lr
    g = torch.Generator().manual_seed(seed)
    region = cfg.recon_region
    weights = None  # the default, every pixel alike, keeps the plain loss (bitwise as before)
    if region.weight != 1.0:
        weights = region_weights(faces.shape[-1], region.box, region.weight).to(device)
    teacher, outside = None, None  # `cfg.anchor`: the frozen copy and where it holds
    if cfg.anchor:
        outside = 1 - box_mask(faces.shape[-1], cfg.adversarial.box).to(device)
    bar = tqdm(range(cfg.steps), desc="refining the face decoder", disable=not progress or None)
    for step in bar:
        idx = torch.randint(len(latents), (min(cfg.batch_size, len(latents)),), generator=g)
        target = faces[idx].to(device).float() / 127.5 - 1
        z = latents[idx].to(device, memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            reconstruction = decoder(z).float()
        if weights is None:
            rec = LOSSES[cfg.loss](reconstruction, target)
        else:
            pointwise = LOSSES[cfg.loss](reconstruction, target, reduction="none")
            rec = (pointwise * weights).mean()
        loss, adversarial = rec, adversary is not None and adversary.active(step)
        if adversarial:
            extra, _ = adversary.generator_terms(reconstruction, target, rec)
            loss = loss + extra
        if adversarial and cfg.anchor:
            if teacher is None:  # the decoder as it is when the discriminator starts
                teacher = copy.deepcopy(decoder).eval().requires_grad_(False)
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                held = teacher(z).float()
            drift = ((reconstruction - held).abs() * outside).sum()  # mean over what it holds
            loss = loss + cfg.anchor * drift / (outside.sum() * reconstruction[..., 0, 0].numel())
        factor = lr_at(step, optim, cfg.steps)
        set_lr(opt, factor)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if adversarial:
            adversary.discriminator_step(target, reconstruction, factor, grad_clip=1.0)
        if step % 25 == 0:
            bar.set_postfix({cfg.loss: f"{rec.item():.4f}"})
    decoder = decoder.cpu().to(memory_format=torch.contiguous_format)  # safetensors wants it
    return decoder.eval().requires_grad_(False)


def decoder_model_kwargs(stage1: FaceDecoder, model: Mapping[str, Any]) -> dict:
    """The constructor kwargs of the new decoder `model` asks for (`decoder.model`): stage 1's
    decoder config with the mapping's keys replaced (`preset: NAME` names a FACE_DECODER_PRESETS
    entry); `FROM_STAGE1` stays stage 1's, and a mapping that sets it otherwise, or whose widths
    pool a different number of times (faces of another size), is refused in one line."""
    kwargs = {k: v for k, v in stage1.config.items() if not k.startswith("_")}
    for k in FROM_STAGE1:
        if k in model and model[k] != kwargs[k]:
            raise InputError(
                None, f"decoder.model.{k}: {model[k]!r} does not fit stage 1's {kwargs[k]!r}"
            )
    new = component_kwargs(model, FACE_DECODER_PRESETS, "decoder.model")
    kwargs.update({k: v for k, v in new.items() if k not in FROM_STAGE1})
    pools = [sum(w == POOL for w in d["widths"]) for d in (stage1.config, kwargs)]
    if pools[0] != pools[1]:
        raise InputError(
            None,
            f"decoder.model.widths: {list(kwargs['widths'])} upsample {pools[1]} times, stage 1's "
            f"latents need {pools[0]}",
        )
    return kwargs


def new_decoder(stage1: FaceDecoder, model: Mapping[str, Any], seed: int = 0) -> FaceDecoder:
    """A freshly initialised decoder of the architecture `decoder_model_kwargs` gives (seeded,
    leaving the global RNG as it was)."""
    kwargs = decoder_model_kwargs(stage1, model)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return FaceDecoder(**kwargs)
    except (TypeError, ValueError) as e:  # an unknown keyword or a bad widths tuple
        raise InputError(None, f"decoder.model: {e}") from None


def use_bf16(precision: str, device: torch.device) -> bool:
    """Whether `precision` ("auto", "no" or "bf16") autocasts to bfloat16 on `device`: "auto"
    does where bfloat16 runs natively (a CUDA GPU that supports it; a CPU with AVX-512 BF16 or
    AMX), and not where it would be emulated, which is slower than float32
    (benchmarks/results/decoder_refine_cpu.md)."""
    if precision != "auto":
        return precision == "bf16"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_bf16()


def cpu_has_bf16() -> bool:
    """Whether oneDNN runs bfloat16 natively on this CPU (AVX-512 BF16 or AMX)."""
    return bool(
        torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )


def refine_key(
    encoders: Encoders, cache: LatentCache, cfg: DecoderRefineConfig, *, bf16: bool = False
) -> str:
    """16 hex digits over the stage-1 decoder, the training cache, the settings (with
    `decoder.model`, the new decoder's whole architecture) and whether the refinement runs in
    bfloat16 (`cfg.precision` as `use_bf16` resolves it on the device)."""
    h = hashlib.sha256()
    digest_parts(encoders, ("face_decoder",), h)
    h.update(f"{cache.path.name}|{cfg.steps}|{cfg.lr}|{cfg.batch_size}".encode())
    if cfg.adversarial.enabled:  # keys without it stay those of earlier versions
        h.update(repr(cfg.adversarial).encode())
    if cfg.loss != "l1":  # so do L1 ones
        h.update(f"|{cfg.loss}".encode())
    if bf16:  # and float32 ones, those from before the precision setting
        h.update(b"|bf16")
    if cfg.recon_region.weight != 1.0:  # and those with every pixel alike
        h.update(f"|region={cfg.recon_region.box}x{cfg.recon_region.weight}".encode())
    if cfg.anchor:  # and those without an anchor
        h.update(f"|anchor={cfg.anchor}".encode())
    if cfg.model:  # and so do those that refine stage 1's decoder
        kwargs = decoder_model_kwargs(encoders.face_decoder, cfg.model)
        h.update(f"|model={json.dumps(kwargs, sort_keys=True, default=list)}".encode())
    return h.hexdigest()[:16]


def refined_decoder(
    encoders: Encoders,
    cache: LatentCache,
    cfg: DecoderRefineConfig,
    root: str | Path,
    val_cache: LatentCache | None = None,
    device: torch.device | str = "cpu",
) -> FaceDecoder:
    """The decoder stage 2 ships: the stage-1 one when `cfg.steps` is 0, otherwise its
    refinement on the training faces (or, with `cfg.model`, a new decoder of that architecture
    trained on them from scratch), read from the run's cache or made and saved there (with
    refine.json: the settings, the time and the PSNR of stage 1's decoder and of this one on up to
    `VAL_FACES` validation faces)."""
    if cfg.steps < 0 or cfg.batch_size < 1 or cfg.lr <= 0:
        raise InputError(None, f"decoder: steps ≥ 0, batch_size ≥ 1 and lr > 0 needed, got {cfg}")
    if cfg.steps == 0:
        if cfg.model:
            raise InputError(
                None,
                "decoder.model: a new decoder needs decoder.steps > 0 (to ship stage 1's decoder "
                "as it is, also set decoder.model=null)",
            )
        return encoders.face_decoder
    bf16 = use_bf16(cfg.precision, torch.device(device))
    path = encoders.path.parent / "cache" / f"decoder-{refine_key(encoders, cache, cfg, bf16=bf16)}"
    if (path / "refine.json").is_file():
        log.info("reusing the refined face decoder %s", path)
        return FaceDecoder.from_pretrained(path).eval().requires_grad_(False)
    start = new_decoder(encoders.face_decoder, cfg.model) if cfg.model else encoders.face_decoder
    latents, faces = unique_faces(cache, root, encoders.image_size)
    tick = time.perf_counter()
    decoder = refine(start, latents, faces, cfg, device=device)
    info = {
        "steps": cfg.steps,
        "lr": cfg.lr,
        "batch_size": cfg.batch_size,
        "loss": cfg.loss,
        "precision": "bf16" if bf16 else "float32",
        "faces": len(faces),
    }
    if cfg.adversarial.enabled:
        info["adversarial"] = dataclasses.asdict(cfg.adversarial)
    if cfg.recon_region.weight != 1.0:
        info["recon_region"] = dataclasses.asdict(cfg.recon_region)
    if cfg.anchor:
        info["anchor"] = cfg.anchor
    if cfg.model:
        info["model"] = dict(cfg.model)
        info["widths"] = list(decoder.config.widths)
    info["parameters"] = sum(p.numel() for p in decoder.parameters())
    info["seconds"] = round(time.perf_counter() - tick, 1)
    if val_cache is not None:
        z, x = unique_faces(val_cache, root, encoders.image_size)
        z, x = z[:VAL_FACES], x[:VAL_FACES].float() / 127.5 - 1
        with torch.no_grad():
            info["val_psnr_before"] = round(psnr(encoders.face_decoder(z), x), 2)
            info["val_psnr_after"] = round(psnr(decoder(z), x), 2)
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    decoder.save_pretrained(tmp)
    (tmp / "refine.json").write_text(json.dumps(info, indent=2))
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    log.info("refined the face decoder on %d faces in %s: %s", len(faces), path, info)
    return decoder
