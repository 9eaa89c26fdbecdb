"""Wen et al., "Face Reconstruction from Voice using Generative Adversarial Networks" (NeurIPS
2019) as a baseline, as its official code (cmu-mlsp/reconstructing_faces_from_voices @ 469e249)
defines it: a voice embedding network e (1-D convolutions over a 64-band log-mel filterbank,
time average, L2 norm), a generator G (embedding → 64 px face), and, for training only, a face
embedding network f with a real/fake head d and an identity-classifier head c over the training
speakers. `WenPipeline` (audio → faces) is called as SCLDM's pipeline.

Specification and sources: ../shared/BASELINES.md §3. Layer for layer the official
`network.py`, at its widths in the `base` presets (parameter counts pinned in the tests) and
PyTorch's default initialisation, as the official code uses. What is not the official method
is listed in `deviations()` and saved in the pipeline folder.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from scldm.audio import AudioInput, FbankFrontend
from scldm.baselines.pipeline import BaselinePipeline
from scldm.errors import InputError

TITLE = "Wen et al. (NeurIPS 2019)"

# Each preset gives every network's constructor keywords. base: the official config.py; small:
# a quarter of its widths (64 px); tiny: 32 px, one upsampling stage fewer, 16 filters.
VOICE_ENCODER_PRESETS: dict[str, dict] = {
    "tiny": {"in_channels": 16, "channels": (8, 16, 16, 32), "embedding_dim": 32},
    "small": {"in_channels": 64, "channels": (64, 96, 144, 216), "embedding_dim": 64},
    "base": {},
}
GENERATOR_PRESETS: dict[str, dict] = {
    "tiny": {"embedding_dim": 32, "channels": (32, 16, 8, 4)},
    "small": {"embedding_dim": 64, "channels": (256, 128, 64, 32, 16)},
    "base": {},
}
FACE_EMBEDDING_PRESETS: dict[str, dict] = {
    "tiny": {"channels": (4, 8, 16, 32), "embedding_dim": 32},
    "small": {"channels": (8, 16, 32, 64, 128), "embedding_dim": 64},
    "base": {},
}


class WenVoiceEncoder(ModelMixin, ConfigMixin):
    """The voice embedding network e: filterbank (B, in_channels, T) → (B, embedding_dim).

    Four Conv1d (k3, s2, p1, no bias) + BatchNorm + ReLU blocks, a Conv1d (k3, s2, p1) to the
    embedding, the average over time. `forward` returns the raw average (what a speaker
    classifier reads in pre-training); `embed` its L2-normalised direction, what G reads.
    Base: 64 → 256 → 384 → 576 → 864 → 64, 2,670,720 parameters. Takes any T ≥ 1.
    """

    @register_to_config
    def __init__(
        self,
        *,
        in_channels: int = 64,
        channels: tuple[int, ...] = (256, 384, 576, 864),
        embedding_dim: int = 64,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for c_in, c_out in zip((in_channels, *channels[:-1]), channels, strict=True):
            layers += [
                nn.Conv1d(c_in, c_out, 3, 2, 1, bias=False),
                nn.BatchNorm1d(c_out),
                nn.ReLU(inplace=True),
            ]
        layers.append(nn.Conv1d(channels[-1], embedding_dim, 3, 2, 1))
        self.model = nn.Sequential(*layers)

    def forward(self, fbank: torch.Tensor) -> torch.Tensor:
        if fbank.dim() != 3 or fbank.shape[1] != self.config.in_channels:
            raise ValueError(
                f"expected a (B, {self.config.in_channels}, T) filterbank, got {tuple(fbank.shape)}"
            )
        return self.model(fbank).mean(dim=-1)

    def embed(self, fbank: torch.Tensor) -> torch.Tensor:
        """The unit-length voice embedding (B, embedding_dim)."""
        return F.normalize(self(fbank), dim=1)


class WenGenerator(ModelMixin, ConfigMixin):
    """The generator G: embedding (B, D) → face (B, 3, H, W), H = 4 · 2^(len(channels) − 1).

    ConvTranspose (k4, s1) from 1×1 to 4×4, then one ConvTranspose (k4, s2, p1) per further
    width, each followed by ReLU, then a 1×1 ConvTranspose to RGB. No tanh (the official):
    inference clamps to [−1, 1]. Base: 64 → 1024 → 512 → 256 → 128 → 64 → 3, 64 px.
    """

    @register_to_config
    def __init__(
        self,
        *,
        embedding_dim: int = 64,
        channels: tuple[int, ...] = (1024, 512, 256, 128, 64),
        out_channels: int = 3,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.ConvTranspose2d(embedding_dim, channels[0], 4, 1, 0)]
        for c_in, c_out in zip(channels[:-1], channels[1:], strict=True):
            layers += [nn.ReLU(inplace=True), nn.ConvTranspose2d(c_in, c_out, 4, 2, 1)]
        layers += [nn.ReLU(inplace=True), nn.ConvTranspose2d(channels[-1], out_channels, 1)]
        self.model = nn.Sequential(*layers)

    @property
    def image_size(self) -> int:
        return 4 * 2 ** (len(self.config.channels) - 1)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.model(embedding[:, :, None, None])


class WenFaceEmbedding(ModelMixin, ConfigMixin):
    """The face embedding network f: face (B, 3, H, W) → (B, embedding_dim), H = 4 ·
    2^(len(channels) − 1). A 1×1 conv, then Conv (k4, s2, p1) per further width, each followed
    by LeakyReLU(0.2), then a 4×4 conv to the embedding. Base: 3 → 32 → 64 → … → 512 → 64."""

    @register_to_config
    def __init__(
        self,
        *,
        in_channels: int = 3,
        channels: tuple[int, ...] = (32, 64, 128, 256, 512),
        embedding_dim: int = 64,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels[0], 1)]
        for c_in, c_out in zip(channels[:-1], channels[1:], strict=True):
            layers += [nn.LeakyReLU(0.2, inplace=True), nn.Conv2d(c_in, c_out, 4, 2, 1)]
        layers += [nn.LeakyReLU(0.2, inplace=True), nn.Conv2d(channels[-1], embedding_dim, 4)]
        self.model = nn.Sequential(*layers)

    @property
    def image_size(self) -> int:
        return 4 * 2 ** (len(self.config.channels) - 1)

    def forward(self, face: torch.Tensor) -> torch.Tensor:
        if face.shape[-1] != self.image_size or face.shape[-2] != self.image_size:
            raise ValueError(f"expected {self.image_size} px faces, got {tuple(face.shape)}")
        return self.model(face).flatten(1)


def heads(embedding_dim: int, num_speakers: int) -> tuple[nn.Linear, nn.Linear]:
    """d (real/fake, one logit) and c (identity over the training speakers): bias-free linear
    layers on f's embedding, as the official `Classifier`."""
    d = nn.Linear(embedding_dim, 1, bias=False)
    return d, nn.Linear(embedding_dim, num_speakers, bias=False)


