"""The face encoder E_f of SCLDM: VGG-16 (the VGGFace architecture) split after one of its blocks
(the third by default, H/8; the second, H/4, at 64 px) into a spatial latent for the diffusion
model and an embedding computed from that latent.

References: Parkhi, Vedaldi & Zisserman, "Deep Face Recognition" (VGGFace), BMVC 2015;
the SCLDM paper, §"Collaborative Pre-training" (E_f = VGGFace, latent z = E_f(x)); weight
layouts of Albanie's `vgg_face_dag.pth` and torchvision's `vgg16` (REFERENCES.md §2).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import nn

from scldm.errors import InputError
from scldm.models.blocks import (
    POOL,
    VGG16_WIDTHS,
    ConvNormAct,
    init_module,
    read_state_dict,
    split_vgg_blocks,
    vgg_layers,
)

log = logging.getLogger(__name__)

# VGGFace's mean face colour, RGB on 0–255 (Albanie's vgg_face_dag meta; std is 1)
VGGFACE_MEAN_RGB = (129.186279296875, 104.76238250732422, 93.59396362304688)
VGG16_BLOCK_SIZES = (2, 2, 3, 3, 3)

FACE_ENCODER_PRESETS: dict[str, dict] = {
    # unit tests: 32 px faces, ~13k parameters, the VGG-16 structure with tiny widths; the
    # latent after block 2 (4 × 8 × 8) as `small_h4`, so the tests run that path
    "tiny": {
        "widths": (4, 4, POOL, 8, 8, POOL, 8, 8, 8, POOL, 16, 16, 16, POOL, 16, 16, 16, POOL),
        "latent_channels": 4,
        "latent_after_block": 2,
        "fc_dims": (32, 32),
        "fc_pool_size": 1,
        "embedding_dim": 16,
        "vggface_normalisation": False,
        "image_size": 32,
    },
    # SynthVox on 2 CPU cores at 64 px: latent 4 × 8 × 8, pool5 2 × 2
    "small": {
        "widths": (8, 8, POOL, 16, 16, POOL, 32, 32, 32, POOL, 64, 64, 64, POOL, 64, 64, 64, POOL),
        "latent_channels": 4,
        "fc_dims": (256, 256),
        "fc_pool_size": 2,
        "embedding_dim": 128,
        "vggface_normalisation": False,
        "image_size": 64,
    },
    # VGGFace: loads vgg_face_dag.pth entirely except fc8 (the constructor defaults)
    "base": {},
}
# `small` with the latent after block 2 (4 × 16 × 16): sharper reconstructions, which stage 2
# learns with three times the steps at λ = 1 and temperature 1; the `small` config's face
# encoder since 2026-12-01 (docs/notes/2026-12-01-h4-latent-small.md)
FACE_ENCODER_PRESETS["small_h4"] = {**FACE_ENCODER_PRESETS["small"], "latent_after_block": 2}
# small_h4 with its first two blocks (the latent's) three times as wide; the embedding's blocks
# 3–5 unchanged. At 8 channels block 1 keeps less of the eyes than averaging the pixels would;
# with the eye band weighed 8 times in L_rec this one keeps their colour: the `small` config's
# face encoder since 2026-12-03 (docs/notes/2026-12-02-stage1-eyes.md,
# docs/notes/2026-12-03-small-eyes.md)
FACE_ENCODER_PRESETS["small_h4_wide"] = {
    **FACE_ENCODER_PRESETS["small_h4"],
    "widths": (24, 24, POOL, 48, 48, POOL, 32, 32, 32, POOL, 64, 64, 64, POOL, 64, 64, 64, POOL),
}


@dataclass
class FaceEncoderOutput(BaseOutput):
    """latents: (B, C, H/f, W/f) unscaled face latents (f = 2^latent_after_block); embedding:
    (B, D), not normalised."""

    latents: torch.Tensor
    embedding: torch.Tensor


class FaceEncoder(ModelMixin, ConfigMixin):
    """VGG-16 face encoder with a latent bottleneck after block `latent_after_block` (k, default 3).

    encode: face (B, 3, H, W) in [-1, 1] → VGG blocks 1–k → 1×1 conv → latents
    (B, latent_channels, H/2^k, W/2^k). embed: latents → 1×1 conv back to block k's width →
    ReLU → VGG blocks k+1–5 → adaptive average pool to `fc_pool_size`² → fc6 → ReLU → fc7 → ReLU →
    Linear → embedding (B, embedding_dim). So the aligned embedding is a function of the latent
    the diffusion model works on (DESIGN.md §2). H and W must be multiples of 32.

    `widths` is torchvision's VGG cfg notation (ints are 3×3 conv widths, "M" a 2×2 max-pool);
    presets scale the widths but keep five pooled blocks. `batch_norm` adds BN after each conv
    (off for VGGFace). With `vggface_normalisation`, faces are mapped to VGGFace's input
    convention inside the model (x·127.5 + 127.5 − mean RGB, i.e. 0–255 RGB minus the mean
    face colour); use it with VGGFace weights, and leave it off to train from scratch on
    [-1, 1] inputs. encode() returns unscaled latents: the latent scale is computed with the face
    prior (`scldm.diffusion.prior`) and kept in the face decoder's config (`scaling_factor`).
    """

    @classmethod
    def extract_init_dict(cls, config_dict: dict[str, Any], **kwargs: Any):
        """diffusers' config reading, minus the `scaling_factor` that exports written before the
        latent scale moved to the face decoder still carry (read quietly, and dropped)."""
        config_dict = {k: v for k, v in config_dict.items() if k != "scaling_factor"}
        return super().extract_init_dict(config_dict, **kwargs)

    @register_to_config
    def __init__(
        self,
        *,
        widths: tuple[int | str, ...] = VGG16_WIDTHS,
        latent_channels: int = 4,
        latent_after_block: int = 3,
        fc_dims: tuple[int, int] = (4096, 4096),
        fc_pool_size: int = 7,
        embedding_dim: int = 512,
        batch_norm: bool = False,
        vggface_normalisation: bool = True,
        image_size: int = 224,
    ) -> None:
        super().__init__()
        blocks = split_vgg_blocks(widths)
        if len(blocks) != 5:
            raise ValueError(f"VGG widths need 5 pooled blocks, got {len(blocks)}: {widths}")
        if image_size % 32:
            raise ValueError(f"image_size {image_size} is not a multiple of 32")
        k = latent_after_block
        if not 1 <= k <= 4:
            raise ValueError(f"latent_after_block must be 1 to 4 (H/2 to H/16), got {k}")
        self.latent_blocks = nn.Sequential(*vgg_layers(blocks[:k], 3, batch_norm=batch_norm))
        latent_width = blocks[k - 1][-1]
        self.to_latent = nn.Conv2d(latent_width, latent_channels, 1)
        self.from_latent = nn.Conv2d(latent_channels, latent_width, 1)
        self.embed_blocks = nn.Sequential(
            *vgg_layers(blocks[k:], latent_width, batch_norm=batch_norm)
        )
        self.pool = nn.AdaptiveAvgPool2d(fc_pool_size)
        self.fc6 = nn.Linear(blocks[-1][-1] * fc_pool_size**2, fc_dims[0])
        self.fc7 = nn.Linear(fc_dims[0], fc_dims[1])
        self.proj = nn.Linear(fc_dims[1], embedding_dim)
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        init_module(module)

    def _normalise(self, face: torch.Tensor) -> torch.Tensor:
        if not self.config.vggface_normalisation:
            return face
        mean = face.new_tensor(VGGFACE_MEAN_RGB).view(1, 3, 1, 1)
        return face * 127.5 + (127.5 - mean)

    @property
    def downsampling(self) -> int:
        """f: the latent is (C, H/f, W/f)."""
        return 2**self.config.latent_after_block

    def encode(self, face: torch.Tensor) -> torch.Tensor:
        """face: (B, 3, H, W) in [-1, 1] → latents (B, C, H/f, W/f), unscaled."""
        if face.dim() != 4 or face.shape[1] != 3 or face.shape[2] % 32 or face.shape[3] % 32:
            raise ValueError(
                f"expected (B, 3, H, W) faces with H, W multiples of 32, got {tuple(face.shape)}"
            )
        return self.to_latent(self.latent_blocks(self._normalise(face)))

    def embed(self, latents: torch.Tensor) -> torch.Tensor:
        """latents: (B, C, H/f, W/f) → embedding (B, D), not normalised."""
        x = self.embed_blocks(torch.relu(self.from_latent(latents)))  # (B, C5, H/32, W/32)
        x = self.pool(x).flatten(1)
        x = torch.relu(self.fc7(torch.relu(self.fc6(x))))
        return self.proj(x)

    def latent_layers(self) -> nn.ModuleList:
        """The layers from the image to the latent: the encoder half of the face autoencoder."""
        return nn.ModuleList([self.latent_blocks, self.to_latent])

    def embedding_layers(self) -> nn.ModuleList:
        """The layers from the latent to the embedding (the contrastive side)."""
        return nn.ModuleList([self.from_latent, self.embed_blocks, self.fc6, self.fc7, self.proj])

    def forward(self, face: torch.Tensor) -> FaceEncoderOutput:
        """face: (B, 3, H, W) in [-1, 1] → `FaceEncoderOutput` (latents, embedding)."""
        latents = self.encode(face)
        return FaceEncoderOutput(latents=latents, embedding=self.embed(latents))

    # --- VGGFace weights -------------------------------------------------------------------

    def _vgg_targets(self) -> dict[str, tuple[str, nn.Module]]:
        """VGGFace layer name → (source key prefix in each layout, our module)."""
        convs = [
            m.conv for m in (*self.latent_blocks, *self.embed_blocks) if isinstance(m, ConvNormAct)
        ]
        blocks = split_vgg_blocks(self.config.widths)
        names, tv_index, index = [], [], 0
        for b, block in enumerate(blocks, start=1):
            for i in range(1, len(block) + 1):
                names.append(f"conv{b}_{i}")
                tv_index.append(index)
                index += 2  # conv, relu in torchvision's `features`
            index += 1  # the pool
        targets = {
            name: ({"dag": name, "torchvision": f"features.{k}"}, conv)
            for name, k, conv in zip(names, tv_index, convs, strict=True)
        }
        for name, k, module in (("fc6", 0, self.fc6), ("fc7", 3, self.fc7), ("fc8", 6, None)):
            targets[name] = ({"dag": name, "torchvision": f"classifier.{k}"}, module)
        return targets

    def load_vggface(self, path: str | Path) -> dict[str, object]:
        """Load VGGFace (or any VGG-16) weights from a user file into the matching layers.

        Accepts Albanie's `vgg_face_dag.pth` keys (conv1_1.weight … conv5_3, fc6, fc7, fc8) or
        torchvision's vgg16 keys (features.0.weight … features.28, classifier.0/3/6), as
        `torch.save` (loaded with weights_only) or safetensors. All 13 convs must be present
        with this config's shapes; fc6/fc7 load when their shapes match the config and are
        otherwise skipped; fc8 (the 2622-identity classifier) is never used; the bottleneck
        convs and the projection are always new. The weights must expect RGB input (as
        Albanie's conversion); set `vggface_normalisation=True` to feed them properly.

        Returns {"file", "layout", "loaded": [layer names], "skipped": {layer: reason},
        "new": [module names]}. Raises `InputError` naming the file for unknown keys, missing
        or misshapen conv layers, or anything that is not a readable state dict.
        """
        if self.config.batch_norm:
            raise ValueError("VGGFace has no BatchNorm: build the encoder with batch_norm=False")
        state = read_state_dict(path)
        if any(k.startswith("features.") for k in state):
            layout = "torchvision"
        elif any(k.startswith("conv1_1.") for k in state):
            layout = "dag"
        else:
            raise InputError(
                path,
                "neither vgg_face_dag (conv1_1.*) nor torchvision "
                f"(features.*) VGG keys; found e.g. {sorted(state)[:3]}",
            )
        targets = self._vgg_targets()
        expected = {
            f"{src[layout]}.{p}": name
            for name, (src, _) in targets.items()
            for p in ("weight", "bias")
        }
        unknown = sorted(set(state) - set(expected))
        if unknown:
            raise InputError(path, f"unknown keys for a VGG-16 ({layout} layout): {unknown[:4]}")
        loaded, skipped = [], {}
        with torch.no_grad():
            for name, (src, module) in targets.items():
                prefix = src[layout]
                if f"{prefix}.weight" not in state or f"{prefix}.bias" not in state:
                    if name.startswith("conv"):
                        raise InputError(path, f"missing {prefix}.weight/bias ({name})")
                    skipped[name] = "not in the file"
                    continue
                weight, bias = state[f"{prefix}.weight"], state[f"{prefix}.bias"]
                if module is None:
                    skipped[name] = f"identity classifier {tuple(weight.shape)}, not used"
                elif weight.shape != module.weight.shape or bias.shape != module.bias.shape:
                    reason = (
                        f"shape {tuple(weight.shape)} in the file, "
                        f"{tuple(module.weight.shape)} in this config"
                    )
                    if name.startswith("conv"):
                        raise InputError(path, f"{prefix}.weight ({name}): {reason}")
                    skipped[name] = reason
                else:
                    module.weight.copy_(weight)
                    module.bias.copy_(bias)
                    loaded.append(name)
        report = {
            "file": str(path),
            "layout": "vgg_face_dag" if layout == "dag" else layout,
            "loaded": loaded,
            "skipped": skipped,
            "new": [
                "to_latent",
                "from_latent",
                *(k for k in ("fc6", "fc7") if k not in loaded),
                "proj",
            ],
        }
        log.info(
            "VGGFace weights %s (%s layout): loaded %s; skipped %s; new %s",
            path,
            report["layout"],
            ", ".join(loaded),
            skipped or "none",
            ", ".join(report["new"]),
        )
        return report
