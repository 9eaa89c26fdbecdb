"""Reading audio: `load_audio` (16 kHz mono float32 from any file soundfile or ffmpeg reads,
only the seconds asked for), the checks every pipeline input passes, looping and cropping.

Resampling uses soxr (libsoxr's "HQ" band-limited polyphase filter, the default of librosa and
of torchaudio's sox backend): it is alias-free to within -100 dB, runs in C at hundreds of times
real time, streams, and has no PyTorch or numba dependency.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch

from scldm.errors import InputError

SAMPLE_RATE = 16_000
SOUNDFILE_SUFFIXES = frozenset({".wav", ".flac", ".ogg", ".oga", ".mp3", ".aiff", ".aif"})
AudioInput = str | os.PathLike | np.ndarray | torch.Tensor  # what a pipeline takes per voice
MIN_SECONDS = 0.1  # shorter audio holds no speech; looping it to 6 s would fabricate an input
# the demuxers ffmpeg may use (audio and video containers), by ffmpeg's names
FFMPEG_FORMATS = ",".join([
    "mov", "mp4", "m4a", "3gp", "3g2", "mj2", "matroska", "webm", "ogg", "mp3", "aac", "flac",
    "wav", "w64", "aiff", "caf", "amr", "asf", "au", "avi", "flv", "mpeg", "mpegts",
])  # fmt: skip


def _check_file(path: Path) -> None:
    if not path.exists():
        raise InputError(path, "no such file")
    if path.is_dir():
        raise InputError(path, "is a directory, not an audio file")
    if path.stat().st_size == 0:
        raise InputError(path, "empty file")


def wav_truncation(path: Path) -> str | None:
    """For a RIFF/WAVE file whose data chunk ends before the size its header declares (a copy
    or download cut short), the problem in words; None for a complete file or another format.
    libsndfile quietly reads what is there (and so does `load_audio`, for data sets);
    `scldm generate` refuses such a file. This reads the chunk headers itself."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        byte_rate = 0
        while True:
            chunk = f.read(8)
            if len(chunk) < 8:
                return None
            name, length = chunk[:4], int.from_bytes(chunk[4:], "little")
            if name == b"fmt ":
                fmt = f.read(length)
                byte_rate = int.from_bytes(fmt[8:12], "little") if len(fmt) >= 12 else 0
                continue
            if name == b"data":
                held = size - f.tell()
                if length in (0, 0xFFFFFFFF) or held >= length or not byte_rate:
                    return None  # complete, or a streamed file that declares no length
                return (
                    f"is truncated: its header declares {length / byte_rate:.2f} s of audio but "
                    f"the file ends after {held / byte_rate:.3f} s"
                )
            f.seek(length + (length & 1), os.SEEK_CUR)  # chunks are padded to even sizes


def speech_problem(wave: np.ndarray, sample_rate: int = SAMPLE_RATE) -> str | None:
    """Why a waveform cannot hold speech, in words, or None: silent (RMS below −60 dBFS), or
    not one voiced frame in 30 (voiced: a 40 ms frame of the pre-emphasised signal whose
    normalised autocorrelation reaches 0.5 at the lag of a 60–400 Hz pitch). White, pink and
    brown noise have none; SynthVox's voices 40–58 % of their frames. A simple check that
    catches digital silence and noise, not a voice activity detector."""
    if not np.any(wave):
        return "is silent: every sample is zero"
    x = wave.astype(np.float64)
    rms_db = 10 * math.log10(float(np.mean(x * x)) + 1e-20)
    if rms_db < -60:
        return f"is silent (level {rms_db:.0f} dBFS)"
    n, hop = int(0.04 * sample_rate), int(0.02 * sample_rate)
    if x.size < n:
        return None  # too short to judge; the length check speaks for it
    x = np.concatenate([x[:1], x[1:] - 0.97 * x[:-1]])
    frames = x[np.arange(0, x.size - n + 1, hop)[:, None] + np.arange(n)]
    frames -= frames.mean(1, keepdims=True)
    ac = np.fft.irfft(np.abs(np.fft.rfft(frames, 2 * n)) ** 2)[:, :n]
    lo, hi = sample_rate // 400, sample_rate // 60
    peak = ac[:, lo : hi + 1].max(1) / np.maximum(ac[:, 0], 1e-12)
    loud = ac[:, 0] > 1e-3 * ac[:, 0].max()
    voiced = float(((peak >= 0.5) & loud).mean())
    if voiced < 1 / 30:
        return f"holds no speech: {voiced:.0%} of its frames are voiced (noise or silence?)"
    return None


