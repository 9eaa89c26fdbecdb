"""Stage 2 of SCLDM: the prior-shifted latent diffusion objective and sampler, the UNet
presets, and the inference pipeline."""

from scldm.diffusion.objective import diffusion_loss, prior_shift, sample_latents
from scldm.diffusion.pipeline import (
    FacePrior,
    SpeechToFaceOutput,
    SpeechToFacePipeline,
    make_scheduler,
)
from scldm.diffusion.unet import UNET_PRESETS, build_unet

__all__ = [
    "UNET_PRESETS",
    "FacePrior",
    "SpeechToFaceOutput",
    "SpeechToFacePipeline",
    "build_unet",
    "diffusion_loss",
    "make_scheduler",
    "prior_shift",
    "sample_latents",
]
