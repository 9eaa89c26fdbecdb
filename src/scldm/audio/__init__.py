"""Audio: reading files (`files`), the Speech2Face spectrogram front end (`spectrogram`), the
GE2E mel front end (`mel`), the Wen et al. filterbank front end with voice activity detection
(`fbank`), the Wav2Pix raw-waveform front end (`waveform`), and the sim-to-real augmentation of
training audio (`augmentation`: reverberation, noise, gain, telephone band, codecs). Each front end
is a diffusers `ModelMixin` without trainable weights, saved inside every model it feeds so that
inference repeats training's input. Everything is importable from `scldm.audio`."""

# diffusers finds a component's loading method by looking `ModelMixin` up in the module that
# model_index.json names; pipelines saved before `scldm.audio` became a package name this one
from diffusers.models.modeling_utils import ModelMixin  # noqa: F401

from scldm.audio.augmentation import augment
from scldm.audio.fbank import MIN_SPEECH_SECONDS, FbankFrontend, vad_trim
from scldm.audio.files import (
    MIN_SECONDS,
    SAMPLE_RATE,
    AudioInput,
    Voice,
    duration_seconds,
    load_audio,
    loop_to_length,
    random_crop,
    read_voice,
    speech_problem,
    wav_truncation,
    waveform_array,
)
from scldm.audio.mel import MelFrontend, slaney_mel_filters
from scldm.audio.spectrogram import SpectrogramFrontend, waveform_from
from scldm.audio.waveform import WaveformFrontend

__all__ = [
    "MIN_SECONDS",
    "MIN_SPEECH_SECONDS",
    "SAMPLE_RATE",
    "AudioInput",
    "Voice",
    "FbankFrontend",
    "MelFrontend",
    "SpectrogramFrontend",
    "WaveformFrontend",
    "augment",
    "duration_seconds",
    "load_audio",
    "loop_to_length",
    "random_crop",
    "read_voice",
    "slaney_mel_filters",
    "speech_problem",
    "vad_trim",
    "wav_truncation",
    "waveform_array",
    "waveform_from",
]
