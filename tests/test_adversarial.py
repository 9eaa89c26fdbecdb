"""The face autoencoder's adversarial pieces: the hinge losses, VQGAN's adaptive weight and the
feature-matching distance (known answers), and the PatchGAN learning to tell two image sets
apart."""

from __future__ import annotations

import pytest
import torch

from scldm.losses import (
    adaptive_weight,
    feature_matching_loss,
    generator_adversarial_loss,
    hinge_discriminator_loss,
)
from scldm.models.discriminator import DISCRIMINATOR_PRESETS, PatchDiscriminator


def test_hinge_losses_known_values():
    zeros = torch.zeros(2, 1, 3, 3)
    assert hinge_discriminator_loss(zeros, zeros).item() == pytest.approx(1.0)
    # confident and right on both sides: nothing to learn
    assert hinge_discriminator_loss(zeros + 2, zeros - 3).item() == 0.0
    # real logits -1, fake logits 0.5: (relu(2) + relu(1.5)) / 2
    assert hinge_discriminator_loss(zeros - 1, zeros + 0.5).item() == pytest.approx(1.75)
    assert generator_adversarial_loss(torch.tensor([1.0, 3.0])).item() == pytest.approx(-2.0)


def test_adaptive_weight_is_the_ratio_of_gradient_norms_at_the_last_layer():
    w = torch.randn(4, requires_grad=True)
    a, b = torch.tensor([3.0, 0.0, 4.0, 0.0]), torch.tensor([0.0, 1.0, 0.0, 0.0])
    rec, adv = (w * a).sum(), (w * b).sum()  # gradients a (norm 5) and b (norm 1)
    weight = adaptive_weight(rec, adv, w)
    assert weight.item() == pytest.approx(5 / (1 + 1e-4))
    assert not weight.requires_grad
    assert adaptive_weight(rec, adv * 1e-9, w, max_weight=100.0).item() == 100.0  # clamped
    (rec + adv).backward()  # the graphs survive for the real backward
    assert torch.equal(w.grad, a + b)


def test_feature_matching_is_the_sum_of_mean_absolute_differences():
    fake = [torch.ones(2, 3), torch.zeros(1, 4)]
    real = [torch.zeros(2, 3), torch.full((1, 4), 0.5)]
    assert feature_matching_loss(fake, real).item() == pytest.approx(1.5)
    assert feature_matching_loss(real, real).item() == 0.0


@pytest.mark.parametrize(
    "preset,size,side", [("tiny", 32, 6), ("small", 64, 14), ("base", 224, 26)]
)
def test_patch_discriminator_gives_a_logit_map_and_its_features(preset, size, side):
    disc = PatchDiscriminator(**DISCRIMINATOR_PRESETS[preset])
    features = disc(torch.randn(2, 3, size, size))
    assert features[-1].shape == (2, 1, side, side)
    assert len(features) == DISCRIMINATOR_PRESETS[preset]["num_layers"] + 2


def test_patch_discriminator_learns_to_tell_smooth_faces_from_noise():
    torch.manual_seed(0)
    disc = PatchDiscriminator(**DISCRIMINATOR_PRESETS["tiny"])
    opt = torch.optim.Adam(disc.parameters(), lr=2e-3, betas=(0.5, 0.9))

    def smooth(n):  # blurry blobs: a low-resolution pattern upsampled
        return torch.nn.functional.interpolate(torch.rand(n, 3, 4, 4) * 2 - 1, size=32)

    losses = []
    for _ in range(40):
        logits = disc(torch.cat([smooth(8), torch.rand(8, 3, 32, 32) * 2 - 1]))[-1]
        loss = hinge_discriminator_loss(logits[:8], logits[8:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] > 0.8 and sum(losses[-5:]) / 5 < 0.2
    with torch.no_grad():
        real, fake = disc(smooth(16))[-1].mean(), disc(torch.rand(16, 3, 32, 32) * 2 - 1)[-1].mean()
    assert real > 0 > fake


def test_a_luma_discriminator_is_blind_to_colour_noise_of_the_same_luminance():
    from scldm.config import AdversarialConfig
    from scldm.training.adversarial import Adversary

    torch.manual_seed(0)
    faces = torch.rand(2, 3, 32, 32) * 1.6 - 0.8
    tint = torch.tensor([1.0, -0.299 / 0.587, 0.0]).view(1, 3, 1, 1)
    chroma = torch.randn(2, 1, 32, 32) * 0.1 * tint
    noisy = faces + chroma  # +R and as much luminance taken from G: colour speckles, same Y
    last = torch.zeros(3, 3, 1, 1, requires_grad=True)
    disc = {"preset": "tiny"}
    rgb = Adversary(AdversarialConfig(weight=1.0, discriminator=disc), None, last)
    luma = Adversary(AdversarialConfig(weight=1.0, sees="luma", discriminator=disc), None, last)
    assert torch.equal(rgb.shown(faces), faces)
    y = luma.shown(faces)
    assert y.shape == faces.shape and torch.equal(y[:, 0], y[:, 2])
    assert torch.allclose(y[:, 0], 0.299 * faces[:, 0] + 0.587 * faces[:, 1] + 0.114 * faces[:, 2])
    assert torch.allclose(luma.shown(noisy), y, atol=1e-6)
    assert not torch.allclose(rgb.module(noisy)[-1], rgb.module(faces)[-1], atol=1e-3)


def test_a_boxed_discriminator_sees_only_its_box_in_whole_pixels():
    """`box` shows D only that part of the face (the eye band of 64 px faces: rows 22-33,
    columns 16-47), each pixel repeated to at least 32 px high; what lies outside the box
    changes nothing D sees, and a box outside the face is refused in one line."""
    from scldm.config import AdversarialConfig
    from scldm.errors import InputError
    from scldm.training.adversarial import Adversary

    torch.manual_seed(0)
    faces = torch.rand(2, 3, 64, 64) * 2 - 1
    last = torch.zeros(3, 3, 1, 1, requires_grad=True)
    box = (0.34375, 0.25, 0.53125, 0.75)
    eyes = Adversary(AdversarialConfig(weight=1.0, box=box, discriminator={"preset": "tiny"}),
                     None, last)  # fmt: skip
    seen = eyes.shown(faces)
    assert seen.shape == (2, 3, 36, 96)  # 12 × 32 px, each pixel 3 × 3
    torch.testing.assert_close(seen[..., ::3, ::3], faces[..., 22:34, 16:48], rtol=0, atol=0)
    torch.testing.assert_close(seen[..., 2::3, 1::3], faces[..., 22:34, 16:48], rtol=0, atol=0)
    elsewhere = faces.clone()
    elsewhere[..., :22, :] = 0.5
    elsewhere[..., :, 48:] = -0.5
    assert torch.equal(eyes.shown(elsewhere), seen)
    assert eyes.module(seen)[-1].shape[0] == 2
    with pytest.raises(InputError, match="adversarial.box: expected"):
        AdversarialConfig(box=(0.5, 0.0, 0.4, 1.0))
