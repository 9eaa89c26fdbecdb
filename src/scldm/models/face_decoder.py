"""The face decoder D_f of SCLDM: a CNN that mirrors the VGG-16 face encoder's blocks up to the
latent, latents (B, C, H/f, W/f) → faces (B, 3, H, W) in [-1, 1], optionally with residual
blocks at every resolution (latent diffusion's autoencoder decoder).

References: the SCLDM paper, §"Collaborative Pre-training" ("a CNN-based model symmetrical to
the VGGFace is designed as the face decoder"); Rombach et al., "High-Resolution Image Synthesis
with Latent Diffusion Models", CVPR 2022 (its decoder's GroupNorm–SiLU ResNet blocks).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from scldm.models.blocks import POOL, ConvNormAct, init_module, split_vgg_blocks

FACE_DECODER_PRESETS: dict[str, dict] = {
    # the first three blocks of the matching FACE_ENCODER_PRESETS entry, mirrored
    "tiny": {
        "widths": (4, 4, POOL, 8, 8, POOL),
        "res_blocks": 1,
        "image_size": 32,
        "position_bias": True,
    },
    # twice the small encoder's widths, with BatchNorm: at the encoder's own widths the
    # reconstructions lost the detail the oracle reads age from (docs/notes/ has the comparison);
    # the position bias draws the eyes and mouth that aligned faces share
    # (docs/notes/2026-12-01-decoder-position-bias.md)
    "small": {
        "widths": (16, 16, POOL, 32, 32, POOL, 64, 64, 64, POOL),
        "batch_norm": True,
        "image_size": 64,
        "position_bias": True,
    },
    # the small_h4 encoder's blocks 1–2 (latent 4 × 16 × 16) mirrored at three times their
    # widths, about small's cost per face (docs/notes/2026-11-30-face-autoencoder.md); the
    # `small` config's decoder since 2026-12-01 (docs/notes/2026-12-01-h4-latent-small.md)
    "small_h4": {
        "widths": (24, 24, POOL, 48, 48, POOL),
        "batch_norm": True,
        "image_size": 64,
        "position_bias": True,
    },
    # small_h4 at twice the widths (3.4 times the parameters): too costly to train inside stage 1
    # on small's budget, but the new decoder stage 2 can train on the frozen latents
    # (`decoder.model`), where it draws more of the fine detail than small_h4 refined as long
    # (docs/notes/2026-12-02-wide-decoder.md)
    "small_h4_wide": {
        "widths": (48, 48, POOL, 96, 96, POOL),
        "batch_norm": True,
        "image_size": 64,
        "position_bias": True,
    },
    # between small_h4 and small_h4_wide in width, with the position bias: the new decoder
    # `make demo` trains on its frozen latents (`decoder.model`), which draws the eyes small_h4
    # averaged away within the demo's time (widths, cost and faces:
    # docs/notes/2026-12-03-demo-eyes.md; benchmarks/results/decoder_refine_cpu_demo.md)
    "small_h4_mid": {
        "widths": (32, 32, POOL, 64, 64, POOL),
        "batch_norm": True,
        "image_size": 64,
        "position_bias": True,
    },
    "base": {},
}


class ResBlock(nn.Module):
    """x + conv(SiLU(GN(conv(SiLU(GN(x)))))): latent diffusion's decoder block without the time
    embedding, at a constant width."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(min(groups, channels), channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(min(groups, channels), channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        return x + self.conv2(F.silu(self.norm2(h)))


class FaceDecoder(ModelMixin, ConfigMixin):
    """Mirror of the face encoder's VGG blocks up to the latent: latents → faces.

    latents (B, C, h, w) → 3×3 conv to the deepest block's width → ReLU → for each encoder block
    in reverse: 2× nearest upsampling, then that block's 3×3 convs (ReLU, optional BN) at the
    resolution the encoder ran them, then `res_blocks` residual blocks → 3×3 conv to RGB → tanh
    → (B, 3, 2^k·h, 2^k·w) in [-1, 1], k = number of pools in `widths` (3: the encoder's H/8).
    With residual blocks there is one more at the latent's resolution, and the output conv reads
    GN → SiLU of the features (LDM's decoder). Nearest upsampling + conv rather than transposed
    convs, which leave checkerboard artefacts (Odena et al. 2016).

    With `position_bias` a learned image (3, H, W), zero at the start, is added before the tanh.
    Faces are aligned, so their eyes and mouth sit at nearly the same pixels in every image, but
    a convolutional decoder is equivariant to shifts: from a coarse latent it cannot place
    small features at fixed pixels, and with an L1 loss it leaves them out. The bias holds what
    the faces share at each pixel; the network draws how each face differs from it. Faces of
    another size get the bias resized (bilinear).

    `widths` is the encoder's blocks up to the latent in VGG cfg notation, so presets read the
    same on both sides. `scaling_factor` is the diffusers latent scale, written by stage 2
    (`scldm.diffusion.prior`): callers decode `latents / scaling_factor`; forward() takes
    unscaled latents.
    """

    @register_to_config
    def __init__(
        self,
        *,
        latent_channels: int = 4,
        widths: tuple[int | str, ...] = (64, 64, POOL, 128, 128, POOL, 256, 256, 256, POOL),
        batch_norm: bool = False,
        res_blocks: int = 0,
        norm_groups: int = 8,
        image_size: int = 224,
        position_bias: bool = False,
        scaling_factor: float = 1.0,
    ) -> None:
        super().__init__()
        blocks = split_vgg_blocks(widths)
        if image_size % 2 ** len(blocks):
            raise ValueError(f"image_size {image_size} is not a multiple of {2 ** len(blocks)}")
        width = blocks[-1][-1]
        self.conv_in = ConvNormAct(latent_channels, width, 3, norm=batch_norm)
        layers: list[nn.Module] = [ResBlock(width, norm_groups)] if res_blocks else []
        for block in reversed(blocks):
            layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
            for out in reversed(block):
                layers.append(ConvNormAct(width, out, 3, norm=batch_norm))
                width = out
            layers += [ResBlock(width, norm_groups) for _ in range(res_blocks)]
        if res_blocks:
            layers += [nn.GroupNorm(min(norm_groups, width), width), nn.SiLU()]
        self.up_blocks = nn.Sequential(*layers)
        self.conv_out = nn.Conv2d(width, 3, 3, padding=1)
        self.bias_image = (
            nn.Parameter(torch.zeros(3, image_size, image_size)) if position_bias else None
        )
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        init_module(module)
        if module is self.conv_out:
            # Xavier (gain 1) instead of He: no ReLU follows, and a unit-variance input to the
            # tanh keeps it out of saturation at the start of training
            nn.init.xavier_uniform_(module.weight)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        """latents: (B, C, h, w), unscaled → faces (B, 3, 2^k·h, 2^k·w) in [-1, 1]."""
        out = self.conv_out(self.up_blocks(self.conv_in(latents)))
        if self.bias_image is not None:
            bias = self.bias_image
            if out.shape[-2:] != bias.shape[-2:]:  # faces of another size: the same layout
                bias = F.interpolate(bias[None], size=out.shape[-2:], mode="bilinear")[0]
            out = out + bias
        return torch.tanh(out)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Alias of forward (the codec interface shared with diffusers' autoencoders)."""
        return self(latents)
