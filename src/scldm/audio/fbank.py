"""The Wen et al. (NeurIPS 2019) front end: silence removed by WebRTC VAD (`vad_trim`, mode 2,
20 ms frames, as their `rm_sil`), then 64 log mel filterbank energies (20-7200 Hz, Hamming 25 ms,
hop 10 ms, n_fft 1024, per-frame pre-emphasis 0.97; their Sphinx-derived `mfcc.py`), each filter
normalised to zero mean and unit variance over the utterance. Source: the official code,
cmu-mlsp/reconstructing_faces_from_voices @ 469e249."""

from __future__ import annotations

import collections
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
    waveform_array,
)
from scldm.errors import InputError

VAD_SAMPLE_RATES = (8000, 16000, 32000, 48000)  # what WebRTC VAD accepts
VAD_FRAME_MS = (10, 20, 30)
# webrtcvad calls the first ≈0.1 s of any signal speech while its noise model settles, so the
# collector keeps 0.12-0.14 s of a file of pure noise; less than this after VAD is no speech
MIN_SPEECH_SECONDS = 0.25


def check_vad_settings(vad_mode: int | None, sample_rate: int) -> None:
    """A front end's VAD settings: mode None (off) or 0-3 at a rate webrtcvad runs at."""
    if vad_mode not in (None, 0, 1, 2, 3):
        raise ValueError(f"vad_mode must be None or 0-3, got {vad_mode}")
    if vad_mode is not None and sample_rate not in VAD_SAMPLE_RATES:
        raise ValueError(f"webrtcvad cannot run at {sample_rate} Hz; use vad_mode=None")


