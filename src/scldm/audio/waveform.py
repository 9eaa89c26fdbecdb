"""The Wav2Pix (Duarte et al., ICASSP 2019) front end: one second of the raw 16 kHz waveform,
divided by its largest absolute sample, then pre-emphasised with 0.95 (the official
`dataset_builder.py`, imatge-upc/wav2pix @ d801b41). Training reads a random window of each
clip (their `augmentate_data.py` cuts random one-second windows offline); inference reads the
centre window (their `cut_audio`)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

from scldm.audio.files import (
    MIN_SECONDS,
    SAMPLE_RATE,
    AudioInput,
    load_audio,
    loop_to_length,
    random_crop,
    waveform_array,
)
from scldm.errors import InputError


class WaveformFrontend(ModelMixin, ConfigMixin):
    """Raw waveform windows → the Wav2Pix input: (B, S) → (B, S), each row divided by its
    largest absolute sample (an all-zero window stays zero), then y[0] = x[0],
    y[i] = x[i] − 0.95·x[i−1].

    `load` gives a training item (the first `segment_seconds` of a file, looped when shorter),
    `crops` a step's random windows of `seconds` from those items, `utterance` the centre window
    of an inference input. Short audio is looped (the official code refuses it); audio whose
    samples are all zero is refused in one line. No weights; saved with the model it feeds.
    """

    @register_to_config
    def __init__(
        self,
        *,
        sample_rate: int = SAMPLE_RATE,
        seconds: float = 1.0,
        segment_seconds: float = 6.0,
        preemphasis: float = 0.95,
    ) -> None:
        super().__init__()
        if not 0 < seconds <= segment_seconds:
            raise ValueError(
                f"need 0 < seconds ≤ segment_seconds, got {seconds}, {segment_seconds}"
            )
        # a persistent buffer, so save_pretrained writes a weights file and from_pretrained
        # finds one (diffusers also reads a module's device from its tensors)
        self.register_buffer("coefficient", torch.tensor(preemphasis, dtype=torch.float32))

    @property
    def num_samples(self) -> int:
        """Samples of one network input (16,000 for 1 s)."""
        return round(self.config.seconds * self.config.sample_rate)

    @property
    def segment_samples(self) -> int:
        """Samples of one training item, from which each step cuts its windows."""
        return round(self.config.segment_seconds * self.config.sample_rate)

    def _checked(self, wave: np.ndarray, source: str | os.PathLike | None) -> np.ndarray:
        rate = self.config.sample_rate
        if wave.size < MIN_SECONDS * rate:
            seconds = wave.size / rate
            raise InputError(source, f"too short ({seconds:.3f} s; at least {MIN_SECONDS} s)")
        if not np.any(wave):
            raise InputError(source, "is silent: every sample is zero")
        return wave

    def load(self, path: str | Path) -> torch.Tensor:
        """A training item: the first `segment_seconds` of a file, looped when shorter: (S,)."""
        cfg = self.config
        wave = load_audio(path, sample_rate=cfg.sample_rate, max_seconds=cfg.segment_seconds)
        return torch.from_numpy(loop_to_length(self._checked(wave, path), self.segment_samples))

    def utterance(self, item: AudioInput) -> torch.Tensor:
        """An inference input: the centre `seconds` of a file or of a 1-D waveform at the front
        end's sample rate, looped first when shorter: (num_samples,) float32. Raises
        `InputError` (one line) for unreadable, too short or all-zero audio."""
        if isinstance(item, str | os.PathLike):
            wave, source = load_audio(item, sample_rate=self.config.sample_rate), item
        else:
            wave, source = waveform_array(item, self.config.sample_rate), None
        wave = loop_to_length(self._checked(wave, source), max(wave.size, self.num_samples))
        return self.centre(torch.from_numpy(wave)).contiguous()

    def centre(self, waveform: torch.Tensor) -> torch.Tensor:
        """(..., S) with S ≥ num_samples → (..., num_samples): the centre window (the
        official `cut_audio`), for inference and validation alike."""
        start = (waveform.shape[-1] - self.num_samples) // 2
        return waveform[..., start : start + self.num_samples]

    def crops(self, waveform: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """(B, S) training items → (B, num_samples): an independent random window of each row,
        placed by `generator` (drawn on the CPU)."""
        return random_crop(waveform, self.num_samples, generator)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """(B, S) or (S,) → (B, S) float32: abs-max normalised, then pre-emphasised."""
        if waveform.dim() == 1:
            waveform = waveform[None]
        x = waveform.float()
        peak = x.abs().amax(-1, keepdim=True)
        x = x / torch.where(peak > 0, peak, torch.ones_like(peak))
        coef = self.coefficient.to(x.device)
        return torch.cat([x[:, :1], x[:, 1:] - coef * x[:, :-1]], dim=-1)


__all__ = ["WaveformFrontend"]
