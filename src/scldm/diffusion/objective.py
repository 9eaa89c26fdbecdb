"""Training loss and sampler of SCLDM stage 2: latent diffusion with the face prior as the mean.

With μ = λ·P (P the mean face latent, paper eq. 3) the forward process runs on z_0 − μ and the
UNet sees the shifted sample z̃_t = z_t + μ, the mean-only form of PriorGrad; λ = 0 is the
plain LDM. Both functions take any diffusers scheduler and are pure functions of their tensors
and the explicit `generator`.

References: Lee et al., "PriorGrad: Improving Conditional Denoising Diffusion Models with
Data-Dependent Adaptive Prior", ICLR 2022 (here without the covariance); Ho & Salimans,
"Classifier-Free Diffusion Guidance", 2022; the SCLDM paper, eq. 2 and 4–6.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from diffusers.utils.torch_utils import randn_tensor
from torch import nn


def prior_shift(prior: torch.Tensor | None, lam: float) -> torch.Tensor | None:
    """μ = λ·P, (C, h, w); None when there is no shift (no prior or λ = 0)."""
    if prior is None or lam == 0:
        return None
    return lam * prior


def _null_like(tokens: torch.Tensor, null_tokens: torch.Tensor | None) -> torch.Tensor:
    if null_tokens is None:
        return torch.zeros_like(tokens)
    return null_tokens.to(tokens).expand_as(tokens)


def diffusion_loss(
    unet: nn.Module,
    scheduler,
    z0: torch.Tensor,
    cond_tokens: torch.Tensor,
    *,
    prior: torch.Tensor | None = None,
    lam: float = 0.0,
    cond_drop: float = 0.1,
    null_tokens: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """ε-prediction loss of the prior-shifted diffusion (paper eq. 6), averaged over the batch.

    t ~ U{0, …, T−1}, ε ~ N(0, I), z_t = √ᾱ_t·(z_0 − μ) + √(1 − ᾱ_t)·ε (`scheduler.add_noise`);
    the UNet sees z̃_t = z_t + μ and predicts ε; loss ‖ε − ε_θ(z̃_t, t, c)‖² (MSE).
    With probability `cond_drop` a sample's tokens are replaced by `null_tokens` (zeros when
    None) so the model also learns the unconditional ε for classifier-free guidance.

    Args:
        unet: a `UNet2DConditionModel` (or anything with its call signature).
        scheduler: a diffusers scheduler with `add_noise` and `config.num_train_timesteps`;
            its `prediction_type` must be "epsilon".
        z0: (B, C, h, w) scaled face latents (unit variance).
        cond_tokens: (B, N, D) speech tokens.
        prior: P, (C, h, w) in the same scaled latent space; with `lam` gives μ = λ·P.
        null_tokens: the unconditional tokens, broadcastable to (B, N, D).
        generator: draws t, ε and the dropout mask, in that order.

    Returns (loss, logs): the scalar loss and logs["cond_drop_frac"], the fraction of the batch
    trained unconditionally (detached).
    """
    prediction_type = scheduler.config.get("prediction_type", "epsilon")
    if prediction_type != "epsilon":
        raise ValueError(f"diffusion_loss trains ε-prediction, scheduler has {prediction_type!r}")
    batch, device = z0.shape[0], z0.device
    num_train_timesteps = scheduler.config.num_train_timesteps
    gen_device = generator.device if generator is not None else device
    t = torch.randint(num_train_timesteps, (batch,), generator=generator, device=gen_device)
    t = t.to(device)  # (B,)
    noise = randn_tensor(z0.shape, generator=generator, device=device, dtype=z0.dtype)
    mu = prior_shift(prior, lam)
    if mu is None:
        z_t = scheduler.add_noise(z0, noise, t)  # exactly the plain LDM step
    else:
        mu = mu.to(z0)
        z_t = scheduler.add_noise(z0 - mu, noise, t) + mu  # z̃_t (B, C, h, w)
    dropped = torch.zeros(batch, dtype=torch.bool, device=device)
    if cond_drop > 0:
        dropped = (torch.rand(batch, generator=generator, device=gen_device) < cond_drop).to(device)
        null = _null_like(cond_tokens, null_tokens)
        cond_tokens = torch.where(dropped[:, None, None], null, cond_tokens)
    eps = unet(z_t, t, encoder_hidden_states=cond_tokens, return_dict=False)[0]
    loss = F.mse_loss(eps.float(), noise.float())
    return loss, {"cond_drop_frac": dropped.float().mean().detach()}


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
    lam: float = 0.0,
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
    mu = prior_shift(prior, lam)
    mu = torch.zeros((), device=device, dtype=dtype) if mu is None else mu.to(device, dtype)
    use_cfg = guidance_scale != 1.0
    if use_cfg:
        tokens = torch.cat([_null_like(cond_tokens, null_tokens), cond_tokens])  # (2B, N, D)
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
