"""SpeechToFacePipeline on tiny components: outputs, determinism, samplers, save/load, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from conftest import tone, write_wav
from scldm.audio import SpectrogramFrontend
from scldm.diffusion import FacePrior, SpeechToFacePipeline, build_unet, make_scheduler
from scldm.errors import InputError
from scldm.models import FACE_DECODER_PRESETS, SPEECH_ENCODER_PRESETS, FaceDecoder, SpeechEncoder

STEPS = 2


@pytest.fixture(scope="module")
def pipe() -> SpeechToFacePipeline:
    torch.manual_seed(0)
    frontend = SpectrogramFrontend(n_fft=128, win_length=128, hop_length=64, segment_seconds=0.5)
    prior = FacePrior(prior=torch.randn(4, 4, 4), lambda_infer=0.5)
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


def generate(pipe, audio, seed: int = 0, **kwargs):
    kwargs = {"num_inference_steps": STEPS, "output_type": "pt", **kwargs}
    return pipe(audio, generator=torch.Generator().manual_seed(seed), **kwargs).images


@pytest.fixture(scope="module")
def waves() -> list[np.ndarray]:
    return [tone(220.0, 0.7), tone(660.0, 0.3)]


def test_output_types_and_shapes(pipe, waves):
    images = generate(pipe, waves, num_images_per_prompt=3)
    assert images.shape == (6, 3, 32, 32)
    assert images.min() >= 0 and images.max() <= 1
    arrays = generate(pipe, waves, num_images_per_prompt=3, output_type="np")
    assert arrays.shape == (6, 32, 32, 3) and arrays.dtype == np.float32
    np.testing.assert_allclose(arrays, images.permute(0, 2, 3, 1).numpy())
    pil = generate(pipe, torch.from_numpy(waves[0]), output_type="pil")
    assert len(pil) == 1 and isinstance(pil[0], PIL.Image.Image) and pil[0].size == (32, 32)
    with pytest.raises(InputError, match="output_type"):
        generate(pipe, waves, output_type="jpg")


def test_same_generator_same_image(pipe, waves):
    a, b, c = generate(pipe, waves), generate(pipe, waves), generate(pipe, waves, seed=1)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # λ is used: the default (prior.config.lambda_infer = 0.5) differs from λ = 0
    assert not torch.equal(a, generate(pipe, waves, lam=0.0))


def test_file_and_waveform_inputs_agree(pipe, tmp_path: Path):
    wave = tone(330.0, 0.6)
    path = write_wav(tmp_path / "voice.wav", wave, subtype="FLOAT")
    from_file = generate(pipe, str(path))
    torch.testing.assert_close(from_file, generate(pipe, wave))
    torch.testing.assert_close(from_file, generate(pipe, [path]))


@pytest.mark.parametrize("name", ["ddpm", "ddim", "dpm++", "unipc"])
def test_every_sampler_runs_with_guidance(pipe, waves, name):
    original = pipe.scheduler
    pipe.scheduler = make_scheduler(name, original.config)
    try:
        images = generate(pipe, waves, num_inference_steps=3, guidance_scale=2.0)
    finally:
        pipe.scheduler = original
    assert images.shape == (2, 3, 32, 32) and torch.isfinite(images).all()


def test_save_and_load_round_trip(pipe, waves, tmp_path: Path):
    pipe.save_pretrained(tmp_path)
    loaded = SpeechToFacePipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert isinstance(loaded.prior, FacePrior)
    assert loaded.prior.config.latent_shape == (4, 4, 4)
    assert loaded.prior.config.lambda_infer == 0.5
    assert torch.equal(loaded.prior.latent, pipe.prior.latent)
    assert torch.equal(
        generate(loaded, waves, guidance_scale=2.0), generate(pipe, waves, guidance_scale=2.0)
    )
    # the sampler is swappable at load time
    ddim = make_scheduler("ddim", pipe.scheduler.config)
    swapped = SpeechToFacePipeline.from_pretrained(tmp_path, scheduler=ddim)
    assert type(swapped.scheduler).__name__ == "DDIMScheduler"
    assert generate(swapped, waves).shape == (2, 3, 32, 32)


def test_bad_audio_raises_input_error(pipe, tmp_path: Path):
    not_audio = tmp_path / "notes.wav"
    not_audio.write_text("this is not audio")
    bad = [
        tmp_path / "missing.wav",
        not_audio,
        np.zeros((2, 8000), np.float32),  # not 1-D
        np.zeros(100, np.float32),  # too short
        np.full(8000, np.nan, np.float32),
        [],
        3.0,
    ]
    for audio in bad:
        with pytest.raises(InputError):
            generate(pipe, audio)
    for temperature in (-0.5, float("nan")):
        with pytest.raises(InputError, match="temperature must be ≥ 0"):
            pipe(np.zeros(8000, np.float32), temperature=temperature)


def test_make_scheduler_keeps_the_noise_schedule():
    from diffusers import DDPMScheduler

    train = DDPMScheduler(beta_schedule="linear", beta_start=0.001, beta_end=0.02)
    sampler = make_scheduler("unipc", train.config)
    torch.testing.assert_close(sampler.alphas_cumprod, train.alphas_cumprod)
    assert sampler.config.timestep_spacing == "trailing"
    assert make_scheduler("ddpm", train.config).config.clip_sample is False
    with pytest.raises(InputError, match="unknown sampler"):
        make_scheduler("euler")
