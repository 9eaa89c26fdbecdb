"""Randomly initialised tiny baseline pipelines for tests (32 px faces, under 2 s of audio)."""

from __future__ import annotations

import torch


def tiny_speech2face_pipeline(seed: int = 0):
    """A `Speech2FacePipeline` of seeded random tiny networks: fast, deterministic, untrained."""
    from scldm.audio import SpectrogramFrontend
    from scldm.baselines.speech2face import (
        FACE_DECODER_PRESETS,
        VOICE_ENCODER_PRESETS,
        ColeDecoder,
        Speech2FacePipeline,
        VoiceEncoder,
    )

    torch.manual_seed(seed)
    frontend = SpectrogramFrontend(n_fft=128, win_length=128, hop_length=64, segment_seconds=0.5)
    pipe = Speech2FacePipeline(
        frontend=frontend,
        voice_encoder=VoiceEncoder(**VOICE_ENCODER_PRESETS["tiny"]).eval(),
        face_decoder=ColeDecoder(**FACE_DECODER_PRESETS["tiny"]).eval(),
        method={"deviations": ["untrained test fixture"]},
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_wen_pipeline(seed: int = 0):
    """A `WenPipeline` of seeded random tiny networks (16 filters, 32 px): untrained."""
    from scldm.audio import FbankFrontend
    from scldm.baselines.wen import (
        GENERATOR_PRESETS,
        VOICE_ENCODER_PRESETS,
        WenGenerator,
        WenPipeline,
        WenVoiceEncoder,
    )

    torch.manual_seed(seed)
    pipe = WenPipeline(
        frontend=FbankFrontend(num_filters=16, segment_seconds=2.0, max_seconds=2.0),
        voice_encoder=WenVoiceEncoder(**VOICE_ENCODER_PRESETS["tiny"]).eval(),
        generator=WenGenerator(**GENERATOR_PRESETS["tiny"]).eval(),
        method={"deviations": ["untrained test fixture"]},
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_wav2pix_pipeline(seed: int = 0, dropout_at_inference: bool = True):
    """A `Wav2PixPipeline` of seeded random tiny networks (1 s windows, 32 px): untrained."""
    from scldm.audio import WaveformFrontend
    from scldm.baselines.wav2pix import (
        ENCODER_PRESETS,
        GENERATOR_PRESETS,
        Wav2PixGenerator,
        Wav2PixPipeline,
        Wav2PixSpeechEncoder,
    )

    torch.manual_seed(seed)
    pipe = Wav2PixPipeline(
        frontend=WaveformFrontend(seconds=1.0, segment_seconds=2.0),
        speech_encoder=Wav2PixSpeechEncoder(**ENCODER_PRESETS["tiny"]).eval(),
        generator=Wav2PixGenerator(**GENERATOR_PRESETS["tiny"]).eval(),
        dropout_at_inference=dropout_at_inference,
        method={"deviations": ["untrained test fixture"]},
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
