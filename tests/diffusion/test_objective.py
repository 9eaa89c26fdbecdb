"""The prior-shifted diffusion loss and sampler (scldm.diffusion.objective) on tiny models."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from torch import nn

from scldm.diffusion import build_unet, diffusion_loss, make_scheduler, sample_latents

SHAPE = (4, 4, 4)  # tiny latents (C, h, w)
TOKEN_DIM = 16


class Recorder(nn.Module):
    """A stand-in UNet that records its inputs and predicts ε = `scale` · mean token (0 by
    default): linear in the tokens, so guidance can be checked in closed form."""

    def __init__(self, scale: float = 0.0) -> None:
        super().__init__()
        self.scale, self.samples, self.tokens = scale, [], []

    def forward(self, sample, timestep, encoder_hidden_states, return_dict=True):
        self.samples.append(sample.clone())
        self.tokens.append(encoder_hidden_states.clone())
        eps = self.scale * encoder_hidden_states.mean(dim=(1, 2))[:, None, None, None]
        return (eps.expand_as(sample).clone(),)


class PointMass(nn.Module):
    """The exact denoiser of a point mass at `c`: the diffusion's clean sample is x_0 = c − μ,
    so ε = (z_t − √ᾱ_t·x_0) / √(1 − ᾱ_t) is known at every step and the UNet returns it in the
    scheduler's parametrisation (ε, v or x_0)."""

    def __init__(self, scheduler, c: torch.Tensor, mu: torch.Tensor) -> None:
        super().__init__()
        self.abar, self.x0, self.mu = scheduler.alphas_cumprod, c - mu, mu
        self.kind = scheduler.config.prediction_type

    def forward(self, sample, timestep, encoder_hidden_states, return_dict=True):
        t = torch.as_tensor(timestep).expand(sample.shape[0])
        abar = self.abar[t].to(sample)[:, None, None, None]
        z_t = sample - self.mu
        eps = (z_t - abar.sqrt() * self.x0) / (1 - abar).sqrt()
        out = {"epsilon": eps, "v_prediction": abar.sqrt() * eps - (1 - abar).sqrt() * self.x0}
        return (out.get(self.kind, self.x0.expand_as(sample)),)


def tiny_unet() -> nn.Module:
    torch.manual_seed(0)
    return build_unet({"preset": "tiny"})


