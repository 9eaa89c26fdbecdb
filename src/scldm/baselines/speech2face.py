"""Speech2Face (Oh et al., CVPR 2019) as a baseline: the voice encoder of its Table 1, the face
teacher whose fc7 features it regresses (VGGFace, or an identity-classifier VGG trained on the
training faces where no VGGFace weights exist), a Cole et al. (CVPR 2017) face decoder trained on
the teacher's features, and `Speech2FacePipeline` (audio → faces), called as SCLDM's pipeline.

Specification and sources: ../shared/BASELINES.md §2 (Table 1 and Eq. 1 of the paper; the loss
weights and temperature of a public re-implementation, Kacper-Pietkun/Speech-to-face). What is
not the paper's is listed in `deviations()` and saved in the pipeline folder.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from scldm.audio import SpectrogramFrontend, waveform_from
from scldm.baselines.pipeline import BaselinePipeline
from scldm.errors import InputError
from scldm.models.blocks import (
    POOL,
    VGG16_WIDTHS,
    ConvNormAct,
    init_module,
    read_state_dict,
    split_vgg_blocks,
    stack_out_length,
    vgg_layers,
)
from scldm.models.face_encoder import VGGFACE_MEAN_RGB

TITLE = "Speech2Face (Oh et al., CVPR 2019)"

# --- Voice encoder (Table 1) ------------------------------------------------------------------

VOICE_ENCODER_PRESETS: dict[str, dict] = {
    # SCLDM tiny's conv stack (0.5 s at n_fft 128) without CBAM
    "tiny": {
        "num_freq_bins": 65,
        "channels": (4, 8, 8, 16),
        "strides": (2, 1, 2, 1),
        "time_pools": (1, 2, 1, 1),
        "hidden_dim": 32,
        "embedding_dim": 32,
    },
    # SCLDM small's conv stack without CBAM: 64 × 16 = 1,024 features → 256 → 256 (the teacher's
    # fc7 width)
    "small": {
        "num_freq_bins": 257,
        "channels": (16, 32, 64, 64),
        "strides": (4, 2, 2, 1),
        "time_pools": (2, 1, 1, 1),
        "hidden_dim": 256,
        "embedding_dim": 256,
    },
    # Table 1 (the constructor defaults): 512 × 64 = 32,768 → 4,096 → 4,096
    "base": {},
}


class VoiceEncoder(ModelMixin, ConfigMixin):
    """Speech2Face's voice encoder (Table 1): spectrogram (B, 2, F, T) → v_s (B, D).

    Conv 4×4 → ReLU → BN blocks (Table 1's order), `time_pools[i] = 2` a 2×1 max-pool over time
    after block i, `strides[i] = 2` strides both axes; the last conv has no ReLU/BN. Then the
    average over time → ReLU → BN over the C·F' features → FC `hidden_dim` → ReLU → FC
    `embedding_dim`. Base at 6 s: (2, 257, 598) → 512 × 64 × 9 → 32,768 → 4,096 → 4,096, the
    paper's v_s, which regresses the face teacher's fc7. Inputs shorter than `min_frames` are
    looped in time, as the front end loops short audio.
    """

    @register_to_config
    def __init__(
        self,
        *,
        in_channels: int = 2,
        num_freq_bins: int = 257,
        channels: tuple[int, ...] = (64, 64, 128, 128, 128, 256, 512, 512, 512),
        strides: tuple[int, ...] = (1, 1, 1, 1, 1, 1, 1, 2, 2),
        time_pools: tuple[int, ...] = (1, 1, 2, 2, 2, 2, 1, 1, 1),
        kernel_size: int = 4,
        hidden_dim: int = 4096,
        embedding_dim: int = 4096,
    ) -> None:
        super().__init__()
        if not len(channels) == len(strides) == len(time_pools):
            raise ValueError("channels, strides and time_pools need one entry per block")
        layers: list[nn.Module] = []
        ins = (in_channels, *channels[:-1])
        for i, (c_in, c_out, stride, pool) in enumerate(
            zip(ins, channels, strides, time_pools, strict=True)
        ):
            last = i == len(channels) - 1
            layers.append(
                ConvNormAct(
                    c_in,
                    c_out,
                    kernel_size,
                    stride=stride,
                    norm=not last,
                    act=not last,
                    norm_after_act=True,
                )
            )
            if pool > 1:
                layers.append(nn.MaxPool2d((1, pool)))  # (F, T): pool time only
        self.blocks = nn.Sequential(*layers)
        self.out_freq_bins = stack_out_length(num_freq_bins, kernel_size, strides)
        if self.out_freq_bins < 1:
            raise ValueError(f"num_freq_bins {num_freq_bins} is too few for {len(strides)} blocks")
        self.min_frames = next(
            t
            for t in range(1, 1 << 16)
            if stack_out_length(t, kernel_size, strides, time_pools) >= 1
        )
        features = channels[-1] * self.out_freq_bins
        self.norm = nn.BatchNorm1d(features)
        self.fc1 = nn.Linear(features, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, embedding_dim)
        self.apply(init_module)

    def forward(self, spectrogram: torch.Tensor) -> torch.Tensor:
        """spectrogram (B, 2, F, T) → v_s (B, embedding_dim)."""
        if spectrogram.dim() != 4 or spectrogram.shape[2] != self.config.num_freq_bins:
            raise ValueError(
                f"expected a (B, {self.config.in_channels}, {self.config.num_freq_bins}, T) "
                f"spectrogram, got {tuple(spectrogram.shape)}"
            )
        if spectrogram.shape[-1] < self.min_frames:
            reps = -(-self.min_frames // spectrogram.shape[-1])
            spectrogram = spectrogram.repeat(1, 1, 1, reps)[..., : self.min_frames]
        x = self.blocks(spectrogram).mean(dim=-1).flatten(1)  # (B, C·F'): the time average
        x = self.norm(torch.relu(x))
        return self.fc2(torch.relu(self.fc1(x)))


# --- Face teacher (VGGFace, or an identity classifier of the training faces) ------------------

TEACHER_PRESETS: dict[str, dict] = {
    "tiny": {
        "widths": (4, 4, POOL, 8, 8, POOL, 8, 8, 8, POOL, 16, 16, 16, POOL, 16, 16, 16, POOL),
        "fc_dims": (32, 32),
        "fc_pool_size": 1,
        "batch_norm": True,
        "vggface_normalisation": False,
        "image_size": 32,
    },
    # VGGFace's recipe at SynthVox scale: VGG-16 at widths 8–64, fc 256, dropout 0.5
    "small": {
        "widths": (8, 8, POOL, 16, 16, POOL, 32, 32, 32, POOL, 64, 64, 64, POOL, 64, 64, 64, POOL),
        "fc_dims": (256, 256),
        "fc_pool_size": 2,
        "batch_norm": True,
        "vggface_normalisation": False,
        "image_size": 64,
    },
    # VGGFace itself (vgg_face_dag.pth: 2,622 identities); the constructor defaults
    "base": {},
}


class FaceTeacher(ModelMixin, ConfigMixin):
    """VGG-16 face network whose fc7 (after ReLU) is Speech2Face's target v_f and whose fc8 is
    f_VGG, the identity classifier the loss distils through.

    face (B, 3, H, W) in [-1, 1] → (fc7 (B, fc_dims[1]), logits (B, num_classes)). With
    `vggface_normalisation` faces are fed in VGGFace's convention (0–255 RGB minus the mean face).
    """

    @register_to_config
    def __init__(
        self,
        *,
        widths: tuple[int | str, ...] = VGG16_WIDTHS,
        fc_dims: tuple[int, int] = (4096, 4096),
        fc_pool_size: int = 7,
        num_classes: int = 2622,
        dropout: float = 0.5,
        batch_norm: bool = False,
        vggface_normalisation: bool = True,
        image_size: int = 224,
    ) -> None:
        super().__init__()
        blocks = split_vgg_blocks(widths)
        self.features = nn.Sequential(*vgg_layers(blocks, 3, batch_norm=batch_norm))
        self.pool = nn.AdaptiveAvgPool2d(fc_pool_size)
        self.fc6 = nn.Linear(blocks[-1][-1] * fc_pool_size**2, fc_dims[0])
        self.fc7 = nn.Linear(fc_dims[0], fc_dims[1])
        self.fc8 = nn.Linear(fc_dims[1], num_classes)
        self.drop = nn.Dropout(dropout)
        self.apply(init_module)

    def _normalise(self, face: torch.Tensor) -> torch.Tensor:
        if not self.config.vggface_normalisation:
            return face
        return face * 127.5 + (127.5 - face.new_tensor(VGGFACE_MEAN_RGB).view(1, 3, 1, 1))

    def embed(self, face: torch.Tensor) -> torch.Tensor:
        """face → fc7 after ReLU (B, fc_dims[1]): v_f."""
        x = self.pool(self.features(self._normalise(face))).flatten(1)
        x = self.drop(torch.relu(self.fc6(x)))
        return torch.relu(self.fc7(x))

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """fc7 features (a face's v_f or a voice's v_s) → identity logits: f_VGG."""
        return self.fc8(self.drop(features))

    def forward(self, face: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.embed(face)
        return features, self.classify(features)

    def load_vggface(self, path: str | Path) -> list[str]:
        """Load all layers, fc8 included, from Albanie's `vgg_face_dag.pth` (conv1_1 … fc8) or a
        torchvision vgg16 layout (features.N, classifier.0/3/6); returns the loaded names.
        Raises `InputError` naming the file for missing keys or other shapes."""
        if self.config.batch_norm:
            raise ValueError("VGGFace has no BatchNorm: build the teacher with batch_norm=False")
        state = read_state_dict(path)
        layout = "torchvision" if any(k.startswith("features.") for k in state) else "dag"
        targets = _vgg_keys(self, layout)
        with torch.no_grad():
            for key, module in targets.items():
                for p in ("weight", "bias"):
                    name = f"{key}.{p}"
                    if name not in state:
                        raise InputError(path, f"missing {name} (a VGG-16 in the {layout} layout)")
                    target = getattr(module, p)
                    if state[name].shape != target.shape:
                        raise InputError(
                            path,
                            f"{name} has shape {tuple(state[name].shape)}, this teacher "
                            f"{tuple(target.shape)}",
                        )
                    target.copy_(state[name])
        return list(targets)


def _vgg_keys(teacher: FaceTeacher, layout: str) -> dict[str, nn.Module]:
    """The weight-file prefix of each of the teacher's layers, in `layout` ("dag" or
    "torchvision")."""
    keys: dict[str, nn.Module] = {}
    index, block, conv = 0, 1, 0
    for layer in teacher.features:
        if isinstance(layer, ConvNormAct):
            conv += 1
            keys[f"features.{index}" if layout == "torchvision" else f"conv{block}_{conv}"] = (
                layer.conv
            )
            index += 2  # conv, relu
        else:  # the pool closing a block
            index, block, conv = index + 1, block + 1, 0
    for name, tv, module in (
        ("fc6", 0, teacher.fc6),
        ("fc7", 3, teacher.fc7),
        ("fc8", 6, teacher.fc8),
    ):
        keys[f"classifier.{tv}" if layout == "torchvision" else name] = module
    return keys


# --- Face decoder (Cole et al. 2017, texture branch) ------------------------------------------

FACE_DECODER_PRESETS: dict[str, dict] = {
    "tiny": {
        "in_dim": 32,
        "hidden_dim": 32,
        "start_size": 4,
        "start_channels": 16,
        "channels": (8, 8, 8),
    },
    "small": {
        "in_dim": 256,
        "hidden_dim": 256,
        "start_size": 4,
        "start_channels": 128,
        "channels": (64, 32, 16, 16),
    },
    # f_dec: 4,096 → 1,000 (Speech2Face), then Cole's 14 × 14 × 256 and four upsamplings → 224
    "base": {},
}


class ColeDecoder(ModelMixin, ConfigMixin):
    """Cole et al.'s texture decoder: features (B, in_dim) → faces (B, 3, H, W) in [-1, 1].

    Linear (f_dec, the layer whose output the Speech2Face loss compares) → ReLU → Linear to
    start_channels × start_size² → ReLU → one 5×5 stride-2 transposed conv + ReLU per entry of
    `channels` (each doubles the size) → 1×1 conv → tanh. H = start_size · 2^len(channels).
    """

    @register_to_config
    def __init__(
        self,
        *,
        in_dim: int = 4096,
        hidden_dim: int = 1000,
        start_size: int = 14,
        start_channels: int = 256,
        channels: tuple[int, ...] = (128, 64, 32, 32),
    ) -> None:
        super().__init__()
        self.f_dec = nn.Linear(in_dim, hidden_dim)
        self.to_map = nn.Linear(hidden_dim, start_channels * start_size**2)
        ups: list[nn.Module] = []
        for c_in, c_out in zip((start_channels, *channels[:-1]), channels, strict=True):
            ups += [nn.ConvTranspose2d(c_in, c_out, 5, 2, padding=2, output_padding=1), nn.ReLU()]
        self.up = nn.Sequential(*ups)
        self.conv_out = nn.Conv2d(channels[-1], 3, 1)
        self.apply(init_module)

    @property
    def image_size(self) -> int:
        return self.config.start_size * 2 ** len(self.config.channels)

    def hidden(self, features: torch.Tensor) -> torch.Tensor:
        """f_dec(v): the decoder's first layer (B, hidden_dim), before its ReLU. The paper does
        not say which side; after the ReLU the loss is blind to the units it zeroes, and four
        voice/face pairs did not overfit in 600 steps (before it: cos > 0.95 in 500)."""
        return self.f_dec(features)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        x = torch.relu(self.to_map(torch.relu(self.hidden(features))))
        x = x.view(-1, cfg.start_channels, cfg.start_size, cfg.start_size)
        return torch.tanh(self.conv_out(self.up(x)))


# --- What differs from the paper ---------------------------------------------------------------


def deviations(
    *, teacher_mode: str, crop_seconds: float | None, preset_note: str | None, ema_decay: float
) -> list[str]:
    """Every way a trained model departs from Speech2Face as published (saved in the pipeline
    folder, printed by `scldm evaluate`)."""
    out = []
    if teacher_mode == "identity":
        out.append(
            "face teacher: not VGGFace (no weights given) but a VGG-16 at narrow widths trained "
            "as an identity classifier on the training faces (VGGFace's recipe at small scale); "
            "v_f = its fc7 after ReLU, f_VGG = its fc8 over the training speakers"
        )
    else:
        out.append(
            "face teacher: VGGFace; v_f = fc7 after ReLU (the paper leaves pre/post-ReLU open)"
        )
    out += [
        "face decoder: Speech2Face's was never released; Cole et al.'s texture branch trained on "
        "(teacher fc7, face) with L1 + (1 - cos) of the teacher's fc7; no landmarks or warping",
        "loss: Eq. 1 with f_dec the decoder's first layer before its ReLU (not stated in the "
        "paper), per-sample norms and the weights 1 / 0.025 / 200 and temperature 2 of a "
        "public re-implementation (Kacper-Pietkun/Speech-to-face), not stated in the paper",
    ]
    if crop_seconds is not None:
        out.append(
            f"trains on random {crop_seconds:g} s windows of the 6 s input "
            "(the paper: the whole 6 s)"
        )
    if preset_note:
        out.append(preset_note)
    if ema_decay > 0:
        out.append(
            f"exports an exponential moving average of the voice encoder (decay {ema_decay:g})"
        )
    return out


# --- Pipeline --------------------------------------------------------------------------------


class Speech2FacePipeline(BaselinePipeline):
    """Speech → face with Speech2Face: front end → voice encoder v_s → face decoder.

    Called as SCLDM's pipeline (`BaselinePipeline.__call__`), but deterministic: the K images
    of a voice are identical. `method` (saved in model_index.json) records the method's name,
    title, preset and deviations from the paper.
    """

    METHOD: ClassVar[dict[str, Any]] = {"name": "speech2face", "title": TITLE}
    model_cpu_offload_seq = "voice_encoder->face_decoder"

    def __init__(
        self,
        frontend: SpectrogramFrontend,
        voice_encoder: VoiceEncoder,
        face_decoder: ColeDecoder,
        method: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.register_modules(
            frontend=frontend, voice_encoder=voice_encoder, face_decoder=face_decoder
        )
        self._register_method(method)

    @property
    def image_size(self) -> int:
        return self.face_decoder.image_size

    def _faces(self, audio, num_images_per_prompt, generator) -> torch.Tensor:
        device = self._execution_device
        waveforms = torch.stack([waveform_from(item, self.frontend) for item in audio])
        spec = self.frontend(waveforms.to(device))
        voice = self.voice_encoder(spec.to(self.voice_encoder.dtype))  # (B, D)
        faces = self.face_decoder(voice.to(self.face_decoder.dtype))  # (B, 3, H, W)
        return faces.repeat_interleave(num_images_per_prompt, dim=0)


def num_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


__all__ = [
    "FACE_DECODER_PRESETS",
    "TEACHER_PRESETS",
    "VOICE_ENCODER_PRESETS",
    "ColeDecoder",
    "FaceTeacher",
    "Speech2FacePipeline",
    "VoiceEncoder",
    "deviations",
    "num_parameters",
]
