"""The denoiser of SCLDM stage 2: diffusers' `UNet2DConditionModel` (ResNet blocks,
self-attention, cross-attention to the speech tokens; paper eq. 5), built from size presets.

Reference: Rombach et al., "High-Resolution Image Synthesis with Latent Diffusion Models",
CVPR 2022 (the conditional UNet); diffusers' `UNet2DConditionModel`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from diffusers import UNet2DConditionModel

from scldm.errors import InputError

# `cross_attention_dim` is the `token_dim` of the same-named SPEECH_ENCODER_PRESETS entry and
# `sample_size`, `in_channels` and `out_channels` the latent shape of the same-named face presets
# (stage 2 fills them in from the stage-1 latents). diffusers' `attention_head_dim` is, for this
# class, the number of heads per block (diffusers #2011).
UNET_PRESETS: dict[str, dict[str, Any]] = {
    # unit tests: 32 px faces → latents 4 × 8 × 8; about 0.2M parameters
    "tiny": {
        "sample_size": 8,
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": (16, 32),
        "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
        "layers_per_block": 1,
        "norm_num_groups": 8,
        "cross_attention_dim": 16,
        "attention_head_dim": 2,
    },
    # SynthVox on a CPU: 64 px faces → latents 4 × 8 × 8, attention at 8 × 8 and 4 × 4; 1.1M
    # parameters, sized so stage 2 trains in minutes on 2 cores (benchmarks/stage2_train.py)
    "small": {
        "sample_size": 8,
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": (32, 64),
        "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        "layers_per_block": 1,
        "norm_num_groups": 16,
        "cross_attention_dim": 128,
        "attention_head_dim": 2,
    },
    # 224 px faces → latents 4 × 28 × 28 (28 → 14 → 7); LDM/Stable Diffusion widths without
    # SD's fourth 1280 level, which would take 7 × 7 to an odd 4 × 4; 443M (SD 1.x: 860M)
    "base": {
        "sample_size": 28,
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": (320, 640, 1280),
        "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        "layers_per_block": 2,
        "norm_num_groups": 32,
        "cross_attention_dim": 512,
        "attention_head_dim": 8,
    },
}
# `small` for the small_h4 face presets' latents 4 × 16 × 16: a ResNet level at 16 × 16 before
# small's attention levels at 8 × 8 and 4 × 4; 1.7M parameters (its speed:
# benchmarks/results/stage2_train_cpu.md); the `small` config's UNet since 2026-12-01
UNET_PRESETS["small_h4"] = {
    **UNET_PRESETS["small"],
    "sample_size": 16,
    "block_out_channels": (32, 64, 64),
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
}


def build_unet(mapping: Mapping[str, Any]) -> UNet2DConditionModel:
    """A `UNet2DConditionModel` from `{"preset": NAME, **overrides}` or plain diffusers kwargs.

    The overrides are `UNet2DConditionModel` keyword arguments and replace the preset's values,
    e.g. `{"preset": "small", "cross_attention_dim": 64}`. Input and output of the model:
    latents (B, C, h, w) with h = w = `sample_size`, tokens (B, N, `cross_attention_dim`).
    """
    kwargs = dict(mapping)
    name = kwargs.pop("preset", None)
    if name is not None:
        if name not in UNET_PRESETS:
            known = ", ".join(sorted(UNET_PRESETS))
            raise InputError(None, f"unknown unet preset {name!r}; known: {known}")
        kwargs = {**UNET_PRESETS[name], **kwargs}
    # YAML gives lists; diffusers' config.json round-trip is cleaner with tuples
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    return UNet2DConditionModel(**kwargs)
