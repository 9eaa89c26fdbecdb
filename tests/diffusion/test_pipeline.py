"""SpeechToFacePipeline on tiny components: outputs, determinism, samplers, save/load, errors."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

from conftest import random_tiny_pipeline, tone, write_wav
from scldm.audio import waveform_from
from scldm.diffusion import FacePrior, SpeechToFacePipeline, make_scheduler
from scldm.errors import InputError

try:  # the sampler moves from objective to sampling in the architecture refactor
    from scldm.diffusion.sampling import sample_latents
except ImportError:
    from scldm.diffusion.objective import sample_latents

STEPS = 2
SAMPLERS = ["ddpm", "ddim", "dpm++", "unipc"]
SHAPE = (4, 4, 4)
# the sampler's prior-scale argument, λ of μ = λ·P, by its current name (formerly `lam`)
PRIOR_SCALE = next(
    n for n in ("prior_scale", "lam") if n in inspect.signature(sample_latents).parameters
)


class ExactEpsilon(ModelMixin, ConfigMixin):
    """A stand-in UNet that is the exact minimiser of the training loss (`diffusion_loss`) for
    known data, so the sampler's answer is known in closed form.

    Data: z_0 ~ N(c, s²·I) with c = `centre` + mean(tokens) (per sample; the token term makes
    guidance checkable), trained with the prior shift μ. The scheduler runs on x = z̃ − μ, where
    x_0 has mean m = c − μ and x_t = √ᾱ_t·x_0 + √(1 − ᾱ_t)·ε, so
    E[ε | x_t] = √(1 − ᾱ_t)·(x_t − √ᾱ_t·m) / (ᾱ_t·s² + 1 − ᾱ_t);
    s = 0 is a single data point, for which every sampler must return exactly c.
    """

    ignore_for_config = ["centre", "mu", "alphas_cumprod"]

    @register_to_config
    def __init__(
        self, *, centre=None, mu=None, alphas_cumprod=None, spread=0.0, sample_size=4, in_channels=4
    ):
        super().__init__()
        self.register_buffer("centre", centre.double())
        self.register_buffer("mu", mu.double())
        self.register_buffer("alphas_cumprod", alphas_cumprod.double())

    def forward(self, sample, timestep, encoder_hidden_states, return_dict=True):
        abar = self.alphas_cumprod[int(timestep)]
        c = self.centre + encoder_hidden_states.double().mean(dim=(1, 2))[:, None, None, None]
        x = sample.double() - self.mu
        s2 = self.config.spread**2
        eps = (1 - abar).sqrt() * (x - abar.sqrt() * (c - self.mu)) / (abar * s2 + 1 - abar)
        return (eps.to(sample.dtype),)


def exact_setup(seed: int = 3, lam: float = 0.5, spread: float = 0.0):
    """(stub UNet, c, prior P, λ, training scheduler config) for data around a seeded c."""
    g = torch.Generator().manual_seed(seed)
    centre, prior = torch.randn(SHAPE, generator=g), torch.randn(SHAPE, generator=g)
    config = make_scheduler("ddpm").config
    unet = ExactEpsilon(
        centre=centre,
        mu=lam * prior,
        alphas_cumprod=make_scheduler("ddpm", config).alphas_cumprod,
        spread=spread,
    )
    return unet, centre, prior, lam, config


def sample(unet, config, name, steps, tokens, prior, lam, seed=0, **kwargs):
    return sample_latents(
        unet,
        make_scheduler(name, config),
        tokens,
        prior=prior,
        **{PRIOR_SCALE: lam},
        num_inference_steps=steps,
        generator=torch.Generator().manual_seed(seed),
        latent_shape=SHAPE,
        **kwargs,
    )


@pytest.fixture(scope="module")
def pipe() -> SpeechToFacePipeline:
    return random_tiny_pipeline()


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
    assert not torch.equal(a, generate(pipe, waves, prior_scale=0.0))


def test_file_and_waveform_inputs_agree(pipe, tmp_path: Path):
    wave = tone(330.0, 0.6)
    path = write_wav(tmp_path / "voice.wav", wave, subtype="FLOAT")
    from_file = generate(pipe, str(path))
    torch.testing.assert_close(from_file, generate(pipe, wave))
    torch.testing.assert_close(from_file, generate(pipe, [path]))


def test_ddim_with_eta_zero_is_deterministic(pipe, waves):
    original = pipe.scheduler
    pipe.scheduler = make_scheduler("ddim", original.config)
    try:
        a, b = generate(pipe, waves, seed=0), generate(pipe, waves, seed=0)
        c = generate(pipe, waves, seed=1)
    finally:
        pipe.scheduler = original
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # η = 0: the generator gives the starting noise and nothing else; DDPM draws at every step
    tokens = torch.randn(2, 3, 16, generator=torch.Generator().manual_seed(1))
    for name, draws_per_step in (("ddim", False), ("ddpm", True)):
        g, fresh = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
        sample_latents(
            pipe.unet,
            make_scheduler(name, original.config),
            tokens,
            num_inference_steps=3,
            generator=g,
            latent_shape=SHAPE,
        )
        torch.randn(2, *SHAPE, generator=fresh)  # the starting noise alone
        assert torch.equal(g.get_state(), fresh.get_state()) != draws_per_step, name


# Known answers with `ExactEpsilon`. Single data point: every sampler must return c exactly up
# to float32 rounding of ε = (x_t − √ᾱ_t·m)/√(1 − ᾱ_t); measured ≤ 4.2e-6 (1 step, all four
# samplers, τ 1 and 0.7), ≤ 7e-7 from 2 steps on. The smallest convention error, a sampler that
# does not shift by μ, misses c by 0.025 (measured), so POINT_TOL = 2e-5 separates the two.
POINT_TOL = 2e-5


@pytest.mark.parametrize("name", SAMPLERS)
def test_every_sampler_agrees_with_ddpm_1000_on_a_single_data_point(name):
    unet, centre, prior, lam, config = exact_setup()
    tokens = torch.randn(3, 5, 16, generator=torch.Generator().manual_seed(1))
    target = centre + tokens.mean(dim=(1, 2))[:, None, None, None]  # each sample's c
    reference = sample(unet, config, "ddpm", 1000, tokens, prior, lam)
    torch.testing.assert_close(reference, target, atol=POINT_TOL, rtol=0)
    for steps, temperature in [(1, 1.0), (1, 0.7), (2, 1.0), (2, 0.7), (25, 1.0), (25, 0.7)]:
        out = sample(unet, config, name, steps, tokens, prior, lam, temperature=temperature)
        torch.testing.assert_close(out, target, atol=POINT_TOL, rtol=0)
        torch.testing.assert_close(out, reference, atol=2 * POINT_TOL, rtol=0)
    # guidance against zero null tokens: ε_u + g·(ε_c − ε_u) is the ε of c_u + g·(c_c − c_u)
    guided = sample(unet, config, name, 25, tokens, prior, lam, guidance_scale=3.0)
    torch.testing.assert_close(guided, centre + 3 * (target - centre), atol=POINT_TOL, rtol=0)
    # the answer is sharp: the same sampler without the prior shift misses c
    unshifted = sample(unet, config, name, 25, tokens, None, 0.0)
    assert (unshifted - target).abs().max() > 100 * POINT_TOL


# Gaussian data N(c, s²): the probability-flow ODE keeps (x_t − √ᾱ_t·m)/σ_t fixed,
# σ_t² = ᾱ_t·s² + 1 − ᾱ_t, so a deterministic sampler from x_T = τ·ε must return
# μ + m + s·(τ·ε − √ᾱ_T·m)/σ_T (its terminal bias included: ᾱ_T > 0 at T = 999). At 1000 steps
# the measured max error over 4,096 values is 9.2e-3 for DDIM (first order) and 2.9e-3 /
# 3.2e-3 for DPM-Solver++ / UniPC; without the prior shift it is 1.29.
ODE_TOL = {"ddim": 0.02, "dpm++": 0.01, "unipc": 0.01}
SPREAD = 0.5


@pytest.mark.parametrize("name", sorted(ODE_TOL))
def test_deterministic_samplers_follow_the_exact_flow_of_gaussian_data(name):
    unet, centre, prior, lam, config = exact_setup(spread=SPREAD)
    tokens = torch.zeros(64, 1, 16)
    mu, temperature = lam * prior.double(), 0.8
    scheduler = make_scheduler(name, config)
    scheduler.set_timesteps(1000)
    abar = scheduler.alphas_cumprod[int(scheduler.timesteps[0])].double()
    start = temperature * torch.randn(64, *SHAPE, generator=torch.Generator().manual_seed(0))
    m = centre.double() - mu
    exact = (
        mu + m + SPREAD * (start.double() - abar.sqrt() * m) / (abar * SPREAD**2 + 1 - abar).sqrt()
    )
    out = sample(unet, config, name, 1000, tokens, prior, lam, temperature=temperature)
    assert (out.double() - exact).abs().max() < ODE_TOL[name]


def test_ddpm_1000_samples_the_gaussian_data_distribution():
    """DDPM's reverse SDE forgets its start, so its 1,024 samples follow N(c, s²) itself. Sampling
    error of the standardised values: pooled mean SE 1/256 (measured -0.0009, bound 0.02), std SE
    0.003 (measured 0.994, bound ±0.03), per-element mean SE 1/32 (measured max 0.089 over the 64
    elements, bound 0.15 ≈ 4.8 SE); without the prior shift the per-element mean misses by 0.94."""
    unet, centre, prior, lam, config = exact_setup(spread=SPREAD)
    out = sample(unet, config, "ddpm", 1000, torch.zeros(1024, 1, 16), prior, lam)
    z = (out.double() - centre) / SPREAD  # standardised: N(0, 1) per element
    assert abs(z.mean()) < 0.02
    assert abs(z.std() - 1) < 0.03
    assert z.mean(0).abs().max() < 0.15
    assert ((z.std(0) - 1).abs() < 0.15).all()


@pytest.mark.parametrize("name", SAMPLERS)
def test_every_sampler_in_the_pipeline_decodes_the_data_point(pipe, waves, name):
    """End to end with the pipeline's prior (μ = λ_infer·P) and guidance: the images are the
    face decoder's output for the guided data point, the same for every sampler."""
    shape = tuple(pipe.prior.latent.shape)  # the tiny pipeline's latents
    centre = torch.randn(shape, generator=torch.Generator().manual_seed(2))
    lam = pipe.prior.config.lambda_infer
    unet = ExactEpsilon(
        centre=centre,
        mu=lam * pipe.prior.latent,
        alphas_cumprod=make_scheduler("ddpm", pipe.scheduler.config).alphas_cumprod,
        sample_size=shape[-1],
    )
    exact = SpeechToFacePipeline(
        frontend=pipe.frontend,
        speech_encoder=pipe.speech_encoder,
        unet=unet,
        scheduler=make_scheduler(name, pipe.scheduler.config),
        face_decoder=pipe.face_decoder,
        prior=pipe.prior,
    )
    exact.set_progress_bar_config(disable=True)
    images = generate(exact, waves, num_inference_steps=3, guidance_scale=2.0, temperature=1.0)
    with torch.no_grad():
        spec = pipe.frontend(torch.stack([waveform_from(w, exact.frontend) for w in waves]))
        tokens = pipe.speech_encoder(spec).tokens
        latents = centre + 2.0 * tokens.mean(dim=(1, 2))[:, None, None, None]
        faces = pipe.face_decoder(latents / pipe.face_decoder.config.scaling_factor)
    expected = (faces / 2 + 0.5).clamp(0, 1)
    assert images.shape == (2, 3, 32, 32)
    torch.testing.assert_close(images, expected, atol=1e-5, rtol=0)  # measured ≤ 7.2e-7


