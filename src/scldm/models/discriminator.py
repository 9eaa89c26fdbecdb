"""The PatchGAN discriminator that trains the face autoencoder adversarially, as latent
diffusion's autoencoder (taming-transformers' VQGAN recipe) does.

References: Isola et al., "Image-to-Image Translation with Conditional Adversarial Networks"
(pix2pix), CVPR 2017 — the N-layer PatchGAN; Esser, Rombach & Ommer, "Taming Transformers for
High-Resolution Image Synthesis", CVPR 2021 — hinge loss, adaptive weight and a delayed start
for an autoencoder; Wang et al., "High-Resolution Image Synthesis and Semantic Manipulation with
Conditional GANs" (pix2pixHD), CVPR 2018 §3.2 — the feature-matching loss on its features.
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

DISCRIMINATOR_PRESETS: dict[str, dict] = {
    "tiny": {"width": 8, "num_layers": 2},
    # 64 px faces: 2 stride-2 layers, each logit sees a 34 px patch (about an eye and a brow);
    # narrow, so that it adds a fraction of a step on a CPU (off in the small preset; tried in
    # docs/notes/2026-11-30-face-autoencoder.md)
    "small": {"width": 16, "num_layers": 2},
    # 224 px faces: pix2pix's 70 px patches
    "base": {"width": 64, "num_layers": 3},
}


class PatchDiscriminator(ModelMixin, ConfigMixin):
    """pix2pix's N-layer PatchGAN: faces (B, 3, H, W) in [-1, 1] → a map of real/fake logits.

    conv 4×4/2 → LeakyReLU(0.2); `num_layers − 1` × (conv 4×4/2 → GroupNorm → LeakyReLU), doubling
    the width up to 8×; conv 4×4/1 → GroupNorm → LeakyReLU; conv 4×4/1 → 1 channel. GroupNorm
    instead of pix2pix's BatchNorm: real and generated faces go through one call, and a batch
    statistic would let the discriminator tell them apart by the batch they came in.
    """

    @register_to_config
    def __init__(self, *, width: int = 64, num_layers: int = 3, groups: int = 8) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Sequential(nn.Conv2d(3, width, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True))
        ]
        channels = width
        for i in range(1, num_layers + 1):
            out = width * min(2**i, 8)
            stride = 2 if i < num_layers else 1
            layers.append(
                nn.Sequential(
                    nn.Conv2d(channels, out, 4, stride, 1, bias=False),
                    nn.GroupNorm(min(groups, out), out),
                    nn.LeakyReLU(0.2, inplace=True),
                )
            )
            channels = out
        layers.append(nn.Conv2d(channels, 1, 4, 1, 1))
        self.layers = nn.ModuleList(layers)
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        # pix2pix's N(0, 0.02) convs and N(1, 0.02) norm scales
        if isinstance(module, nn.Conv2d):
            nn.init.normal_(module.weight, 0.0, 0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.GroupNorm):
            nn.init.normal_(module.weight, 1.0, 0.02)
            nn.init.zeros_(module.bias)

    def forward(self, faces: torch.Tensor) -> list[torch.Tensor]:
        """faces (B, 3, H, W) → the activations of every layer, the last one the logits
        (B, 1, h, w); the earlier ones are the features of the feature-matching loss."""
        features = []
        x = faces
        for layer in self.layers:
            x = layer(x)
            features.append(x)
        return features
