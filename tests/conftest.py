"""Shared fixtures: synthetic audio files and face images written into tmp_path."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

SR = 16_000


def tone(freq: float, seconds: float, sr: int = SR, amp: float = 0.5) -> np.ndarray:
    t = np.arange(round(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def write_wav(path: Path, wave: np.ndarray, sr: int = SR, subtype: str = "PCM_16") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), wave, sr, subtype=subtype)
    return path


def face_image(size: int = 48, colour: tuple[int, int, int] = (200, 150, 120)) -> Image.Image:
    """A crude face: a coloured disc with two dark eyes on a grey background."""
    img = Image.new("RGB", (size, size), (90, 90, 90))
    from PIL import ImageDraw

    d = ImageDraw.Draw(img)
    d.ellipse((size * 0.2, size * 0.1, size * 0.8, size * 0.9), fill=colour)
    for x in (0.38, 0.62):
        d.ellipse(
            (size * (x - 0.05), size * 0.38, size * (x + 0.05), size * 0.46), fill=(20, 20, 20)
        )
    return img


def random_tiny_pipeline():
    """A SpeechToFacePipeline of tiny seeded random components (32 px faces, 4 × 8 × 8 latents,
    a random prior at λ 0.5): fast to run, deterministic, untrained."""
    from scldm.audio import SpectrogramFrontend
    from scldm.diffusion import FacePrior, SpeechToFacePipeline, build_unet, make_scheduler
    from scldm.models import (
        FACE_DECODER_PRESETS,
        SPEECH_ENCODER_PRESETS,
        FaceDecoder,
        SpeechEncoder,
    )

    torch.manual_seed(0)
    frontend = SpectrogramFrontend(n_fft=128, win_length=128, hop_length=64, segment_seconds=0.5)
    prior = FacePrior(prior=torch.randn(4, 8, 8), lambda_infer=0.5)
    pipe = SpeechToFacePipeline(
        frontend=frontend,
        speech_encoder=SpeechEncoder(**SPEECH_ENCODER_PRESETS["tiny"]).eval(),
        unet=build_unet({"preset": "tiny"}).eval(),
        scheduler=make_scheduler("dpm++"),
        face_decoder=FaceDecoder(**FACE_DECODER_PRESETS["tiny"], scaling_factor=0.7).eval(),
        prior=prior,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(autouse=True)
def _seed():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture
def wav_file(tmp_path: Path) -> Path:
    return write_wav(tmp_path / "tone.wav", tone(440.0, 2.0))


@pytest.fixture(scope="session")
def tiny_stage1(tmp_path_factory) -> tuple[Path, Path]:
    """(a 30-speaker SynthVox set at 32 px, a 2-step tiny `scldm pretrain` run on it)."""
    from scldm.cli import main
    from scldm.data.synthvox import prepare_synthvox

    root = tmp_path_factory.mktemp("stage1")
    data = root / "data"
    prepare_synthvox(
        data, speakers=30, clips_per_speaker=2, faces_per_speaker=2, image_size=32, workers=1
    )
    run = root / "enc"
    args = ["pretrain", "--data", str(data), "--out", str(run), "--config", "tiny"]
    assert main([*args, "--set", "train.max_steps=2"]) == 0
    return data, run


@pytest.fixture(scope="session")
def synthvox30(tmp_path_factory) -> Path:
    """A SynthVox set of 30 speakers × 2 clips at 32 px, made once per session (the baselines'
    training tests)."""
    from scldm.data.synthvox import prepare_synthvox

    root = tmp_path_factory.mktemp("synthvox30") / "data"
    prepare_synthvox(
        root, speakers=30, clips_per_speaker=2, faces_per_speaker=2, image_size=32, workers=1
    )
    return root
