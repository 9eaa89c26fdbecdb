"""Stage 2 of SCLDM: the face prior, the prior-shifted latent diffusion objective and sampler,
the UNet presets, and the inference pipeline."""

from scldm.diffusion.objective import diffusion_loss
from scldm.diffusion.pipeline import SpeechToFaceOutput, SpeechToFacePipeline
from scldm.diffusion.prior import FacePrior, prior_shift
from scldm.diffusion.sampling import make_scheduler, sample_latents
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
