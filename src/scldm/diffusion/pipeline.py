"""Inference of SCLDM: `SpeechToFacePipeline`, audio → faces.

The pipeline folder (`save_pretrained`) is the release artifact: front end, speech encoder,
UNet, scheduler, face prior and face decoder, each as config.json + safetensors, and its
sampling config (steps, guidance, temperature, prior scale) in model_index.json. `FacePrior`
(`scldm.diffusion.prior`) and `make_scheduler` (`scldm.diffusion.sampling`) are re-exported
here: pipelines saved earlier name this module as FacePrior's home.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from diffusers import DiffusionPipeline, UNet2DConditionModel
from diffusers.models.modeling_utils import ModelMixin  # noqa: F401 (see below)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from scldm.audio import AudioInput, MelFrontend, SpectrogramFrontend, waveform_from
from scldm.config import SamplingConfig
from scldm.diffusion.prior import FacePrior
from scldm.diffusion.sampling import make_scheduler, sample_latents, scheduler_name
from scldm.errors import InputError
from scldm.models.face_decoder import FaceDecoder
from scldm.models.ge2e import GE2ESpeechEncoder
from scldm.models.outputs import FaceOutput, check_output_type, to_output
from scldm.models.speech_encoder import SpeechEncoder

# Pipelines saved before scldm.diffusion.prior existed name this module as FacePrior's library;
# diffusers then looks up `ModelMixin` in it to choose the loading method, hence the import.
__all__ = [
    "FaceOutput",
    "FacePrior",
    "SpeechToFaceOutput",
    "SpeechToFacePipeline",
    "make_scheduler",
]

# --- Pipeline --------------------------------------------------------------------------------


SpeechToFaceOutput = FaceOutput  # the name pipelines and callers used before baselines


class SpeechToFacePipeline(DiffusionPipeline):
    """Speech → face with the speech-conditioned LDM and the face prior (SCLDM, DESIGN.md §2).

    audio → front end (B, 2, F, T) (GE2E's: mel powers (B, 40, T)) → speech encoder tokens
    (B, N, D) → prior-shifted sampling of latents (B, C, h, w) with `scheduler`
    (`sampling.sample_latents`) → face decoder of latents / scaling_factor → faces (B, 3, H, W).
    Any diffusers scheduler works; see `make_scheduler`.

    `sampling` (a `SamplingConfig` as a dict) holds the defaults of `__call__`; its `scheduler`
    names the saved scheduler component, which is what samples. Fields it lacks take
    `SamplingConfig`'s defaults, and the prior scale the prior's `lambda_infer` (so pipelines
    saved before they carried a sampling config sample as `scldm generate` did with them).
    """

    model_cpu_offload_seq = "speech_encoder->unet->face_decoder"

    def __init__(
        self,
        frontend: SpectrogramFrontend | MelFrontend,
        speech_encoder: SpeechEncoder | GE2ESpeechEncoder,
        unet: UNet2DConditionModel,
        scheduler: SchedulerMixin,
        face_decoder: FaceDecoder,
        prior: FacePrior,
        sampling: Mapping[str, Any] | None = None,
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
        # the prior's λ where no prior scale is given (pipelines saved before sampling configs)
        sampling = {"prior_scale": float(prior.config.lambda_infer), **(sampling or {})}
        known = {f.name for f in dataclasses.fields(SamplingConfig)}
        unknown = set(sampling) - known
        if unknown:
            raise InputError(
                None, f"unknown sampling settings {sorted(unknown)}; known: {sorted(known)}"
            )
        values = dataclasses.asdict(SamplingConfig(**sampling))
        values["scheduler"] = scheduler_name(scheduler)  # the component is what samples
        self.register_to_config(sampling=values)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any):
        """`DiffusionPipeline.from_pretrained` from a local folder (there is no hub to ask); a
        missing folder, or a bad setting in its model_index.json (e.g. an unknown sampling key),
        is an `InputError` naming it."""
        pretrained_model_name_or_path = os.fspath(pretrained_model_name_or_path)
        if not os.path.isfile(os.path.join(pretrained_model_name_or_path, "model_index.json")):
            raise InputError(
                pretrained_model_name_or_path, "is not a pipeline folder (no model_index.json)"
            )
        try:
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        except InputError as e:
            if e.path is not None:
                raise
            index = os.path.join(pretrained_model_name_or_path, "model_index.json")
            raise InputError(index, e.problem) from None

    @property
    def sampling(self) -> SamplingConfig:
        """The defaults of `__call__` (saved in model_index.json)."""
        return SamplingConfig(
            **{**self.config.sampling, "scheduler": scheduler_name(self.scheduler)}
        )

    def set_sampling(self, **changes: Any) -> None:
        """Change the saved defaults, e.g. `pipe.set_sampling(scheduler="ddim", temperature=1)`;
        a new `scheduler` name swaps the scheduler component on the same noise schedule."""
        values = dataclasses.asdict(dataclasses.replace(self.sampling, **changes))
        if values["scheduler"] != scheduler_name(self.scheduler):
            self.scheduler = make_scheduler(values["scheduler"], self.scheduler.config)
        self.register_to_config(sampling=values)

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
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        temperature: float | None = None,
        prior_scale: float | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
    ) -> FaceOutput:
        """Generate faces for voices.

        Args:
            audio: a path (read with the front end), a 1-D waveform (numpy or tensor, (S,), at
                the front end's sample rate) or a list of those; each is cut or looped to
                `segment_seconds`.
            num_inference_steps, guidance_scale, temperature, prior_scale: default
                `self.sampling` (the pipeline folder's sampling config).
            guidance_scale: classifier-free guidance g (zero tokens as the null condition);
                1 = no guidance, one UNet pass per step, the paper's sampler; values above 1
                need a UNet trained with condition dropout.
            temperature: τ ≥ 0, the scale of the starting noise around μ: 1 is the model's
                distribution, lower values give faces that follow the voice more closely and
                vary less.
            prior_scale: λ_infer of the prior shift μ = λ·P.
            generator: one, or a list of B = len(audio) × num_images_per_prompt.
            output_type: "pil", "pt" or "np" (see `FaceOutput`).

        Raises `InputError` for unreadable files and malformed waveforms.
        """
        check_output_type(output_type)
        cfg = self.sampling
        steps = cfg.num_inference_steps if num_inference_steps is None else num_inference_steps
        guidance = cfg.guidance_scale if guidance_scale is None else guidance_scale
        temperature = cfg.temperature if temperature is None else temperature
        prior_scale = cfg.prior_scale if prior_scale is None else prior_scale
        if not temperature >= 0:
            raise InputError(None, f"temperature must be ≥ 0, got {temperature:g}")
        if steps < 1 or num_images_per_prompt < 1:
            raise InputError(None, "num_inference_steps and num_images_per_prompt must be ≥ 1")
        items = list(audio) if isinstance(audio, list | tuple) else [audio]
        if not items:
            raise InputError(None, "no audio given")
        latent_shape = self._check_shapes()
        device = self._execution_device
        waveforms = torch.stack([waveform_from(item, self.frontend) for item in items])  # (B, S)
        features = self.frontend(waveforms.to(device))  # (B, 2, F, T) or (B, mels, T)
        tokens = self.speech_encoder(features.to(self.speech_encoder.dtype)).tokens  # (B, N, D)
        tokens = tokens.to(self.unet.dtype).repeat_interleave(num_images_per_prompt, dim=0)
        latents = sample_latents(
            self.unet,
            self.scheduler,
            tokens,
            prior=self.prior.latent,
            prior_scale=prior_scale,
            num_inference_steps=steps,
            guidance_scale=guidance,
            temperature=temperature,
            generator=generator,
            latent_shape=latent_shape,
        )  # (B, C, h, w), scaled
        latents = latents / self.face_decoder.config.scaling_factor
        faces = self.face_decoder(latents.to(self.face_decoder.dtype))  # (B, 3, H, W) in [-1, 1]
        return to_output(faces, output_type)
