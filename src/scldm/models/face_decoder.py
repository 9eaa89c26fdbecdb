"""The face decoder D_f of SCLDM: a CNN that mirrors the VGG-16 face encoder's first three
blocks, latents (B, C, H/8, W/8) → faces (B, 3, H, W) in [-1, 1].

Reference: the SCLDM paper, §"Collaborative Pre-training" ("a CNN-based model symmetrical to
the VGGFace is designed as the face decoder").
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from scldm.models.blocks import POOL, ConvNormAct, init_module, split_vgg_blocks

FACE_DECODER_PRESETS: dict[str, dict] = {
    # the first three blocks of the matching FACE_ENCODER_PRESETS entry, mirrored
    "tiny": {"widths": (4, 4, POOL, 8, 8, POOL, 8, 8, 8, POOL), "image_size": 32},
    # twice the small encoder's widths, with BatchNorm: at the encoder's own widths the
    # reconstructions lost the detail the oracle reads age from (docs/notes/ has the comparison)
    "small": {
        "widths": (16, 16, POOL, 32, 32, POOL, 64, 64, 64, POOL),
        "batch_norm": True,
        "image_size": 64,
    },
    "base": {},
}


class FaceDecoder(ModelMixin, ConfigMixin):
    """Mirror of VGG-16 blocks 1–3: latents → faces.

    latents (B, C, h, w) → 3×3 conv to block 3's width → ReLU → for each encoder block in
    reverse: 2× nearest upsampling, then that block's 3×3 convs (ReLU, optional BN) at the
    resolution the encoder ran them → 3×3 conv to RGB → tanh → (B, 3, 2^k·h, 2^k·w) in [-1, 1],
    k = number of pools in `widths` (3: the encoder's H/8). Nearest upsampling + conv rather
    than transposed convs, which leave checkerboard artefacts (Odena et al. 2016).

    `widths` is the encoder's blocks 1–3 in VGG cfg notation, so presets read the same on both
    sides. `scaling_factor` is the diffusers latent scale, kept equal to the encoder's: callers
    decode `latents / scaling_factor`; forward() takes unscaled latents.
    """

    @register_to_config
    def __init__(
        self,
        *,
        latent_channels: int = 4,
        widths: tuple[int | str, ...] = (64, 64, POOL, 128, 128, POOL, 256, 256, 256, POOL),
        batch_norm: bool = False,
        image_size: int = 224,
        scaling_factor: float = 1.0,
    ) -> None:
        super().__init__()
        blocks = split_vgg_blocks(widths)
        if image_size % 2 ** len(blocks):
            raise ValueError(f"image_size {image_size} is not a multiple of {2 ** len(blocks)}")
        width = blocks[-1][-1]
        self.conv_in = ConvNormAct(latent_channels, width, 3, norm=batch_norm)
        layers: list[nn.Module] = []
        for block in reversed(blocks):
            layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
            for out in reversed(block):
                layers.append(ConvNormAct(width, out, 3, norm=batch_norm))
                width = out
        self.up_blocks = nn.Sequential(*layers)
        self.conv_out = nn.Conv2d(width, 3, 3, padding=1)
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        init_module(module)
        if module is self.conv_out:
            # Xavier (gain 1) instead of He: no ReLU follows, and a unit-variance input to the
            # tanh keeps it out of saturation at the start of training
            nn.init.xavier_uniform_(module.weight)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        """latents: (B, C, h, w), unscaled → faces (B, 3, 8h, 8w) in [-1, 1]."""
        return torch.tanh(self.conv_out(self.up_blocks(self.conv_in(latents))))

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Alias of forward (the codec interface shared with diffusers' autoencoders)."""
        return self(latents)
