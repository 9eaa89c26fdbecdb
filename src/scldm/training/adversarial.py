"""The adversarial side of stage 1: a PatchGAN that makes the face autoencoder's reconstructions
sharp, trained beside the collaborative pre-training the way latent diffusion trains its
autoencoder (VQGAN: hinge loss, adaptive weight, a delayed start).

`Adversary` owns the discriminator, its optimizer and the two halves of a step: the terms the
autoencoder adds to its loss (`generator_terms`, passed to `encoder_stage_loss`) and the
discriminator's own update (`discriminator_step`). The stage-1 loop calls both once per step
from `start_step` on.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from accelerate import Accelerator

from scldm.config import WHOLE_FACE, AdversarialConfig, component_kwargs
from scldm.errors import InputError
from scldm.losses import (
    adaptive_weight,
    feature_matching_loss,
    generator_adversarial_loss,
    hinge_discriminator_loss,
)
from scldm.models.discriminator import DISCRIMINATOR_PRESETS, PatchDiscriminator


class Adversary:
    """The discriminator D of stage 1 with its AdamW, prepared by `accelerator` (DDP on many
    processes; None: plain torch in one process, as stage 2's decoder refinement runs it). Its
    weights and optimizer go into every checkpoint beside the model's (`checkpoint_parts`); D
    is not exported: only training needs it."""

    def __init__(
        self,
        cfg: AdversarialConfig,
        accelerator: Accelerator | None,
        last_layer: torch.Tensor,
        max_weight: float = 1e4,
    ):
        try:
            disc = PatchDiscriminator(
                **component_kwargs(cfg.discriminator, DISCRIMINATOR_PRESETS, "discriminator")
            )
        except TypeError as e:
            raise InputError(None, f"adversarial.discriminator: {e}") from None
        disc = disc.to(memory_format=torch.channels_last)
        optimizer = torch.optim.AdamW(disc.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=0)
        self.cfg, self.accelerator, self.max_weight = cfg, accelerator, max_weight
        self.last_layer = last_layer  # the decoder's output conv weight: VQGAN's adaptive weight
        if accelerator is None:  # one process, on the last layer's device (the decoder's)
            self.disc, self.optimizer = disc.to(last_layer.device), optimizer
            self.module: PatchDiscriminator = self.disc
        else:
            self.disc, self.optimizer = accelerator.prepare(disc, optimizer)
            self.module = accelerator.unwrap_model(self.disc)

    def active(self, step: int) -> bool:
        return step >= self.cfg.start_step

    def shown(self, faces: torch.Tensor) -> torch.Tensor:
        """What D sees of (N, 3, H, W) faces: as they are, or their luminance (BT.601) in all
        three channels (`sees: luma`); with a `box`, only that part of them, each pixel repeated
        k × k times, the least k that makes it 32 px high (pixels, not a blur: D judges
        sharpness)."""
        if self.cfg.box != WHOLE_FACE:
            size = faces.shape[-1]
            top, left, bottom, right = (round(f * size) for f in self.cfg.box)
            faces = faces[..., top:bottom, left:right]
            k = math.ceil(32 / max(bottom - top, 1))
            if k > 1:
                faces = F.interpolate(faces, scale_factor=k, mode="nearest")
        if self.cfg.sees == "rgb":
            return faces
        luma = torch.tensor((0.299, 0.587, 0.114), dtype=faces.dtype, device=faces.device)
        return torch.einsum("nchw,c->nhw", faces, luma).unsqueeze(1).expand_as(faces)

    def generator_terms(
        self,
        reconstruction: torch.Tensor,
        faces: torch.Tensor,
        reconstruction_loss: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """What the autoencoder adds to its loss: weight · w · (−D(x̂)) + feature_matching ·
        Σ_l |D_l(x̂) − D_l(x)|, w = VQGAN's adaptive weight against `reconstruction_loss` at
        `last_layer` (the decoder's output conv). reconstruction: (R, 3, H, W) with graph; faces
        the R true faces. D's weights take no gradient from it (frozen for this pass)."""
        cfg, last_layer = self.cfg, self.last_layer
        self.module.requires_grad_(False)
        try:
            fake = self.module(self.shown(reconstruction))
            with torch.no_grad():
                real = self.module(self.shown(faces)) if cfg.feature_matching else None
        finally:
            self.module.requires_grad_(True)
        adversarial = generator_adversarial_loss(fake[-1])
        logs: dict[str, torch.Tensor] = {"loss/adversarial": adversarial.detach()}
        total = torch.zeros((), device=reconstruction.device)
        if cfg.weight:
            weight = adaptive_weight(
                reconstruction_loss, adversarial, last_layer, max_weight=self.max_weight
            )
            total = total + cfg.weight * weight * adversarial
            logs["adversarial_weight"] = weight
        if cfg.feature_matching:
            matching = feature_matching_loss(fake[:-1], [r.detach() for r in real[:-1]])
            total = total + cfg.feature_matching * matching
            logs["loss/feature_matching"] = matching.detach()
        return total, logs

    def discriminator_step(
        self, faces: torch.Tensor, reconstruction: torch.Tensor, lr_factor: float, grad_clip: float
    ) -> dict[str, torch.Tensor]:
        """One hinge-loss update of D on true faces against (detached) reconstructions, both in
        one call; its LR follows the stage's schedule (`lr_factor`)."""
        both = self.shown(torch.cat([faces, reconstruction.detach()]))
        logits = self.disc(both)[-1]
        real, fake = logits[: len(faces)], logits[len(faces) :]
        loss = hinge_discriminator_loss(real, fake)
        if self.accelerator is None:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.disc.parameters(), grad_clip)
        else:
            self.accelerator.backward(loss)
            if self.accelerator.sync_gradients:
                self.accelerator.clip_grad_norm_(self.disc.parameters(), grad_clip)
        for group in self.optimizer.param_groups:
            group["lr"] = self.cfg.lr * lr_factor
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {
            "loss/discriminator": loss.detach(),
            "logits/real": real.detach().mean(),
            "logits/fake": fake.detach().mean(),
        }

    def checkpoint_parts(self) -> dict[str, tuple[torch.nn.Module, torch.optim.Optimizer]]:
        """{"discriminator": (D, its optimizer)} for `save_checkpoint`/`maybe_resume`."""
        return {"discriminator": (self.module, self.optimizer)}