def duration_seconds(path: str | Path) -> float | None:
    """The file's length in seconds from its header, None when soundfile cannot tell."""
    try:
        return float(sf.info(str(path)).duration)
    except (sf.LibsndfileError, RuntimeError, TypeError):
        return None


def _read_soundfile(path: Path, max_seconds: float | None) -> tuple[np.ndarray, int]:
    with sf.SoundFile(str(path)) as f:
        sr = f.samplerate
        frames = f.frames if f.frames > 0 else -1
        if max_seconds is not None:
            # a few extra input samples so the resampler's tail is not cut short
            want = math.ceil(max_seconds * sr) + 64
            frames = want if frames < 0 else min(frames, want)
        if f.subtype == "PCM_16":
            # libsndfile converts 16-bit samples to float one at a time; int16 scaled here by
            # 2^-15 are the same floats bitwise, and faster (benchmarks/results/loader_cpu.md)
            data = f.read(frames=frames, dtype="int16", always_2d=True).astype(np.float32)
            data *= np.float32(1 / 32768)
        else:
            data = f.read(frames=frames, dtype="float32", always_2d=True)  # (S, channels)
    return data, sr


def _read_ffmpeg(path: Path, sample_rate: int, max_seconds: float | None) -> np.ndarray:
    if shutil.which("ffmpeg") is None:
        raise InputError(
            path, "needs ffmpeg to decode this format; install it (apt-get install ffmpeg)"
        )
    cmd = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error"]
    # only media containers, from this one local file: a playlist or concat script (an upload
    # named .m4a, say) would otherwise make ffmpeg read other files of the machine
    cmd += ["-protocol_whitelist", "file", "-format_whitelist", FFMPEG_FORMATS, "-i", str(path)]
    if max_seconds is not None:
        cmd += ["-t", f"{max_seconds + 0.01:.3f}"]
    # ffmpeg's swresample is a band-limited windowed-sinc resampler; -ac 1 averages channels
    cmd += ["-vn", "-ac", "1", "-ar", str(sample_rate), "-f", "f32le", "-"]
    proc = subprocess.run(cmd, capture_output=True)
    if proc.returncode != 0:
        msg = proc.stderr.decode(errors="replace").strip().splitlines()
        reason = msg[-1] if msg else f"ffmpeg exit status {proc.returncode}"
        raise InputError(path, f"not a readable audio file ({reason})")
    return np.frombuffer(proc.stdout, dtype="<f4").copy()


def load_audio(
    path: str | Path, *, sample_rate: int = SAMPLE_RATE, max_seconds: float | None = None
) -> np.ndarray:
    """Read an audio file as mono float32 at `sample_rate`: (S,) in about [-1, 1].

    wav/flac/ogg/mp3 go through soundfile, everything else (m4a, mp4, ...) through ffmpeg.
    With `max_seconds`, only that much is read from the start of the file.
    Raises `InputError` naming the file for anything that is not usable audio.
    """
    path = Path(path)
    _check_file(path)
    wave = None
    if path.suffix.lower() in SOUNDFILE_SUFFIXES:
        try:
            data, sr = _read_soundfile(path, max_seconds)
            channels = data.shape[1]
            # mix-down as a matrix-vector product: numpy's mean(axis=1) over a few columns is slow
            wave = (
                data @ np.full(channels, 1 / channels, np.float32) if channels > 1 else data[:, 0]
            )
            if sr != sample_rate and wave.size:
                wave = soxr.resample(wave, sr, sample_rate, quality="HQ")
        except (sf.LibsndfileError, RuntimeError, TypeError):
            wave = None  # not a format libsndfile can read: let ffmpeg try
    if wave is None:
        wave = _read_ffmpeg(path, sample_rate, max_seconds)
    if max_seconds is not None:
        wave = wave[: round(max_seconds * sample_rate)]
    if wave.size == 0:
        raise InputError(path, "contains no audio samples")
    if not np.isfinite(wave).all():
        raise InputError(path, "contains NaN or infinite samples")
    return np.ascontiguousarray(wave, dtype=np.float32)