class SpeakerClassifier(nn.Module):
    """e's pre-training as a speaker classifier (the authors' description; their code for it
    was never released): a cosine classifier over the training speakers on e's unit embedding,
    the vector G reads, logits = scale · cos(embedding, w_speaker). On e's raw output instead,
    the speakers' unit embeddings stayed within cos ≈ 0.9 of each other: a plain linear layer
    separates them by length and offset, which the normalisation G sees removes."""

    def __init__(
        self, encoder: WenVoiceEncoder, num_speakers: int, scale: float = 30.0, margin: float = 0.2
    ) -> None:
        super().__init__()
        self.encoder, self.scale, self.margin = encoder, scale, margin
        self.head = nn.Linear(encoder.config.embedding_dim, num_speakers, bias=False)

    def forward(self, fbank: torch.Tensor, speaker: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, speakers); with the true `speaker`, its cosine lowered by the margin."""
        cos = self.encoder.embed(fbank) @ F.normalize(self.head.weight, dim=1).T
        if speaker is not None and self.margin:
            cos = cos - self.margin * F.one_hot(speaker, cos.shape[1]).to(cos.dtype)
        return self.scale * cos


def build(presets: Mapping[str, Mapping[str, Any]]) -> dict[str, ModelMixin]:
    """e, G and f from their constructor keywords (`voice_encoder`, `generator`,
    `face_embedding`); raises `InputError` when they do not fit together."""
    try:
        nets = {
            "voice_encoder": WenVoiceEncoder(**presets["voice_encoder"]),
            "generator": WenGenerator(**presets["generator"]),
            "face_embedding": WenFaceEmbedding(**presets["face_embedding"]),
        }
    except TypeError as e:  # an unknown constructor keyword
        raise InputError(None, f"model config: {e}") from None
    e, g, f = nets["voice_encoder"], nets["generator"], nets["face_embedding"]
    if e.config.embedding_dim != g.config.embedding_dim:
        raise InputError(
            None, f"the voice embedding has {e.config.embedding_dim} dimensions and the "
            f"generator reads {g.config.embedding_dim}",
        )  # fmt: skip
    if g.image_size != f.image_size:
        raise InputError(
            None, f"the generator makes {g.image_size} px faces and f reads {f.image_size} px"
        )
    return nets


def deviations(
    *,
    preset_note: str | None,
    ema_decay: float,
    pretrain_steps: int,
    segment_seconds: float,
    scale: float,
    margin: float,
) -> list[str]:
    """Every way a trained model departs from the official Wen et al. (saved in the pipeline
    folder, printed by `scldm evaluate`)."""
    out = [
        "voice encoder: the authors' training code for e was never released; here e is "
        "pre-trained as a speaker classifier of the training speakers, as the authors describe "
        "it (cmu-mlsp/reconstructing_faces_from_voices#9), then frozen: an additive-margin "
        f"cosine classifier (scale {scale:g}, margin {margin:g}) on its unit embedding, "
        f"cross-entropy, Adam, {pretrain_steps} steps",
        f"front end: speech shorter than {segment_seconds:g} s after silence removal is looped "
        "as a waveform before the filterbank, so the per-utterance normalisation sees the "
        "looped signal (the official normalises, then tiles the frames to 10 s); training "
        f"crops come from the first {segment_seconds:g} s of each clip",
        "voices and faces come from one loader of (voice, face) pairs of a speaker; the "
        "official draws them from two independent loaders (no loss term pairs voice i with "
        "face i, so the two are equivalent)",
        "output: G's image clamped to [-1, 1] and mapped linearly to [0, 1] (the official "
        "gan_test.py min-max normalises each image)",
    ]
    if preset_note:
        out.append(preset_note)
    if ema_decay > 0:
        out.append(f"exports an exponential moving average of G (decay {ema_decay:g})")
    return out


# --- Pipeline --------------------------------------------------------------------------------


class WenPipeline(BaselinePipeline):
    """Speech → face with Wen et al.: silence removal and filterbank → e → unit embedding → G.

    Called as SCLDM's pipeline (`BaselinePipeline.__call__`), but deterministic: the K images
    of a voice are identical. Each voice is read whole (as the official `voice2face`), so
    voices of any length can be mixed in one call; audio without speech is refused in one line.
    `method` (saved in model_index.json) records the method's name, title, preset and
    deviations.
    """

    METHOD: ClassVar[dict[str, Any]] = {"name": "wen", "title": TITLE}
    model_cpu_offload_seq = "voice_encoder->generator"

    def __init__(
        self,
        frontend: FbankFrontend,
        voice_encoder: WenVoiceEncoder,
        generator: WenGenerator,
        method: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.register_modules(frontend=frontend, voice_encoder=voice_encoder, generator=generator)
        self._register_method(method)

    @property
    def image_size(self) -> int:
        return self.generator.image_size

    @torch.no_grad()
    def embed(self, audio: Sequence[AudioInput]) -> torch.Tensor:
        """The unit voice embeddings (B, D) of the voices, each read and filtered whole."""
        device = self._execution_device
        out = []
        for item in audio:
            fbank = self.frontend(self.frontend.utterance(item)[None].to(device))
            out.append(self.voice_encoder.embed(fbank.to(self.voice_encoder.dtype)))
        return torch.cat(out)

    def _faces(self, audio, num_images_per_prompt, generator) -> torch.Tensor:
        voice = self.embed(audio)
        faces = self.generator(voice.to(self.generator.dtype)).clamp(-1, 1)
        return faces.repeat_interleave(num_images_per_prompt, dim=0)


__all__ = [
    "FACE_EMBEDDING_PRESETS",
    "GENERATOR_PRESETS",
    "TITLE",
    "VOICE_ENCODER_PRESETS",
    "SpeakerClassifier",
    "WenFaceEmbedding",
    "WenGenerator",
    "WenPipeline",
    "WenVoiceEncoder",
    "build",
    "deviations",
    "heads",
]
