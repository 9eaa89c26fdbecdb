"""Sampling SCLDM's face latents: the samplers (any diffusers scheduler, picked by name with
`make_scheduler`) and `sample_latents`, the prior-shifted, classifier-free-guided sampling loop
that mirrors the training objective in `scldm.diffusion.objective`.

References: Lee et al., "PriorGrad", ICLR 2022 (the prior mean, here without the covariance);
Ho & Salimans, "Classifier-Free Diffusion Guidance", 2022; Popov et al., "Grad-TTS", ICML 2021
(the temperature of the starting noise); the SCLDM paper, eq. 2 and 4-6.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor
from torch import nn

from scldm.config import NOISE_SCHEDULE, SAMPLER_NAMES
from scldm.diffusion.prior import prior_shift
from scldm.errors import InputError

# DDPM; DDIM; DPM-Solver++(2M), Lu et al. 2022; UniPC, Zhao et al. 2023
SCHEDULERS: dict[str, type[SchedulerMixin]] = dict(
    zip(
        SAMPLER_NAMES,
        (DDPMScheduler, DDIMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler),
        strict=True,
    )
)
# sampling settings that override the training scheduler's: the latents have unit variance,
# not a [-1, 1] range, so x_0 must not be clipped; "trailing" timesteps start sampling at
# t = T − 1, where training saw z̃_T ≈ ε + μ (Lin et al., "Common Diffusion Noise Schedules and
# Sample Steps are Flawed", WACV 2024)
SAMPLING_SETTINGS: dict[str, Any] = {"clip_sample": False, "timestep_spacing": "trailing"}


def make_scheduler(
    name: str, config: Mapping[str, Any] | None = None, **overrides: Any
) -> SchedulerMixin:
    """A sampler by name (ddpm, ddim, dpm++, unipc) on the noise schedule of `config`.

    `config` is a scheduler config (e.g. the training `DDPMScheduler.config`) that updates
    LDM's schedule (`scldm.config.NOISE_SCHEDULE`); SAMPLING_SETTINGS are applied on top, then
    `overrides`.
    A pipeline swaps its sampler with `pipe.set_sampling(scheduler="ddim")`, which calls this.
    """
    if name not in SCHEDULERS:
        raise InputError(None, f"unknown sampler {name!r}; known: {', '.join(SCHEDULERS)}")
    # private keys dropped: "_use_default_values" would make from_config discard settings
    public = {k: v for k, v in (config or {}).items() if not k.startswith("_")}
    merged = {**NOISE_SCHEDULE, **public, **SAMPLING_SETTINGS, **overrides}
    return SCHEDULERS[name].from_config(merged)


def scheduler_name(scheduler: SchedulerMixin) -> str:
    """The `make_scheduler` name of a scheduler instance (its class name if not one of ours)."""
    for name, cls in SCHEDULERS.items():
        if type(scheduler) is cls:
            return name
    return type(scheduler).__name__


def null_condition(tokens: torch.Tensor, null_tokens: torch.Tensor | None) -> torch.Tensor:
    """The unconditional tokens of classifier-free guidance, shaped like `tokens` (zeros when
    `null_tokens` is None); training drops conditions to these, sampling guides against them."""
    if null_tokens is None:
        return torch.zeros_like(tokens)
    return null_tokens.to(tokens).expand_as(tokens)


def _step_kwargs(scheduler, generator: torch.Generator | None) -> dict:
    """`generator` for the schedulers whose step draws noise (DDPM, DDIM with eta > 0, SDE)."""
    if "generator" in inspect.signature(scheduler.step).parameters:
        return {"generator": generator}
    return {}


@torch.no_grad()
def sample_latents(
    unet: nn.Module,
    scheduler,
    cond_tokens: torch.Tensor,
    *,
    prior: torch.Tensor | None = None,
    prior_scale: float = 0.0,
    num_inference_steps: int,
    guidance_scale: float = 1.0,
    temperature: float = 1.0,
    generator: torch.Generator | list[torch.Generator] | None = None,
    null_tokens: torch.Tensor | None = None,
    latent_shape: Sequence[int],
) -> torch.Tensor:
    """Sample face latents z_0 (B, C, h, w) for speech tokens (B, N, D) with any diffusers
    scheduler, in the prior-shifted form of `diffusion_loss`.

    Starts at z̃_T = τ·ε·init_noise_sigma + μ, i.e. the scheduler runs on z_t = z̃_t − μ from
    τ·ε·init_noise_sigma, while the UNet sees `scale_model_input(z_t) + μ`; returns z_0 + μ in
    the scaled latent space (divide by the codec's scaling_factor before decoding).
    `temperature` τ scales the starting noise only, as Grad-TTS's temperature does for its
    prior-mean diffusion: τ = 1 is the model's own distribution, τ < 1 trades the spread of the
    faces for agreement with the voice, τ = 0 starts from μ itself (the noise a stochastic
    scheduler such as DDPM adds at each step is not scaled).
    With `guidance_scale` g ≠ 1 the conditional and unconditional (`null_tokens`, zeros when
    None) passes run as one batch of 2B and ε = ε_u + g·(ε_c − ε_u); g = 1 runs the
    conditional pass only. `latent_shape` is (C, h, w). `scheduler.set_timesteps` is called,
    so the scheduler's state changes.
    """
    batch, device, dtype = cond_tokens.shape[0], cond_tokens.device, cond_tokens.dtype
    mu = prior_shift(prior, prior_scale)
    mu = torch.zeros((), device=device, dtype=dtype) if mu is None else mu.to(device, dtype)
    use_cfg = guidance_scale != 1.0
    if use_cfg:
        tokens = torch.cat([null_condition(cond_tokens, null_tokens), cond_tokens])  # (2B, N, D)
    else:
        tokens = cond_tokens
    scheduler.set_timesteps(num_inference_steps, device=device)
    shape = (batch, *latent_shape)
    z = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
    z = z * (scheduler.init_noise_sigma * temperature)  # z_T = z̃_T − μ
    step_kwargs = _step_kwargs(scheduler, generator)
    for t in scheduler.timesteps:
        model_in = scheduler.scale_model_input(z, t) + mu  # z̃_t, what the UNet was trained on
        if use_cfg:
            model_in = torch.cat([model_in, model_in])
        eps = unet(model_in, t, encoder_hidden_states=tokens, return_dict=False)[0]
        if use_cfg:
            eps_uncond, eps_cond = eps.chunk(2)
            eps = eps_uncond + guidance_scale * (eps_cond - eps_uncond)
        z = scheduler.step(eps, t, z, **step_kwargs, return_dict=False)[0]
    return z + mu
