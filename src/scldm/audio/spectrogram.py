"""The Speech2Face spectrogram front end (SCLDM's and Speech2Face's input): the first 6 s
(looped when shorter), STFT (Hann 400, hop 160, n_fft 512, no centring), then the power-law
compression sign(x)·|x|^0.3 of the real and imaginary parts (Speech2Face, Oh et al. 2019, §3)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

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
    waveform_array,
)
from scldm.errors import InputError


class SpectrogramFrontend(ModelMixin, ConfigMixin):
    """Waveform → power-law compressed complex STFT, the Speech2Face input.

    (B, S) float waveforms → (B, 2, F, T) with F = n_fft // 2 + 1 and
    T = 1 + (S - win_length) // hop_length; (2, 257, 598) for 6 s at 16 kHz with the defaults.
    Frames are win_length samples long, windowed, and zero-padded to n_fft for the FFT, as in
    the `tf.signal.stft(frame_length=400, frame_step=160, fft_length=512)` Speech2Face used.
    Has no trainable weights; it is saved with every model so inference repeats training's input.
    """

    @register_to_config
    def __init__(
        self,
        *,
        sample_rate: int = SAMPLE_RATE,
        n_fft: int = 512,
        win_length: int = 400,
        hop_length: int = 160,
        segment_seconds: float = 6.0,
        power: float = 0.3,
    ) -> None:
        super().__init__()
        if win_length > n_fft:
            raise ValueError(f"win_length {win_length} > n_fft {n_fft}")
        # persistent, so save_pretrained writes a weights file and from_pretrained finds one
        self.register_buffer("window", torch.hann_window(win_length))

    @property
    def segment_samples(self) -> int:
        return round(self.config.segment_seconds * self.config.sample_rate)

    @property
    def num_frames(self) -> int:
        return 1 + (self.segment_samples - self.config.win_length) // self.config.hop_length

    def prepare(self, wave: np.ndarray, source: str | os.PathLike | None = None) -> torch.Tensor:
        """(S,) float at the front end's rate → its first `segment_seconds`, looped when
        shorter: (segment_samples,) float32."""
        cfg = self.config
        if wave.size < MIN_SECONDS * cfg.sample_rate:
            raise InputError(
                source, f"too short ({wave.size / cfg.sample_rate:.3f} s; at least {MIN_SECONDS} s)"
            )
        wave = np.ascontiguousarray(wave, dtype=np.float32)
        return torch.from_numpy(loop_to_length(wave, self.segment_samples))

    def load(self, path: str | Path) -> torch.Tensor:
        """Read a file and return its first `segment_seconds`, looped when shorter: (S,)."""
        cfg = self.config
        wave = load_audio(path, sample_rate=cfg.sample_rate, max_seconds=cfg.segment_seconds)
        return self.prepare(wave, path)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """waveform: (B, S) or (S,) → (B, 2, F, T) compressed real/imaginary STFT."""
        cfg = self.config
        if waveform.dim() == 1:
            waveform = waveform[None]
        if waveform.shape[-1] < cfg.win_length:
            raise ValueError(f"waveform of {waveform.shape[-1]} samples is shorter than a frame")
        # torch.stft centres the window in each n_fft frame; padding by half the difference on
        # both sides makes frame k window exactly samples [k·hop, k·hop + win_length)
        half = (cfg.n_fft - cfg.win_length) // 2
        pad = (half, cfg.n_fft - cfg.win_length - half)
        stft = torch.stft(
            torch.nn.functional.pad(waveform.float(), pad),
            n_fft=cfg.n_fft,
            hop_length=cfg.hop_length,
            win_length=cfg.win_length,
            window=self.window.to(waveform.device),
            center=False,
            return_complex=True,
        )  # (B, F, T) complex
        parts = torch.view_as_real(stft)  # (B, F, T, 2)
        # sign(x)·|x|^p as exp(p·log|x|) in place: torch's pow with a float exponent is scalar
        # code on CPU (≈8 ns/value) while log/exp are vectorised; log 0 = -inf gives exp → 0
        compressed = parts.abs().log_().mul_(cfg.power).exp_().copysign_(parts)
        return compressed.permute(0, 3, 1, 2)  # (B, 2, F, T)


def waveform_from(item: AudioInput, frontend: Any) -> torch.Tensor:
    """One pipeline input → (S,) float32, the front end's segment: a path (read with
    `frontend.load`) or a 1-D waveform (numpy or tensor) at the front end's sample rate (through
    `frontend.prepare`). Any front end with both (`SpectrogramFrontend`, `MelFrontend`). Raises
    `InputError` for unreadable files and malformed waveforms."""
    if isinstance(item, str | os.PathLike):
        return frontend.load(item)
    return frontend.prepare(waveform_array(item, frontend.config.sample_rate))
