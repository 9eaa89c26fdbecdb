"""Training loss of SCLDM stage 2: latent diffusion with the face prior as the mean.

With μ = λ·P (P the mean face latent, paper eq. 3) the forward process runs on z_0 − μ and the
UNet sees the shifted sample z̃_t = z_t + μ, the mean-only form of PriorGrad; λ = 0 is the
plain LDM. `diffusion_loss` takes any diffusers scheduler and is a pure function of its tensors
and the explicit `generator`; its sampler is `scldm.diffusion.sampling.sample_latents`.

References: Lee et al., "PriorGrad: Improving Conditional Denoising Diffusion Models with
Data-Dependent Adaptive Prior", ICLR 2022 (here without the covariance); Ho & Salimans,
"Classifier-Free Diffusion Guidance", 2022; the SCLDM paper, eq. 2 and 4–6.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.utils.torch_utils import randn_tensor
from torch import nn

from scldm.config import PREDICTION_TYPES
from scldm.diffusion.prior import prior_shift
from scldm.diffusion.sampling import null_condition


def diffusion_loss(
    unet: nn.Module,
    scheduler,
    z0: torch.Tensor,
    cond_tokens: torch.Tensor,
    *,
    prior: torch.Tensor | None = None,
    prior_scale: float = 0.0,
    cond_drop: float = 0.1,
    null_tokens: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    rows: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Denoising loss of the prior-shifted diffusion (paper eq. 6), averaged over the batch.

    t ~ U{0, …, T−1}, ε ~ N(0, I), z_t = √ᾱ_t·(z_0 − μ) + √(1 − ᾱ_t)·ε (`scheduler.add_noise`);
    the UNet sees z̃_t = z_t + μ and predicts the scheduler's `prediction_type`: ε (the paper's
    eq. 6, loss ‖ε − ε_θ(z̃_t, t, c)‖²), "v_prediction" (v = √ᾱ_t·ε − √(1 − ᾱ_t)·(z_0 − μ),
    Salimans & Ho 2022) or "sample" (z_0 − μ); MSE in each case.
    With probability `cond_drop` a sample's tokens are replaced by `null_tokens` (zeros when
    None) so the model also learns the unconditional prediction for classifier-free guidance.

    Args:
        unet: a `UNet2DConditionModel` (or anything with its call signature).
        scheduler: a diffusers scheduler with `add_noise` and `config.num_train_timesteps`;
            its `prediction_type` ("epsilon" by default) picks the target.
        z0: (B, C, h, w) scaled face latents (unit variance).
        cond_tokens: (B, N, D) speech tokens.
        prior: P, (C, h, w) in the same scaled latent space; with `prior_scale` λ gives μ = λ·P.
        null_tokens: the unconditional tokens, broadcastable to (B, N, D).
        generator: draws t, ε and the dropout mask, in that order.
        rows: (start, total) when this batch is rows start … start + B − 1 of a global batch of
            `total` split over processes: every process draws t, ε and the mask for all
            `total` rows from the same `generator` and keeps its own, so N processes draw what
            one process with the global batch does (default: the batch is the whole).

    Returns (loss, logs): the scalar loss and logs["cond_drop_frac"], the fraction of the batch
    trained unconditionally (detached).
    """
    prediction_type = scheduler.config.get("prediction_type", "epsilon")
    if prediction_type not in PREDICTION_TYPES:
        known = ", ".join(PREDICTION_TYPES)
        raise ValueError(f"unknown prediction_type {prediction_type!r}; known: {known}")
    batch, device = z0.shape[0], z0.device
    start, total = rows if rows is not None else (0, batch)
    if not 0 <= start <= total - batch:
        raise ValueError(f"rows {start}…{start + batch - 1} lie outside a batch of {total}")
    mine = slice(start, start + batch)
    num_train_timesteps = scheduler.config.num_train_timesteps
    gen_device = generator.device if generator is not None else device
    t = torch.randint(num_train_timesteps, (total,), generator=generator, device=gen_device)
    t = t[mine].to(device)  # (B,)
    shape = (total, *z0.shape[1:])
    noise = randn_tensor(shape, generator=generator, device=device, dtype=z0.dtype)[mine]
    mu = prior_shift(prior, prior_scale)
    mu = None if mu is None else mu.to(z0)
    x0 = z0 if mu is None else z0 - mu  # the diffusion's clean sample
    z_t = scheduler.add_noise(x0, noise, t)
    if mu is not None:
        z_t = z_t + mu  # z̃_t (B, C, h, w); without μ exactly the plain LDM step
    if prediction_type == "epsilon":
        target = noise
    elif prediction_type == "v_prediction":
        target = scheduler.get_velocity(x0, noise, t)
    else:
        target = x0
    dropped = torch.zeros(batch, dtype=torch.bool, device=device)
    if cond_drop > 0:
        draw = torch.rand(total, generator=generator, device=gen_device)[mine]
        dropped = (draw < cond_drop).to(device)
        null = null_condition(cond_tokens, null_tokens)
        cond_tokens = torch.where(dropped[:, None, None], null, cond_tokens)
    pred = unet(z_t, t, encoder_hidden_states=cond_tokens, return_dict=False)[0]
    loss = F.mse_loss(pred.float(), target.float())
    return loss, {"cond_drop_frac": dropped.float().mean().detach()}