def test_save_and_load_round_trip(pipe, waves, tmp_path: Path):
    pipe.save_pretrained(tmp_path)
    loaded = SpeechToFacePipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert isinstance(loaded.prior, FacePrior)
    assert loaded.prior.config.latent_shape == (4, 8, 8)
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


def test_the_sampling_config_is_saved_and_is_the_default(pipe, waves, tmp_path: Path):
    import json

    from scldm.config import SamplingConfig

    # built without one: SamplingConfig's defaults, the prior's λ and the component's sampler
    assert pipe.sampling == SamplingConfig(prior_scale=0.5, scheduler="dpm++")
    tuned = SpeechToFacePipeline(
        **pipe.components,
        sampling={"num_inference_steps": 3, "guidance_scale": 2.0, "temperature": 0.5},
    )
    tuned.set_progress_bar_config(disable=True)
    tuned.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "model_index.json").read_text())["sampling"]
    assert saved == {
        "scheduler": "dpm++",
        "num_inference_steps": 3,
        "guidance_scale": 2.0,
        "temperature": 0.5,
        "prior_scale": 0.5,  # not given: the prior's λ
    }
    loaded = SpeechToFacePipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.sampling == tuned.sampling
    explicit = {"num_inference_steps": 3, "guidance_scale": 2.0, "temperature": 0.5}
    defaults = loaded(waves, generator=torch.Generator().manual_seed(4), output_type="pt").images
    assert torch.equal(defaults, generate(pipe, waves, seed=4, **explicit))
    assert not torch.equal(defaults, generate(loaded, waves, seed=4, temperature=1.0))
    # changing the sampler swaps the component on the same noise schedule
    loaded.set_sampling(scheduler="ddim", temperature=0.0)
    assert type(loaded.scheduler).__name__ == "DDIMScheduler"
    assert loaded.sampling.temperature == 0.0 and loaded.sampling.scheduler == "ddim"
    assert loaded.scheduler.config.beta_schedule == pipe.scheduler.config.beta_schedule
    with pytest.raises(InputError, match="unknown sampling settings"):
        SpeechToFacePipeline(**pipe.components, sampling={"lam": 0.1})
    # in a saved folder, the error names its model_index.json
    index = json.loads((tmp_path / "model_index.json").read_text())
    index["sampling"]["guidance"] = 3.0
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    bad = r"model_index.json: unknown sampling settings \['guidance'\]"
    with pytest.raises(InputError, match=bad):
        SpeechToFacePipeline.from_pretrained(tmp_path)
    with pytest.raises(InputError, match="is not a pipeline folder"):
        SpeechToFacePipeline.from_pretrained(tmp_path / "missing")  # a Path, as callers pass


def test_a_pipeline_saved_before_the_sampling_config_still_loads(pipe, waves, tmp_path: Path):
    """Folders written by earlier versions: no "sampling" in model_index.json and the prior
    named under scldm.diffusion.pipeline. They sample with SamplingConfig's defaults and the
    prior's λ, which is what `scldm generate` did with them."""
    import json

    from scldm.config import SamplingConfig

    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    del index["sampling"]
    index["prior"] = ["scldm.diffusion.pipeline", "FacePrior"]
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    old = SpeechToFacePipeline.from_pretrained(tmp_path)
    old.set_progress_bar_config(disable=True)
    assert old.sampling == SamplingConfig(prior_scale=0.5)
    d = SamplingConfig()
    expected = generate(
        pipe,
        waves,
        num_inference_steps=d.num_inference_steps,
        guidance_scale=d.guidance_scale,
        temperature=d.temperature,
        prior_scale=0.5,
    )
    assert torch.equal(
        old(waves, generator=torch.Generator().manual_seed(0), output_type="pt").images, expected
    )


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