def batch(n: int = 4, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z0 = torch.randn(n, *SHAPE, generator=g)
    tokens = torch.randn(n, 3, TOKEN_DIM, generator=g)
    prior = 2 * torch.randn(*SHAPE, generator=g)
    return z0, tokens, prior


# --- diffusion_loss --------------------------------------------------------------------------


def test_loss_with_lambda_zero_is_plain_ldm():
    unet, scheduler = tiny_unet(), DDPMScheduler()
    z0, tokens, prior = batch()
    # hand-written DDPM ε-loss (Ho et al. 2020, Alg. 1) with the same draws
    g = torch.Generator().manual_seed(0)
    t = torch.randint(1000, (4,), generator=g)
    noise = torch.randn(z0.shape, generator=g)
    abar = scheduler.alphas_cumprod[t][:, None, None, None]
    z_t = abar**0.5 * z0 + (1 - abar) ** 0.5 * noise
    expected = F.mse_loss(unet(z_t, t, encoder_hidden_states=tokens).sample, noise)
    for kwargs in ({"prior": prior, "prior_scale": 0.0}, {"prior": None, "prior_scale": 0.5}):
        loss, _ = diffusion_loss(
            unet, scheduler, z0, tokens, cond_drop=0.0, generator=g.manual_seed(0), **kwargs
        )
        assert torch.equal(loss, expected)
    shifted, _ = diffusion_loss(
        unet,
        scheduler,
        z0,
        tokens,
        prior=prior,
        prior_scale=0.5,
        cond_drop=0.0,
        generator=g.manual_seed(0),
    )
    assert not torch.equal(shifted, expected)


def test_rows_of_a_global_batch_draw_what_the_whole_batch_draws():
    """Two processes with half a batch each (rows 0-1 and 2-3 of 4) draw t, ε and the dropout
    mask the whole batch draws: the mean of their losses is the whole batch's loss."""
    unet, scheduler = tiny_unet(), DDPMScheduler()
    z0, tokens, prior = batch()
    kwargs = {"prior": prior, "prior_scale": 0.5, "cond_drop": 0.5}

    def loss(rows, part):
        gen = torch.Generator().manual_seed(3)
        return diffusion_loss(unet, scheduler, z0[part], tokens[part], generator=gen, rows=rows,
                              **kwargs)  # fmt: skip

    whole, logs = loss(None, slice(0, 4))
    first, a = loss((0, 4), slice(0, 2))
    second, b = loss((2, 4), slice(2, 4))
    torch.testing.assert_close((first + second) / 2, whole)
    assert (a["cond_drop_frac"] + b["cond_drop_frac"]) / 2 == logs["cond_drop_frac"]
    assert not torch.allclose(loss(None, slice(2, 4))[0], second)  # its own draws differ
    with pytest.raises(ValueError, match="outside a batch of 4"):
        loss((3, 4), slice(0, 2))


# ε cannot be trained at zero terminal SNR: at t = T it equals z_T and says nothing of x_0
@pytest.mark.parametrize(
    ("kind", "zero_snr"),
    [("epsilon", False), ("v_prediction", False), ("sample", False), ("v_prediction", True),
     ("sample", True)],
)  # fmt: skip
def test_each_prediction_type_trains_and_samples_the_exact_denoiser(kind, zero_snr):
    """With data at a single point c the exact denoiser is known in closed form: its loss is 0
    in every parametrisation, and every sampler that reads the same `prediction_type` lands on c
    from pure noise (so training and sampling agree on what the UNet predicts)."""
    _, tokens, prior = batch()
    c = torch.randn(*SHAPE, generator=torch.Generator().manual_seed(5))
    mu = 0.5 * prior
    config = {"prediction_type": kind, "rescale_betas_zero_snr": zero_snr}
    trainer = DDPMScheduler(**config)
    loss, _ = diffusion_loss(
        PointMass(trainer, c, mu), trainer, c.expand(4, *SHAPE), tokens, prior=prior,
        prior_scale=0.5, cond_drop=0.0, generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert loss.item() < 1e-8
    wrong = DDPMScheduler(prediction_type="epsilon" if kind != "epsilon" else "sample")
    off, _ = diffusion_loss(
        PointMass(wrong, c, mu), trainer, c.expand(4, *SHAPE), tokens, prior=prior,
        prior_scale=0.5, cond_drop=0.0, generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert off.item() > 1e-2  # the target depends on the type
    for name in ("ddim", "dpm++", "unipc"):
        sampler = make_scheduler(name, trainer.config)
        out = sample_latents(
            PointMass(sampler, c, mu), sampler, tokens, prior=prior, prior_scale=0.5,
            num_inference_steps=10, generator=torch.Generator().manual_seed(1), latent_shape=SHAPE,
        )  # fmt: skip
        torch.testing.assert_close(out, c.expand_as(out), rtol=0, atol=1e-3, msg=name)


def test_unknown_prediction_type_is_refused():
    z0, tokens, _ = batch()
    scheduler = DDPMScheduler()
    scheduler.register_to_config(prediction_type="flow")
    with pytest.raises(ValueError, match="unknown prediction_type 'flow'"):
        diffusion_loss(Recorder(), scheduler, z0, tokens)


def test_loss_unet_sees_shifted_noisy_latent():
    unet, scheduler = Recorder(), DDPMScheduler()
    z0, tokens, prior = batch()
    lam = 0.5
    loss, _ = diffusion_loss(
        unet, scheduler, z0, tokens, prior=prior, prior_scale=lam, cond_drop=0.0,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    g = torch.Generator().manual_seed(0)
    t = torch.randint(1000, (4,), generator=g)
    noise = torch.randn(z0.shape, generator=g)
    mu = lam * prior
    expected = scheduler.add_noise(z0 - mu, noise, t) + mu  # z̃_t = z_t + μ
    torch.testing.assert_close(unet.samples[0], expected, rtol=0, atol=0)
    torch.testing.assert_close(loss, noise.pow(2).mean())  # the stand-in predicts ε = 0


def test_loss_condition_dropout_uses_null_tokens():
    scheduler = DDPMScheduler()
    z0, tokens, _ = batch()
    null = torch.full((1, 3, TOKEN_DIM), 7.0)
    unet = Recorder()
    _, logs = diffusion_loss(unet, scheduler, z0, tokens, cond_drop=1.0, null_tokens=null)
    assert torch.equal(unet.tokens[0], null.expand_as(tokens))
    assert logs["cond_drop_frac"] == 1.0
    unet = Recorder()
    _, logs = diffusion_loss(unet, scheduler, z0, tokens, cond_drop=1.0)
    assert torch.equal(unet.tokens[0], torch.zeros_like(tokens))
    unet = Recorder()
    _, logs = diffusion_loss(unet, scheduler, z0, tokens, cond_drop=0.0)
    assert torch.equal(unet.tokens[0], tokens) and logs["cond_drop_frac"] == 0.0


def test_loss_overfits_four_latents():
    unet, scheduler = tiny_unet(), DDPMScheduler()
    z0, tokens, prior = batch()
    optimizer = torch.optim.Adam(unet.parameters(), lr=1e-3)

    def eval_loss() -> float:
        with torch.no_grad():
            loss, _ = diffusion_loss(
                unet, scheduler, z0.repeat(8, 1, 1, 1), tokens.repeat(8, 1, 1), prior=prior,
                prior_scale=0.5, cond_drop=0.0, generator=torch.Generator().manual_seed(123),
            )  # fmt: skip
        return loss.item()

    before = eval_loss()
    g = torch.Generator().manual_seed(0)
    for _ in range(150):
        loss, _ = diffusion_loss(
            unet, scheduler, z0, tokens, prior=prior, prior_scale=0.5, cond_drop=0.0, generator=g
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = eval_loss()
    assert after < 0.5 * before, (before, after)


# --- sample_latents --------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 0.6, 0.0])
def test_sampling_starts_at_prior_mean_and_undoes_the_shift(temperature):
    # a UNet predicting ε = 0 with deterministic DDIM: every step rescales the sample,
    # z_{t'} = √(ᾱ_t' / ᾱ_t)·z_t, so z_0 = z_T / √ᾱ_{T-1} (trailing timesteps, ᾱ_final = 1);
    # the temperature τ scales the starting noise: z̃_T = τ·ε + μ
    unet, scheduler = Recorder(), make_scheduler("ddim")
    n, lam = 2048, 0.5
    _, _, prior = batch()
    mu = lam * prior
    tokens = torch.zeros(n, 1, 2)
    out = sample_latents(
        unet, scheduler, tokens, prior=prior, prior_scale=lam, num_inference_steps=4,
        generator=torch.Generator().manual_seed(0), latent_shape=SHAPE, temperature=temperature,
    )  # fmt: skip
    noise = temperature * torch.randn((n, *SHAPE), generator=torch.Generator().manual_seed(0))
    first = unet.samples[0]  # z̃_T, what the UNet sees first
    assert torch.equal(first, noise + mu)
    torch.testing.assert_close(first.mean(0), mu, rtol=0, atol=0.15)  # statistically ≈ μ
    assert scheduler.timesteps[0] == 999
    abar = scheduler.alphas_cumprod[999]
    torch.testing.assert_close(out, noise / abar.sqrt() + mu, rtol=1e-4, atol=1e-4)
    for sample in unet.samples:  # the UNet always sees z_t + μ, z_t ∝ ε
        z_t = sample - mu
        c = (z_t * noise).sum() / noise.pow(2).sum().clamp_min(1e-12)
        torch.testing.assert_close(z_t, c * noise, rtol=0, atol=1e-4)
    if temperature == 0:  # no noise: every sample starts and ends at μ
        assert torch.equal(out, mu.expand_as(out))


def test_guidance_combines_conditional_and_unconditional():
    scheduler = make_scheduler("ddim")
    _, tokens, prior = batch()
    kwargs = {"prior": prior, "prior_scale": 0.5, "num_inference_steps": 3, "latent_shape": SHAPE}

    def run(unet, tokens, **extra):
        g = torch.Generator().manual_seed(0)
        return sample_latents(unet, scheduler, tokens, generator=g, **kwargs, **extra)

    # ε is linear in the tokens and the null tokens are zeros, so
    # ε_u + g·(ε_c − ε_u) = g·ε_c: guidance g equals the unguided sampler on g·tokens
    guided, plain = Recorder(scale=0.3), Recorder(scale=0.3)
    out = run(guided, tokens, guidance_scale=2.5)
    torch.testing.assert_close(out, run(plain, 2.5 * tokens))
    assert all(s.shape[0] == 8 for s in guided.samples)  # one batched call of 2B
    assert all(s.shape[0] == 4 for s in plain.samples)  # g = 1: conditional pass only
    # on the real UNet: g = 1 equals g ≠ 1 when the null condition is the condition itself
    unet = tiny_unet()
    same = run(unet, tokens, guidance_scale=3.0, null_tokens=tokens)
    torch.testing.assert_close(run(unet, tokens), same, rtol=1e-5, atol=1e-5)


def test_sampling_is_deterministic_given_generator():
    unet = tiny_unet()
    _, tokens, prior = batch()
    outs = []
    for name, seed in (("ddpm", 0), ("ddpm", 0), ("ddpm", 1)):
        outs.append(
            sample_latents(
                unet,
                make_scheduler(name),
                tokens,
                prior=prior,
                prior_scale=0.5,
                num_inference_steps=3,
                guidance_scale=2.0,
                generator=torch.Generator().manual_seed(seed),
                latent_shape=SHAPE,
            )  # fmt: skip
        )
    assert outs[0].shape == (4, *SHAPE)
    assert torch.equal(outs[0], outs[1])
    assert not torch.allclose(outs[0], outs[2])
