"""The GE2E front end (Resemblyzer's, the input of its pretrained voice encoder): 16 kHz mono,
long silences removed by WebRTC VAD, the level raised to -30 dBFS when quieter, then 40 mel
filterbank powers (Slaney mel scale and area normalisation, as librosa's defaults) of a centred
STFT with a periodic Hann window of 25 ms, hop 10 ms, n_fft 400; power, not log.

Source: resemblyzer 0.1.4 (`audio.py`, `hparams.py`), the GE2E encoder of Wan et al.,
"Generalized End-to-End Loss for Speaker Verification", ICASSP 2018.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

from scldm.audio.fbank import MIN_SPEECH_SECONDS, check_vad_settings, vad_trim
from scldm.audio.files import MIN_SECONDS, SAMPLE_RATE, load_audio, loop_to_length
from scldm.errors import InputError


def slaney_mel_filters(
    sample_rate: int, n_fft: int, num_mels: int, low_hz: float = 0.0, high_hz: float | None = None
) -> np.ndarray:
    """(num_mels, n_fft // 2 + 1) triangular filters, equally spaced on the Slaney mel scale
    (linear below 1 kHz, logarithmic above) and scaled to unit area: librosa.filters.mel's
    defaults (htk=False, norm="slaney"), which Resemblyzer trained with."""
    high_hz = sample_rate / 2 if high_hz is None else high_hz

    def to_mel(hz: np.ndarray) -> np.ndarray:
        hz = np.asarray(hz, dtype=np.float64)
        log_part = 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
        return np.where(hz >= 1000.0, log_part, hz * 3.0 / 200.0)

    def to_hz(mel: np.ndarray) -> np.ndarray:
        return np.where(
            mel >= 15.0, 1000.0 * np.exp(np.log(6.4) / 27.0 * (mel - 15.0)), mel * 200.0 / 3.0
        )

    edges = to_hz(np.linspace(to_mel(low_hz), to_mel(high_hz), num_mels + 2))  # (M + 2,)
    bins = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)  # (K,)
    rising = (bins[None] - edges[:-2, None]) / np.diff(edges)[:-1, None]  # (M, K)
    falling = (edges[2:, None] - bins[None]) / np.diff(edges)[1:, None]
    filters = np.maximum(0.0, np.minimum(rising, falling))
    return filters * (2.0 / (edges[2:] - edges[:-2]))[:, None]


class MelFrontend(ModelMixin, ConfigMixin):
    """Waveform → mel filterbank powers, the input of the GE2E voice encoder.

    (B, S) float waveforms in [-1, 1] → (B, num_mels, T) float32 with T = 1 + S // hop_length
    (601 frames for 6 s). Each waveform is first scaled up to `target_dbfs` RMS when quieter
    (never down: Resemblyzer's `normalize_volume(increase_only=True)`); None skips it.

    `load` (training and files) and `prepare` (waveforms given in memory) keep the speech:
    WebRTC VAD (`vad_mode`, None: off) removes the silences, then the first `segment_seconds`
    of speech are kept, looped when shorter, as every front end here does. A clip in which VAD
    finds too little speech keeps its audio untrimmed (whether it holds speech at all is the
    input checks' call, `scldm.audio.read_voice`). Buffers only; saved with the model it feeds.
    """

    @register_to_config
    def __init__(
        self,
        *,
        sample_rate: int = SAMPLE_RATE,
        n_fft: int = 400,
        win_length: int = 400,
        hop_length: int = 160,
        num_mels: int = 40,
        target_dbfs: float | None = -30.0,
        vad_mode: int | None = 3,
        segment_seconds: float = 6.0,
    ) -> None:
        super().__init__()
        if win_length > n_fft:
            raise ValueError(f"win_length {win_length} > n_fft {n_fft}")
        check_vad_settings(vad_mode, sample_rate)
        filters = slaney_mel_filters(sample_rate, n_fft, num_mels)
        # persistent, so save_pretrained writes a weights file and from_pretrained finds one
        self.register_buffer("window", torch.hann_window(win_length))  # periodic, as scipy's
        self.register_buffer("filters", torch.from_numpy(filters).float())  # (M, K)

    @property
    def segment_samples(self) -> int:
        return round(self.config.segment_seconds * self.config.sample_rate)

    @property
    def num_frames(self) -> int:
        """Frames of one segment (601 for 6 s)."""
        return 1 + self.segment_samples // self.config.hop_length

    def prepare(self, wave: np.ndarray, source: str | os.PathLike | None = None) -> torch.Tensor:
        """(S,) float at the front end's rate → its speech, cut or looped to exactly
        `segment_samples`: (segment_samples,) float32."""
        cfg = self.config
        if wave.size < MIN_SECONDS * cfg.sample_rate:
            seconds = wave.size / cfg.sample_rate
            raise InputError(source, f"too short ({seconds:.3f} s; at least {MIN_SECONDS} s)")
        if cfg.vad_mode is not None:
            speech = vad_trim(wave, cfg.sample_rate, mode=cfg.vad_mode)
            if speech.size >= MIN_SPEECH_SECONDS * cfg.sample_rate:
                wave = speech
        wave = np.ascontiguousarray(wave, dtype=np.float32)
        return torch.from_numpy(loop_to_length(wave, self.segment_samples))

    def load(self, path: str | Path) -> torch.Tensor:
        """A file's first `segment_seconds` of speech (from its first 2 × segment_seconds of
        audio), looped when shorter: (segment_samples,) float32."""
        cfg = self.config
        seconds = 2 * cfg.segment_seconds if cfg.vad_mode is not None else cfg.segment_seconds
        wave = load_audio(path, sample_rate=cfg.sample_rate, max_seconds=seconds)
        return self.prepare(wave, path)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """waveform: (B, S) or (S,) → (B, num_mels, T) mel powers."""
        cfg = self.config
        if waveform.dim() == 1:
            waveform = waveform[None]
        if waveform.shape[-1] < cfg.win_length:
            raise ValueError(f"waveform of {waveform.shape[-1]} samples is shorter than a frame")
        waveform = waveform.float()
        if cfg.target_dbfs is not None:  # dBFS = 20·log10(RMS) of the [-1, 1] samples
            rms = waveform.square().mean(-1, keepdim=True).sqrt().clamp(min=1e-5)  # (B, 1)
            change = 10 ** (cfg.target_dbfs / 20) / rms
            waveform = waveform * change.clamp(min=1.0)
        # librosa's centred frames with zero padding; a window shorter than n_fft is centred
        stft = torch.stft(
            waveform,
            n_fft=cfg.n_fft,
            hop_length=cfg.hop_length,
            win_length=cfg.win_length,
            window=self.window.to(waveform.device),
            center=True,
            pad_mode="constant",
            return_complex=True,
        )  # (B, K, T)
        power = torch.view_as_real(stft).square().sum(-1)  # |X|², (B, K, T)
        return self.filters.to(waveform.device) @ power  # (B, M, T)
