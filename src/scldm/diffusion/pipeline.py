"""Inference of SCLDM: `SpeechToFacePipeline` (audio → faces), the `FacePrior` it carries, and
`make_scheduler` to pick a sampler.

The pipeline folder (`save_pretrained`) is the release artifact: front end, speech encoder,
UNet, scheduler, face prior and face decoder, each as config.json + safetensors.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    UNet2DConditionModel,
    UniPCMultistepScheduler,
)
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput

from scldm.audio import MIN_SECONDS, SpectrogramFrontend, loop_to_length
from scldm.diffusion.objective import sample_latents
from scldm.errors import InputError
from scldm.models.face_decoder import FaceDecoder
from scldm.models.speech_encoder import SpeechEncoder

AudioInput = str | os.PathLike | np.ndarray | torch.Tensor

# --- Face prior ------------------------------------------------------------------------------


class FacePrior(ModelMixin, ConfigMixin):
    """The face prior P of paper eq. 3: the mean scaled face latent, (C, h, w).

    Stored as a persistent buffer `latent` (the weights file), in the scaled latent space the
    diffusion runs in; `lambda_infer` is the λ the pipeline uses by default (μ = λ·P).
    Build it with `FacePrior(prior=P, lambda_infer=λ)`; the shape is then taken from P.
    `from_pretrained` builds it from `latent_shape` and loads P from the weights.
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


# --- Schedulers ------------------------------------------------------------------------------

SCHEDULERS: dict[str, type[SchedulerMixin]] = {
    "ddpm": DDPMScheduler,
    "ddim": DDIMScheduler,
    "dpm++": DPMSolverMultistepScheduler,  # DPM-Solver++(2M), Lu et al. 2022
    "unipc": UniPCMultistepScheduler,  # Zhao et al. 2023
}
# the noise schedule of LDM / Stable Diffusion, used when no training config is given
NOISE_SCHEDULE: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "prediction_type": "epsilon",
}
# sampling settings that override the training scheduler's: the latents have unit variance,
# not a [-1, 1] range, so x_0 must not be clipped; "trailing" timesteps start sampling at
# t = T − 1, where training saw z̃_T ≈ ε + μ (Lin et al., "Common Diffusion Noise Schedules and
# Sample Steps are Flawed", WACV 2024)
SAMPLING_SETTINGS: dict[str, Any] = {"clip_sample": False, "timestep_spacing": "trailing"}


def make_scheduler(
    name: str, config: Mapping[str, Any] | None = None, **overrides: Any
) -> SchedulerMixin:
    """A sampler by name (ddpm, ddim, dpm++, unipc) on the noise schedule of `config`.

    `config` is a scheduler config (e.g. the training `DDPMScheduler.config`; LDM's schedule
    when None); SAMPLING_SETTINGS are applied on top, then `overrides`.
    Swap a pipeline's sampler with `pipe.scheduler = make_scheduler("ddim", pipe.scheduler.config)`.
    """
    if name not in SCHEDULERS:
        raise InputError(None, f"unknown sampler {name!r}; known: {', '.join(SCHEDULERS)}")
    # private keys dropped: "_use_default_values" would make from_config discard settings
    public = {k: v for k, v in (config or {}).items() if not k.startswith("_")}
    merged = {**NOISE_SCHEDULE, **public, **SAMPLING_SETTINGS, **overrides}
    return SCHEDULERS[name].from_config(merged)


# --- Pipeline --------------------------------------------------------------------------------


@dataclass
class SpeechToFaceOutput(BaseOutput):
    """images: a list of B PIL images, a (B, 3, H, W) tensor in [0, 1] ("pt") or a
    (B, H, W, 3) float32 array in [0, 1] ("np"); B = number of voices × num_images_per_prompt,
    the images of one voice adjacent."""

    images: list[PIL.Image.Image] | torch.Tensor | np.ndarray


