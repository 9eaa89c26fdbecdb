"""The stage-1 training wrapper: speech encoder, face encoder, face decoder and the CLIP
temperature, trained jointly by contrastive and reconstruction losses (SCLDM paper, eq. 1).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scldm.models.face_decoder import FaceDecoder
from scldm.models.face_encoder import FaceEncoder
from scldm.models.speech_encoder import SpeechEncoder


class SpeechFaceModel(nn.Module):
    """E_s, E_f, D_f and a learnable `logit_scale` (CLIP's log inverse temperature, initialised
    to log(1/0.07) and used as `logit_scale.exp()`; the training loop clamps it to [0, ln 100]).

    Training calls `forward`, so DDP sees every trainable parameter; `encode_speech` and
    `encode_face` are for inference and evaluation.
    """

    def __init__(
        self,
        speech_encoder: SpeechEncoder,
        face_encoder: FaceEncoder,
        face_decoder: FaceDecoder,
        *,
        init_logit_scale: float = math.log(1 / 0.07),
    ) -> None:
        super().__init__()
        speech_dim = speech_encoder.config.embedding_dim
        face_dim = face_encoder.config.embedding_dim
        if speech_dim != face_dim:
            raise ValueError(f"speech embedding_dim {speech_dim} != face embedding_dim {face_dim}")
        if face_encoder.config.latent_channels != face_decoder.config.latent_channels:
            raise ValueError(
                f"face encoder latent_channels {face_encoder.config.latent_channels} != "
                f"decoder latent_channels {face_decoder.config.latent_channels}"
            )
        self.speech_encoder = speech_encoder
        self.face_encoder = face_encoder
        self.face_decoder = face_decoder
        self.logit_scale = nn.Parameter(torch.tensor(float(init_logit_scale)))

    def forward(
        self, spectrogram: torch.Tensor, face: torch.Tensor, *, num_reconstructed: int | None = None
    ) -> dict[str, torch.Tensor]:
        """spectrogram: (B, 2, F, T); face: (B, 3, H, W) in [-1, 1] → everything the loss needs:

        speech_embedding (B, D) and face_embedding (B, D), not normalised; latents
        (B, C, H/8, W/8); reconstruction (R, 3, H, W) in [-1, 1] of the first R faces, R =
        `num_reconstructed` (default: all B); logit_scale (), the raw parameter (the loss
        exponentiates it).
        """
        speech = self.speech_encoder(spectrogram)
        faces = self.face_encoder(face)
        return {
            "speech_embedding": speech.embedding,
            "face_embedding": faces.embedding,
            "latents": faces.latents,
            "reconstruction": self.face_decoder(faces.latents[:num_reconstructed]),
            "logit_scale": self.logit_scale,
        }

    def encode_speech(self, spectrogram: torch.Tensor, *, normalize: bool = True) -> torch.Tensor:
        """spectrogram: (B, 2, F, T) → speech embedding (B, D), L2-normalised by default."""
        embedding = self.speech_encoder(spectrogram).embedding
        return F.normalize(embedding, dim=-1) if normalize else embedding

    def encode_face(self, face: torch.Tensor, *, normalize: bool = True) -> torch.Tensor:
        """face: (B, 3, H, W) in [-1, 1] → face embedding (B, D), L2-normalised by default."""
        embedding = self.face_encoder(face).embedding
        return F.normalize(embedding, dim=-1) if normalize else embedding