@dataclass(frozen=True)
class Voice:
    """What a model will hear of an audio file (`read_voice`): `wave`, its first `segment`
    seconds at 16 kHz (not looped), and the file's whole length when its header says it."""

    path: Path
    wave: np.ndarray
    segment: float
    total_seconds: float | None

    @property
    def seconds(self) -> float:
        return self.wave.size / SAMPLE_RATE

    def notice(self) -> str | None:
        """What was done to fit the model's input, when anything was: only the start of a long
        file is used, or a short one is looped (e.g. "0.50 s long; looped 12 times to ..."),
        without the file's name, which the caller puts in front."""
        if self.total_seconds is not None and self.total_seconds > self.segment + 0.5:
            return f"{self.total_seconds:.1f} s long; the model hears its first {self.segment:g} s"
        if self.seconds < self.segment - 0.01:
            return (
                f"{self.seconds:.2f} s long; looped {self.segment / self.seconds:.0f} times to "
                f"fill the model's {self.segment:g} s input"
            )
        return None


def read_voice(path: str | Path, segment: float = 6.0) -> Voice:
    """Read and check what a model will hear of a voice file: its first `segment` seconds.
    `InputError` naming the file when it is unreadable, truncated (a wav whose data ends
    before its header says, found by content, whatever the name), shorter than `MIN_SECONDS`,
    silent or without speech (`speech_problem`). The checks `scldm generate` and the app make
    before any face."""
    path = Path(path)
    _check_file(path)
    if cut := wav_truncation(path):
        raise InputError(path, cut)
    wave = load_audio(path, max_seconds=segment)
    seconds = wave.size / SAMPLE_RATE
    if seconds < MIN_SECONDS:
        raise InputError(path, f"too short ({seconds:.3f} s; at least {MIN_SECONDS} s)")
    if problem := speech_problem(wave):
        raise InputError(path, problem)
    return Voice(path, wave, segment, duration_seconds(path))


def loop_to_length(wave: np.ndarray, num_samples: int) -> np.ndarray:
    """The first `num_samples` of `wave`, repeating it from the start when it is shorter."""
    if wave.shape[-1] == 0:
        raise ValueError("cannot loop an empty waveform")
    reps = -(-num_samples // wave.shape[-1])
    return np.tile(wave, reps)[..., :num_samples] if reps > 1 else wave[..., :num_samples]


def random_crop(
    waveform: torch.Tensor, num_samples: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """(B, S) → (B, num_samples): an independent, uniformly placed window of each row.

    Offsets are drawn on the CPU from `generator`, so a seeded generator gives the same crops
    on every device. `num_samples` ≥ S returns `waveform` unchanged.
    """
    batch, length = waveform.shape
    if num_samples >= length:
        return waveform
    offsets = torch.randint(0, length - num_samples + 1, (batch, 1), generator=generator)
    index = offsets + torch.arange(num_samples)  # (B, num_samples)
    return waveform.gather(1, index.to(waveform.device))


def waveform_array(item: object, sample_rate: int) -> np.ndarray:
    """A pipeline's in-memory input as (S,) float32, or `InputError` (one line) when it is not a
    finite 1-D real waveform of at least `MIN_SECONDS`."""
    if isinstance(item, torch.Tensor):
        item = item.detach().cpu().float().numpy()
    if not isinstance(item, np.ndarray):
        raise InputError(None, f"audio must be a path or a 1-D waveform, got {type(item).__name__}")
    if item.dtype.kind not in "biuf":
        raise InputError(None, f"a waveform must hold real numbers, got dtype {item.dtype}")
    wave = item.astype(np.float32, copy=False)
    if wave.ndim != 1:
        raise InputError(
            None, f"a waveform must be 1-D mono at {sample_rate} Hz, got shape {wave.shape}"
        )
    if wave.size < MIN_SECONDS * sample_rate:
        raise InputError(None, f"waveform too short ({wave.size} samples at {sample_rate} Hz)")
    if not np.isfinite(wave).all():
        raise InputError(None, "waveform contains NaN or infinite samples")
    return wave
