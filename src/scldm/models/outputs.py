"""What every voice → face pipeline returns (SCLDM's and each baseline's): `FaceOutput`, and
`to_output`, which turns a batch of faces in [-1, 1] into it. It lives below `diffusion` and
`baselines`, which are siblings and share it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
from diffusers.utils import BaseOutput

from scldm.errors import InputError

OUTPUT_TYPES = ("pil", "pt", "np")


@dataclass
class FaceOutput(BaseOutput):
    """images: a list of B PIL images, a (B, 3, H, W) tensor in [0, 1] ("pt") or a
    (B, H, W, 3) float32 array in [0, 1] ("np"); B = number of voices × num_images_per_prompt,
    the images of one voice adjacent."""

    images: list[PIL.Image.Image] | torch.Tensor | np.ndarray


def check_output_type(output_type: str) -> None:
    if output_type not in OUTPUT_TYPES:
        raise InputError(None, f"output_type must be pil, pt or np, got {output_type!r}")


def to_output(faces: torch.Tensor, output_type: str) -> FaceOutput:
    """(B, 3, H, W) faces in [-1, 1] → `FaceOutput` of `output_type` (pil, pt or np)."""
    check_output_type(output_type)
    images = (faces.float() / 2 + 0.5).clamp(0, 1)
    if output_type == "pt":
        return FaceOutput(images=images)
    array = images.permute(0, 2, 3, 1).cpu().numpy()  # (B, H, W, 3)
    if output_type == "np":
        return FaceOutput(images=array)
    return FaceOutput(
        images=[PIL.Image.fromarray((a * 255).round().astype(np.uint8)) for a in array]
    )
