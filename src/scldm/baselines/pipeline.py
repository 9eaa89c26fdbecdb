"""What every baseline's pipeline shares: the `method` record saved in model_index.json (name,
title, whether it is deterministic, its deviations from the publication) and the call, SCLDM's
`pipe(audio | [audio], num_images_per_prompt=K, generator=..., output_type=...)`. A subclass
says how voices become faces (`_faces`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from diffusers import DiffusionPipeline

from scldm.audio import AudioInput
from scldm.errors import InputError
from scldm.models.outputs import FaceOutput, check_output_type, to_output


class BaselinePipeline(DiffusionPipeline):
    """A baseline's pipeline. `METHOD` holds the class's defaults of the `method` record (name,
    title, deterministic); the trainer adds its preset, data and deviations."""

    METHOD: ClassVar[dict[str, Any]] = {}

    def _register_method(self, method: Mapping[str, Any] | None) -> None:
        info = {"deterministic": True, "deviations": [], **self.METHOD}
        self.register_to_config(method={**info, **(method or {})})

    @property
    def method(self) -> dict[str, Any]:
        return dict(self.config.method)

    def _faces(
        self,
        audio: list[AudioInput],
        num_images_per_prompt: int,
        generator: torch.Generator | list[torch.Generator] | None,
    ) -> torch.Tensor:
        """(voices × K, 3, H, W) faces in [-1, 1], a voice's K adjacent."""
        raise NotImplementedError

    @torch.no_grad()
    def __call__(
        self,
        audio: AudioInput | Sequence[AudioInput],
        *,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
    ) -> FaceOutput:
        """Faces for voices: `audio` is a path, a 1-D waveform at the front end's sample rate
        or a list of those; B = voices × num_images_per_prompt images, a voice's adjacent. A
        deterministic method accepts `generator`, does not use it and repeats its one face; a
        stochastic one (Wav2Pix) draws each image's randomness from `generator`, best a list of
        B (see `image_generators`). Raises `InputError` (one line) for unreadable audio."""
        check_output_type(output_type)
        if num_images_per_prompt < 1:
            raise InputError(None, "num_images_per_prompt must be ≥ 1")
        items = list(audio) if isinstance(audio, list | tuple) else [audio]
        if not items:
            raise InputError(None, "no audio given")
        return to_output(self._faces(items, num_images_per_prompt, generator), output_type)


def image_generators(
    generator: torch.Generator | Sequence[torch.Generator] | None, num_images: int
) -> list[torch.Generator]:
    """One generator per image, for a method whose images draw random numbers: a list of
    `num_images` is used as given (each image then depends on its own seed only); one generator
    or None (torch's global RNG) gives one seed per image, in order, from that source."""
    if isinstance(generator, list | tuple):
        if len(generator) != num_images:
            raise InputError(None, f"got {len(generator)} generators for {num_images} images")
        return list(generator)
    device = generator.device if generator is not None else torch.device("cpu")
    seeds = torch.randint(0, 2**62, (num_images,), generator=generator, device=device)
    return [torch.Generator(device).manual_seed(int(s)) for s in seeds]


__all__ = ["BaselinePipeline", "image_generators"]