class SpeechToFacePipeline(DiffusionPipeline):
    """Speech → face with the speech-conditioned LDM and the face prior (SCLDM, DESIGN.md §2).

    audio → front end (B, 2, F, T) → speech encoder tokens (B, N, D) → prior-shifted sampling
    of latents (B, C, h, w) with `scheduler` (`objective.sample_latents`) → face decoder of
    latents / scaling_factor → faces (B, 3, H, W). Any diffusers scheduler works; see
    `make_scheduler`.
    """

    model_cpu_offload_seq = "speech_encoder->unet->face_decoder"

    def __init__(
        self,
        frontend: SpectrogramFrontend,
        speech_encoder: SpeechEncoder,
        unet: UNet2DConditionModel,
        scheduler: SchedulerMixin,
        face_decoder: FaceDecoder,
        prior: FacePrior,
    ) -> None:
        super().__init__()
        self.register_modules(
            frontend=frontend,
            speech_encoder=speech_encoder,
            unet=unet,
            scheduler=scheduler,
            face_decoder=face_decoder,
            prior=prior,
        )

    def _waveform(self, item: AudioInput) -> torch.Tensor:
        """One input → (S,) float32 of `segment_seconds`, looped when shorter."""
        if isinstance(item, str | os.PathLike):
            return self.frontend.load(item)
        if isinstance(item, torch.Tensor):
            item = item.detach().cpu().float().numpy()
        if not isinstance(item, np.ndarray):
            raise InputError(
                None, f"audio must be a path or a 1-D waveform, got {type(item).__name__}"
            )
        sample_rate = self.frontend.config.sample_rate
        wave = item.astype(np.float32, copy=False)
        if wave.ndim != 1:
            raise InputError(
                None, f"a waveform must be 1-D mono at {sample_rate} Hz, got shape {wave.shape}"
            )
        if wave.size < MIN_SECONDS * sample_rate:
            raise InputError(None, f"waveform too short ({wave.size} samples at {sample_rate} Hz)")
        if not np.isfinite(wave).all():
            raise InputError(None, "waveform contains NaN or infinite samples")
        return torch.from_numpy(loop_to_length(wave, self.frontend.segment_samples))

    def _check_shapes(self) -> tuple[int, ...]:
        latent_shape = tuple(self.prior.latent.shape)
        size = self.unet.config.sample_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        if latent_shape != (self.unet.config.in_channels, *size):
            raise ValueError(
                f"prior latent {latent_shape} does not match the unet's "
                f"({self.unet.config.in_channels}, {size[0]}, {size[1]})"
            )
        return latent_shape

    @torch.no_grad()
    def __call__(
        self,
        audio: AudioInput | Sequence[AudioInput],
        *,
        num_images_per_prompt: int = 1,
        num_inference_steps: int = 25,
        guidance_scale: float = 1.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        lam: float | None = None,
        temperature: float = 1.0,
    ) -> SpeechToFaceOutput:
        """Generate faces for voices.

        Args:
            audio: a path (read with the front end), a 1-D waveform (numpy or tensor, (S,), at
                the front end's sample rate) or a list of those; each is cut or looped to
                `segment_seconds`.
            guidance_scale: classifier-free guidance g (zero tokens as the null condition).
                Default 1: no guidance, one UNet pass per step, the paper's sampler; values
                above 1 need a UNet trained with condition dropout.
            generator: one, or a list of B = len(audio) × num_images_per_prompt.
            output_type: "pil", "pt" or "np" (see `SpeechToFaceOutput`).
            lam: λ of the prior shift μ = λ·P; default `prior.config.lambda_infer`.
            temperature: τ, the scale of the starting noise around μ (≥ 0). Default 1: the
                model's distribution; lower values give faces that follow the voice more
                closely and vary less (`scldm generate` uses `DEFAULT_TEMPERATURE`).

        Raises `InputError` for unreadable files and malformed waveforms.
        """
        if output_type not in ("pil", "pt", "np"):
            raise InputError(None, f"output_type must be pil, pt or np, got {output_type!r}")
        if not temperature >= 0:
            raise InputError(None, f"temperature must be ≥ 0, got {temperature:g}")
        items = list(audio) if isinstance(audio, list | tuple) else [audio]
        if not items:
            raise InputError(None, "no audio given")
        latent_shape = self._check_shapes()
        device = self._execution_device
        waveforms = torch.stack([self._waveform(item) for item in items])  # (B, S)
        spec = self.frontend(waveforms.to(device))  # (B, 2, F, T)
        tokens = self.speech_encoder(spec.to(self.speech_encoder.dtype)).tokens  # (B, N, D)
        tokens = tokens.to(self.unet.dtype).repeat_interleave(num_images_per_prompt, dim=0)
        latents = sample_latents(
            self.unet,
            self.scheduler,
            tokens,
            prior=self.prior.latent,
            lam=self.prior.config.lambda_infer if lam is None else lam,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            temperature=temperature,
            generator=generator,
            latent_shape=latent_shape,
        )  # (B, C, h, w), scaled
        latents = latents / self.face_decoder.config.scaling_factor
        faces = self.face_decoder(latents.to(self.face_decoder.dtype))  # (B, 3, H, W) in [-1, 1]
        images = (faces.float() / 2 + 0.5).clamp(0, 1)
        if output_type == "pt":
            return SpeechToFaceOutput(images=images)
        array = images.permute(0, 2, 3, 1).cpu().numpy()  # (B, H, W, 3)
        if output_type == "np":
            return SpeechToFaceOutput(images=array)
        pil = [PIL.Image.fromarray((a * 255).round().astype(np.uint8)) for a in array]
        return SpeechToFaceOutput(images=pil)
