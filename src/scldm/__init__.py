"""scldm: speech-to-face generation with a speech-conditioned latent diffusion model."""

__version__ = "0.1.0"
