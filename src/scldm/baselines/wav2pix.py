"""Wav2Pix, "Wav2Pix: Speech-conditioned Face Generation using Generative Adversarial Networks"
(Duarte et al., ICASSP 2019) as a baseline, as its official code (imatge-upc/wav2pix @ d801b41)
defines it: a SEGAN discriminator's convolutional stack reads one second of raw waveform into
a 128-d speech embedding z; a spectrally normalised generator with dropout turns z into a face;
for training only, a discriminator that sees the face's 4×4 features with z tiled beside them
(concatenation, not a projection), and an auxiliary speaker classifier on z.
`Wav2PixPipeline` (audio → faces) is called as SCLDM's pipeline.

Specification and sources: ../shared/BASELINES.md §4. Layer for layer the official `models/`,
at its widths (the classes' defaults: 64 px; the `base` preset: the official runtime's 128 px;
parameter counts pinned in the tests), initialised as the official `weights_init`: N(0, 0.02)
for convolutions and linear layers, N(1, 0.02) for batch-norm scales. That function cannot see
the weight of a spectrally normalised layer (their `SpectralNorm` renames it), so those keep
PyTorch's default initialisation, here too. What is not the official method is listed in
`deviations()` and saved in the pipeline folder.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm

from scldm.audio import WaveformFrontend
from scldm.baselines.pipeline import BaselinePipeline, image_generators
from scldm.errors import InputError

TITLE = "Wav2Pix (Duarte et al., ICASSP 2019)"
Generators = torch.Generator | Sequence[torch.Generator] | None

# Each preset gives every network's constructor keywords. base: the official runtime (128 px);
# small: ngf = ndf = 16 and encoder widths 8-256 (64 px); tiny: 32 px, a 16-d embedding. On
# 0.25 s of audio (BASELINES.md's first plan) the speech encoder did not tell 4 speakers apart.
ENCODER_PRESETS: dict[str, dict] = {
    "tiny": {"channels": (8, 16, 32, 64, 128, 256), "hidden": (32, 32), "embedding_dim": 16},
    "small": {"channels": (8, 16, 32, 64, 128, 256)},
    "base": {},
}
GENERATOR_PRESETS: dict[str, dict] = {
    "tiny": {"embedding_dim": 16, "channels": (64, 32, 16)},
    "small": {"channels": (128, 64, 32, 16)},
    "base": {"channels": (1024, 512, 256, 128, 64)},
}
DISCRIMINATOR_PRESETS: dict[str, dict] = {
    "tiny": {"embedding_dim": 16, "channels": (4, 8, 16)},
    "small": {"channels": (16, 32, 64, 128)},
    "base": {"channels": (64, 128, 256, 512, 1024)},
}


def official_init(module: nn.Module) -> None:
    """The official `Utils.weights_init` on every submodule: convolution and linear weights
    N(0, 0.02) (biases keep PyTorch's default), batch-norm scale N(1, 0.02) and shift 0.
    Spectrally normalised layers are left alone, as the official function leaves them."""
    for m in module.modules():
        if isinstance(m, nn.modules.conv._ConvNd | nn.Linear):
            if not parametrize.is_parametrized(m):
                nn.init.normal_(m.weight, 0.0, 0.02)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def _sn(layer: nn.Module) -> nn.Module:
    # dim 0 for every layer, transposed ones included: the official reshapes each weight to
    # (weight.shape[0], -1) before its power iteration (torch's default for transposed is 1)
    return spectral_norm(layer, dim=0)


class Wav2PixSpeechEncoder(ModelMixin, ConfigMixin):
    """The speech encoder (SEGAN's discriminator): waveform (B, samples) → z (B, embedding_dim).

    Six blocks of [pad (k//2 − 1, k//2), Conv1d (k 15, stride 4), BatchNorm, LeakyReLU 0.3],
    flatten, then Linear layers through `hidden` with ReLU to the embedding. The official sizes
    its first Linear as the power of two nearest samples / 4; here it is the flatten size
    itself (both 4,096 at 1 s). Defaults (the official): 16 → 1024 filters, 11,495,424
    parameters.
    """

    @register_to_config
    def __init__(
        self,
        *,
        samples: int = 16_000,
        channels: tuple[int, ...] = (16, 32, 128, 256, 512, 1024),
        kernel_size: int = 15,
        stride: int = 4,
        negative_slope: float = 0.3,
        hidden: tuple[int, ...] = (256, 128),
        embedding_dim: int = 128,
    ) -> None:
        super().__init__()
        self.pad = (kernel_size // 2 - 1, kernel_size // 2)
        blocks: list[nn.Module] = []
        length = samples
        for c_in, c_out in zip((1, *channels[:-1]), channels, strict=True):
            blocks += [
                nn.ConstantPad1d(self.pad, 0.0),
                nn.Conv1d(c_in, c_out, kernel_size, stride),
                nn.BatchNorm1d(c_out),
                nn.LeakyReLU(negative_slope),
            ]
            length = (length + sum(self.pad) - kernel_size) // stride + 1
            if length < 1:
                raise InputError(None, f"{samples} samples are too few for {len(channels)} blocks")
        self.convs = nn.Sequential(*blocks)
        self.flatten_size = channels[-1] * length
        widths = (self.flatten_size, *hidden)
        layers: list[nn.Module] = []
        for f_in, f_out in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Linear(f_in, f_out), nn.ReLU()]
        layers.append(nn.Linear(widths[-1], embedding_dim))
        self.fc = nn.Sequential(*layers)
        official_init(self)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        samples = self.config.samples
        if waveform.dim() != 2 or waveform.shape[1] != samples:
            raise ValueError(f"expected a (B, {samples}) waveform, got {tuple(waveform.shape)}")
        return self.fc(self.convs(waveform[:, None]).flatten(1))


class Wav2PixGenerator(ModelMixin, ConfigMixin):
    """The generator: z (B, D) → face (B, 3, H, W) in [-1, 1], H = 4 · 2^len(channels).

    Spectrally normalised ConvTranspose layers without bias: k4 s1 from 1×1 to 4×4, then k4 s2
    p1 per further width and to RGB; each but the last followed by Dropout(0.5) and ReLU, the
    last by tanh. Defaults (the official at 64 px): 128 → 512 → 256 → 128 → 64 → 3, 3,804,160
    parameters.

    Dropout is on in training and, at inference, only when `generator` is given. Its masks come
    from `generator`: one `torch.Generator` per image (a face then depends on its own seed
    only, not on the batch) or one for the whole batch; in training without one, from the
    global RNG.
    """

    @register_to_config
    def __init__(
        self,
        *,
        embedding_dim: int = 128,
        channels: tuple[int, ...] = (512, 256, 128, 64),
        out_channels: int = 3,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        layers = [_sn(nn.ConvTranspose2d(embedding_dim, channels[0], 4, 1, 0, bias=False))]
        for c_in, c_out in zip(channels, (*channels[1:], out_channels), strict=True):
            layers.append(_sn(nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False)))
        self.convs = nn.ModuleList(layers)

    @property
    def image_size(self) -> int:
        return 4 * 2 ** len(self.config.channels)

    def _dropout(self, h: torch.Tensor, generator: Generators) -> torch.Tensor:
        p = self.config.dropout
        if p == 0 or (generator is None and not self.training):
            return h
        if generator is None:  # training without a generator: the global RNG
            return F.dropout(h, p, training=True)
        if isinstance(generator, torch.Generator):
            keep = torch.rand(h.shape, generator=generator, device=generator.device)
        else:
            if len(generator) != len(h):
                raise ValueError(f"{len(generator)} generators for {len(h)} images")
            keep = torch.stack(
                [torch.rand(h.shape[1:], generator=g, device=g.device) for g in generator]
            )
        return h * (keep.to(h.device) >= p).to(h.dtype) / (1 - p)

    def forward(self, embedding: torch.Tensor, generator: Generators = None) -> torch.Tensor:
        h = embedding[:, :, None, None]
        for conv in self.convs[:-1]:
            h = F.relu(self._dropout(conv(h), generator))
        return torch.tanh(self.convs[-1](h))


class Wav2PixDiscriminator(ModelMixin, ConfigMixin):
    """The discriminator: (face (B, 3, H, W), z (B, D)) → (scores (B,), features φ (B, C, 4, 4)).

    Spectrally normalised Conv (k4 s2 p1, no bias) + LeakyReLU 0.2 per width down to 4×4 (φ,
    which the generator's feature-matching term reads), z tiled over the 4×4 map and
    concatenated, then a plain Conv (k4, no bias) to one score. Defaults (the official at 64 px):
    3 → 64 → 512 and 512 + 128 → 1, 2,765,824 parameters.
    """

    @register_to_config
    def __init__(
        self,
        *,
        in_channels: int = 3,
        channels: tuple[int, ...] = (64, 128, 256, 512),
        embedding_dim: int = 128,
        negative_slope: float = 0.2,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for c_in, c_out in zip((in_channels, *channels[:-1]), channels, strict=True):
            layers += [
                _sn(nn.Conv2d(c_in, c_out, 4, 2, 1, bias=False)),
                nn.LeakyReLU(negative_slope),
            ]
        self.features = nn.Sequential(*layers)
        self.head = nn.Conv2d(channels[-1] + embedding_dim, 1, 4, 1, 0, bias=False)
        official_init(self)

    @property
    def image_size(self) -> int:
        return 4 * 2 ** len(self.config.channels)

    def forward(
        self, face: torch.Tensor, embedding: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if face.shape[-1] != self.image_size or face.shape[-2] != self.image_size:
            raise ValueError(f"expected {self.image_size} px faces, got {tuple(face.shape)}")
        phi = self.features(face)
        tiled = embedding[:, :, None, None].expand(-1, -1, *phi.shape[-2:])
        return self.head(torch.cat([phi, tiled], 1)).flatten(), phi


class AuxiliaryClassifier(nn.Sequential):
    """The auxiliary speaker classifier on z (training only): Linear → 200, BatchNorm,
    LeakyReLU 0.2, Linear → speakers, BatchNorm (the official's logits are batch-normalised).
    The official hard-codes 10 speakers; here they are the training speakers."""

    def __init__(self, embedding_dim: int, num_speakers: int, hidden: int = 200) -> None:
        super().__init__(
            nn.Linear(embedding_dim, hidden),
            nn.BatchNorm1d(hidden),
            nn.LeakyReLU(0.2),
            nn.Linear(hidden, num_speakers),
            nn.BatchNorm1d(num_speakers),
        )
        official_init(self)


def build(presets: Mapping[str, Mapping[str, Any]]) -> dict[str, ModelMixin]:
    """The speech encoder, G and D from their constructor keywords (`speech_encoder`,
    `generator`, `discriminator`); raises `InputError` when they do not fit together."""
    try:
        nets = {
            "speech_encoder": Wav2PixSpeechEncoder(**presets["speech_encoder"]),
            "generator": Wav2PixGenerator(**presets["generator"]),
            "discriminator": Wav2PixDiscriminator(**presets["discriminator"]),
        }
    except TypeError as e:  # an unknown constructor keyword
        raise InputError(None, f"model config: {e}") from None
    e, g, d = nets["speech_encoder"], nets["generator"], nets["discriminator"]
    dims = {e.config.embedding_dim, g.config.embedding_dim, d.config.embedding_dim}
    if len(dims) > 1:
        raise InputError(
            None, f"the speech embedding has {e.config.embedding_dim} dimensions, the generator "
            f"reads {g.config.embedding_dim} and the discriminator {d.config.embedding_dim}",
        )  # fmt: skip
    if g.image_size != d.image_size:
        raise InputError(
            None, f"the generator makes {g.image_size} px faces and D reads {d.image_size} px"
        )
    return nets


def deviations(
    *,
    preset_note: str | None,
    ema_decay: float,
    dropout_at_inference: bool,
    seconds: float,
    segment_seconds: float,
    encoder: Wav2PixSpeechEncoder,
) -> list[str]:
    """Every way a trained model departs from the official Wav2Pix (saved in the pipeline
    folder, printed by `scldm evaluate`)."""
    out = [
        f"front end: each step cuts a new random {seconds:g} s window from each clip's first "
        f"{segment_seconds:g} s (the official cuts a fixed set of random windows offline); audio "
        "shorter than a window is looped (the official refuses it)",
        "batch norm at inference uses the running statistics, so a face does not depend on the "
        "batch (the official predict() never calls eval(): its faces use batch statistics)",
        "spectral norm: PyTorch's parametrisation, one power iteration per training call and "
        "none at inference (the official iterates at every call, inference included)",
        "the fakes of a step are made once and used by both players' losses (the official runs "
        "G again for its own update, with new dropout masks)",
        "mismatched faces: the batch's real faces rolled by one place, every batch holding "
        "distinct speakers (the official draws a random face of another speaker)",
        "the auxiliary classifier's classes are the training speakers (the official hard-codes 10)",
        "output: G's tanh image mapped linearly to [0, 1] in the RGB order it was trained on "
        "(the official predict() swaps the red and blue channels when saving)",
    ]
    # the official sizes the encoder's first linear layer as the power of two nearest
    # samples / 4, which is its flatten size at its own widths (1,024 filters) only near 1 s
    samples, last = encoder.config.samples, encoder.config.channels[-1]
    official_fc = min((2**i for i in range(15)), key=lambda n: abs(n - samples / 4))
    if official_fc != encoder.flatten_size // last * 1024:
        out.append(
            f"speech encoder: its first linear layer reads the {encoder.flatten_size} flattened "
            f"features (at {samples} samples the official's rule, the power of two nearest "
            "samples / 4, does not match its own flatten size)"
        )
    if dropout_at_inference:
        out.append(
            "dropout stays on at inference as in the official predict(), but each image's masks "
            "come from its own seeded generator (the official: the global RNG)"
        )
    else:
        out.append("dropout off at inference: a deterministic variant (the official keeps it on)")
    if preset_note:
        out.append(preset_note)
    if ema_decay > 0:
        out.append(f"exports an exponential moving average of the generating side ({ema_decay:g})")
    return out


# --- Pipeline --------------------------------------------------------------------------------


class Wav2PixPipeline(BaselinePipeline):
    """Speech → face with Wav2Pix: the centre second, abs-max normalised and pre-emphasised →
    speech encoder → z → generator.

    Called as SCLDM's pipeline (`BaselinePipeline.__call__`). With `dropout_at_inference` (the
    official behaviour) the generator's dropout stays on and the K faces of a voice differ:
    each image's masks come from its own generator (a list of B × K generators; one generator
    or None is split into one seed per image), so a seed gives the same face in any batch.
    Without it the method is deterministic. The speech encoder's batch norm uses its running
    statistics. `method` (saved in model_index.json) records the method's name, title, preset
    and deviations.
    """

    METHOD: ClassVar[dict[str, Any]] = {"name": "wav2pix", "title": TITLE}
    model_cpu_offload_seq = "speech_encoder->generator"

    def __init__(
        self,
        frontend: WaveformFrontend,
        speech_encoder: Wav2PixSpeechEncoder,
        generator: Wav2PixGenerator,
        dropout_at_inference: bool = True,
        method: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.register_modules(frontend=frontend, speech_encoder=speech_encoder, generator=generator)
        self.register_to_config(dropout_at_inference=bool(dropout_at_inference))
        self._register_method(method)

    @property
    def method(self) -> dict[str, Any]:
        return {**super().method, "deterministic": not self.config.dropout_at_inference}

    @property
    def image_size(self) -> int:
        return self.generator.image_size

    @torch.no_grad()
    def embed(self, audio: Sequence[Any]) -> torch.Tensor:
        """The speech embeddings z (B, D) of the voices' centre windows."""
        waves = torch.stack([self.frontend.utterance(item) for item in audio])
        waves = self.frontend(waves.to(self._execution_device))
        return self.speech_encoder(waves.to(self.speech_encoder.dtype))

    def _faces(self, audio, num_images_per_prompt, generator) -> torch.Tensor:
        z = self.embed(audio).repeat_interleave(num_images_per_prompt, dim=0)
        masks = None
        if self.config.dropout_at_inference:
            masks = image_generators(generator, len(z))
        return self.generator(z.to(self.generator.dtype), masks)


__all__ = [
    "DISCRIMINATOR_PRESETS",
    "ENCODER_PRESETS",
    "GENERATOR_PRESETS",
    "TITLE",
    "AuxiliaryClassifier",
    "Wav2PixDiscriminator",
    "Wav2PixGenerator",
    "Wav2PixPipeline",
    "Wav2PixSpeechEncoder",
    "build",
    "deviations",
    "official_init",
]