def vad_trim(
    wave: np.ndarray,
    sample_rate: int = SAMPLE_RATE,
    *,
    mode: int = 2,
    frame_ms: int = 20,
    padding_ms: int = 50,
) -> np.ndarray:
    """Remove silence with WebRTC VAD: (S,) float in [-1, 1] → (S',) float32, the kept samples.

    The `vad_collector` of py-webrtcvad's example, which Wen et al.'s `rm_sil` uses: whole frames
    of `frame_ms` (the last, partial or not, is dropped), a ring buffer of
    padding_ms // frame_ms frames; a segment starts when more than 90% of the buffer is speech
    (and keeps those buffered frames) and ends, after the frame that ends it, when more than 90%
    is not. All segments are concatenated; empty when nothing is speech.
    """
    import webrtcvad

    if np.ndim(wave) != 1:
        raise InputError(None, f"vad_trim needs a 1-D waveform, got shape {np.shape(wave)}")
    if sample_rate not in VAD_SAMPLE_RATES or frame_ms not in VAD_FRAME_MS:
        raise InputError(
            None,
            f"webrtcvad needs a sample rate in {VAD_SAMPLE_RATES} and frames of {VAD_FRAME_MS} ms, "
            f"got {sample_rate} Hz and {frame_ms} ms",
        )
    if mode not in (0, 1, 2, 3) or padding_ms < frame_ms:
        raise InputError(
            None, f"vad mode must be 0-3 and padding_ms ≥ frame_ms, got {mode} and {padding_ms}"
        )
    frame = sample_rate * frame_ms // 1000
    # int16 PCM as webrtcvad reads it; load_audio gives q / 32768 for 16-bit files, so this is q
    pcm = np.clip(np.round(np.asarray(wave, np.float64) * 32768), -32768, 32767).astype("<i2")
    num_frames = max(0, (pcm.size - 1) // frame)  # the example stops when offset + n ≥ length
    vad = webrtcvad.Vad(mode)
    voiced = [
        vad.is_speech(pcm[i * frame : (i + 1) * frame].tobytes(), sample_rate)
        for i in range(num_frames)
    ]
    size = padding_ms // frame_ms
    keep = np.zeros(num_frames, bool)
    ring: collections.deque[int] = collections.deque(maxlen=size)
    triggered = False
    for i in range(num_frames):  # the collector's state machine, on frame indices
        ring.append(i)
        if not triggered:
            if sum(voiced[j] for j in ring) > 0.9 * size:
                keep[list(ring)] = True  # a segment starts with the buffered frames
                triggered = True
                ring.clear()
        else:
            keep[i] = True
            if sum(not voiced[j] for j in ring) > 0.9 * size:
                triggered = False  # and ends with this frame
                ring.clear()
    frames = np.asarray(wave, np.float32)[: num_frames * frame].reshape(num_frames, frame)
    return frames[keep].reshape(-1)


def _mel(hz: np.ndarray) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + hz / 700.0)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def _sphinx_mel_filters(
    sample_rate: int, n_fft: int, num_filters: int, low_hz: float, high_hz: float
) -> np.ndarray:
    """(n_fft // 2 + 1, num_filters) float64 triangles of CMU Sphinx's `mfcc.py`.

    Edges equally spaced in mel, each rounded to a DFT bin; filter j rises from its left edge
    bin l (value 0) to height 2 / width at its centre bin c and falls to 0 at its right edge r,
    width = (r - l) bins in Hz. When c == l the filter has no peak bin, only the falling side.
    """
    if high_hz > sample_rate / 2:
        raise ValueError(f"high_hz {high_hz} exceeds the Nyquist frequency {sample_rate / 2}")
    if not 0 <= low_hz < high_hz:
        raise ValueError(f"need 0 ≤ low_hz < high_hz, got {low_hz} and {high_hz}")
    dfreq = sample_rate / n_fft
    low, high = _mel(np.float64(low_hz)), _mel(np.float64(high_hz))
    edges = _mel_to_hz(low + (high - low) / (num_filters + 1) * np.arange(num_filters + 2.0))
    edge_bins = np.rint(edges / dfreq).astype(np.int64)  # round half to even, as Python's round
    left, centre, right = edge_bins[:-2], edge_bins[1:-1], edge_bins[2:]  # (F,) each
    if (right == left).any():
        raise ValueError(f"{num_filters} filters are too many for n_fft {n_fft}: some are empty")
    height = 2.0 / ((right - left) * dfreq)
    f = np.arange(n_fft // 2 + 1)[:, None]  # (K, 1) DFT bins
    with np.errstate(divide="ignore", invalid="ignore"):  # slopes of empty sides are unused
        rising = (f - left) * (height / (centre - left))
        falling = (f - right) * (height / (centre - right))
    filters = np.where((f > left) & (f < centre), rising, 0.0)
    filters = np.where((f == centre) & (centre != left), height, filters)
    return np.where((f > centre) & (f < right), falling, filters)  # (K, F)


class FbankFrontend(ModelMixin, ConfigMixin):
    """Waveform → normalised log mel filterbank energies, the input of Wen et al. (2019).

    (B, S) float waveforms → (B, num_filters, T) float32, T = S // hop_length + 1, computed as
    the official `MFCC.sig2logspec` + `get_fbank` do in float64: samples on the int16 scale;
    frame k is samples [k·hop, k·hop + win), a frame running past the end being its remaining
    samples repeated to win samples (`numpy.resize`; all zeros when none remain); pre-emphasis
    y[i] = x[i] - α·x[i-1] within the frame with x[-1] the last sample of the previous frame;
    Hamming window; |rfft(n_fft)|²; mel filters; log(max(·, 1e-5)); float32; then each filter
    normalised over time, (x - mean) / (std + eps). The one difference: the official object
    carries the pre-emphasis sample across files, here every utterance starts from 0.

    `load` (training) and `utterance` (inference) remove silence with `vad_trim` first. The
    official tiles short features to 1,000 frames; here short speech is looped as a waveform to
    `segment_seconds` instead. Buffers only; saved with the model it feeds.
    """

    @register_to_config
    def __init__(
        self,
        *,
        sample_rate: int = SAMPLE_RATE,
        num_filters: int = 64,
        low_hz: float = 20.0,
        high_hz: float = 7200.0,
        n_fft: int = 1024,
        win_length: int = 400,
        hop_length: int = 160,
        preemphasis: float = 0.97,
        vad_mode: int | None = 2,
        segment_seconds: float = 10.0,
        max_seconds: float | None = None,
    ) -> None:
        super().__init__()
        if win_length > n_fft:
            raise ValueError(f"win_length {win_length} > n_fft {n_fft}")
        check_vad_settings(vad_mode, sample_rate)
        filters = _sphinx_mel_filters(sample_rate, n_fft, num_filters, low_hz, high_hz)
        # persistent, so save_pretrained writes a weights file and from_pretrained finds one
        self.register_buffer("window", torch.hamming_window(win_length, False, dtype=torch.float64))
        self.register_buffer("filters", torch.from_numpy(filters))  # (n_fft // 2 + 1, F)

    @property
    def segment_samples(self) -> int:
        return round(self.config.segment_seconds * self.config.sample_rate)

    @property
    def num_frames(self) -> int:
        """Frames of one training item (1,001 for 10 s)."""
        return self.segment_samples // self.config.hop_length + 1

    def _speech(self, wave: np.ndarray, source: str | os.PathLike | None) -> np.ndarray:
        cfg = self.config
        if cfg.vad_mode is not None:
            wave = vad_trim(wave, cfg.sample_rate, mode=cfg.vad_mode)
            if wave.size == 0:
                raise InputError(
                    source, f"no speech found (webrtcvad mode {cfg.vad_mode} kept nothing)"
                )
            seconds = wave.size / cfg.sample_rate
            if seconds < MIN_SPEECH_SECONDS:
                raise InputError(
                    source,
                    f"too little speech ({seconds:.3f} s after silence removal; "
                    f"at least {MIN_SPEECH_SECONDS} s)",
                )
        elif wave.size < MIN_SECONDS * cfg.sample_rate:
            seconds = wave.size / cfg.sample_rate
            raise InputError(source, f"too short ({seconds:.3f} s; at least {MIN_SECONDS} s)")
        return wave

    def load(self, path: str | Path) -> torch.Tensor:
        """A training item: the speech in the first `segment_seconds` of a file, looped to
        exactly `segment_samples`: (S,) float32."""
        cfg = self.config
        wave = load_audio(path, sample_rate=cfg.sample_rate, max_seconds=cfg.segment_seconds)
        speech = self._speech(wave, path)
        return torch.from_numpy(loop_to_length(speech, self.segment_samples))

    def utterance(self, item: AudioInput) -> torch.Tensor:
        """An inference input: the speech in a file (its first `max_seconds` when set) or in a
        1-D waveform at the front end's sample rate, looped to at least `segment_samples`:
        (S,) float32. Longer speech stays whole. Raises `InputError` (one line) for bad input."""
        cfg = self.config
        if isinstance(item, str | os.PathLike):
            wave = load_audio(item, sample_rate=cfg.sample_rate, max_seconds=cfg.max_seconds)
            source = item
        else:
            wave = waveform_array(item, cfg.sample_rate)
            if cfg.max_seconds is not None:
                wave = wave[: round(cfg.max_seconds * cfg.sample_rate)]
            source = None
        speech = self._speech(wave, source)
        return torch.from_numpy(loop_to_length(speech, max(speech.size, self.segment_samples)))

    def log_mel(self, waveform: torch.Tensor) -> torch.Tensor:
        """waveform: (B, S) or (S,) in [-1, 1] → (B, F, T) float64 log filterbank energies,
        before the normalisation."""
        cfg = self.config
        if waveform.dim() == 1:
            waveform = waveform[None]
        length, device = waveform.shape[-1], waveform.device
        if length < cfg.win_length:
            raise ValueError(f"waveform of {length} samples is shorter than a frame")
        samples = waveform.to(torch.float64) * 32768  # (B, S), the int16 scale of the official
        win, hop, batch = cfg.win_length, cfg.hop_length, waveform.shape[0]
        num_frames = length // hop + 1  # the official's int(S / hop + 1)
        full = (length - win) // hop + 1  # frames that lie inside the signal: a view, no copy
        frames = samples.unfold(-1, win, hop)  # (B, full, win)
        # the last few frames run past the end: numpy.resize repeats a short frame's samples
        # cyclically, and an empty one is zeros
        start = torch.arange(full, num_frames, device=device) * hop
        remaining = (length - start).clamp(max=win)
        offset = torch.arange(win, device=device) % remaining.clamp(min=1)[:, None]
        index = (start[:, None] + offset).clamp(max=length - 1)
        tail = samples[:, index].masked_fill((remaining == 0)[:, None], 0.0)  # (B, T - full, win)
        # into one zero-padded FFT buffer: pre-emphasis within each frame, where the sample
        # before the first is the last one of the previous frame (Wen et al.'s variant of
        # Sphinx's) and 0 for the first frame; then the window
        buffer = samples.new_empty(batch, num_frames, cfg.n_fft)
        buffer[..., win:] = 0.0
        for part, rows in ((frames, slice(0, full)), (tail, slice(full, num_frames))):
            body = buffer[:, rows, 1:win]
            torch.sub(part[..., 1:], part[..., :-1], alpha=cfg.preemphasis, out=body)
            buffer[:, rows, 0] = part[..., 0]
        last = torch.cat([frames[:, :, -1], tail[:, :, -1]], 1)  # (B, T): each frame's last
        buffer[:, 1:, 0] -= cfg.preemphasis * last[:, :-1]
        buffer[..., :win] *= self.window.to(device, torch.float64)
        spectrum = torch.view_as_real(torch.fft.rfft(buffer))  # (B, T, K, 2)
        real, imag = spectrum.unbind(-1)
        power = (real * real).addcmul_(imag, imag)  # (B, T, K)
        energies = power @ self.filters.to(device, torch.float64)  # (B, T, F)
        return energies.clamp(min=1e-5).log().transpose(1, 2)  # (B, F, T)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """waveform: (B, S) or (S,) in [-1, 1] → (B, F, T) float32, each filter normalised to
        zero mean and unit (population) variance over time as in the official `get_fbank`."""
        fbank = self.log_mel(waveform).float()  # the official normalises float32 features
        # the exact statistics rounded to float32; the official's numpy mean adds the frames one
        # by one in float32, which puts its output ≈1e-5 off these (a rounding, not a method)
        mean = fbank.double().mean(-1, keepdim=True).float()
        centred = fbank - mean
        std = centred.double().std(-1, correction=0, keepdim=True).float()
        return centred / (std + torch.finfo(torch.float32).eps)
