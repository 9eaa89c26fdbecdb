"""scldm: speech-to-face generation with a speech-conditioned latent diffusion model."""

__version__ = "0.1.0"

from scldm.audio import SpectrogramFrontend, load_audio
from scldm.errors import InputError
