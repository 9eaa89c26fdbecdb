"""SpeechFaceModel (the stage-1 wrapper): outputs, gradient flow through forward, and
overfitting one batch of identity-specific tones and coloured faces."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import face_image, tone
from scldm.audio import SpectrogramFrontend
from scldm.losses import encoder_stage_loss
from scldm.models import (
    FACE_DECODER_PRESETS,
    FACE_ENCODER_PRESETS,
    SPEECH_ENCODER_PRESETS,
    FaceDecoder,
    FaceEncoder,
    SpeechEncoder,
    SpeechFaceModel,
)

TINY_FRONTEND = {"n_fft": 128, "win_length": 128, "hop_length": 64, "segment_seconds": 0.5}
WEIGHTS = {"loss/contrastive": 1.0, "loss/mae": 1.0}


def tiny_model() -> SpeechFaceModel:
    return SpeechFaceModel(
        SpeechEncoder(**SPEECH_ENCODER_PRESETS["tiny"]),
        FaceEncoder(**FACE_ENCODER_PRESETS["tiny"]),
        FaceDecoder(**FACE_DECODER_PRESETS["tiny"]),
    )


def synthetic_pairs(num: int = 8) -> dict[str, torch.Tensor]:
    """Identity i: a harmonic tone at 150·1.25^i Hz with noise, and a face of its own colour."""
    rng = np.random.default_rng(0)
    waves = []
    for i in range(num):
        f0 = 150 * 1.25**i
        wave = sum(tone(k * f0, 0.5, amp=0.3 / k) for k in (1, 2, 3))
        waves.append(wave + 0.01 * rng.standard_normal(wave.shape).astype(np.float32))
    spec = SpectrogramFrontend(**TINY_FRONTEND)(torch.from_numpy(np.stack(waves)))
    colours = [tuple(int(c) for c in rng.integers(30, 255, 3)) for _ in range(num)]
    face = torch.stack(
        [
            torch.from_numpy(np.asarray(face_image(32, c), np.float32)).permute(2, 0, 1)
            for c in colours
        ]
    )
    return {"spectrogram": spec, "face": face / 127.5 - 1, "speaker": torch.arange(num)}


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("frames", [124, 40])
def test_speech_face_model_outputs(batch, frames):
    model = tiny_model()
    spec, face = torch.randn(batch, 2, 65, frames), torch.rand(batch, 3, 32, 32) * 2 - 1
    out = model(spec, face)
    assert out["speech_embedding"].shape == out["face_embedding"].shape == (batch, 16)
    assert out["latents"].shape == (batch, 4, 8, 8)
    assert out["reconstruction"].shape == face.shape
    assert out["logit_scale"].item() == pytest.approx(math.log(1 / 0.07))
    model.eval()
    speech = model.encode_speech(spec)
    assert torch.allclose(speech.norm(dim=-1), torch.ones(batch))
    assert torch.allclose(
        model.encode_face(face, normalize=False), model(spec, face)["face_embedding"]
    )


def test_speech_face_model_gradient_reaches_every_parameter_through_forward():
    model = tiny_model()
    data = synthetic_pairs(4)
    loss, _ = encoder_stage_loss(model(data["spectrogram"], data["face"]), data, WEIGHTS)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_reconstructing_part_of_the_batch_is_the_same_loss_on_those_faces():
    """`num_reconstructed=R`: the decoder sees the first R latents only; the contrastive term
    still covers the whole batch and L_rec is the mean over those R faces."""
    model = tiny_model().eval()  # BatchNorm on running statistics: a subset decodes the same
    data = synthetic_pairs(6)
    full = model(data["spectrogram"], data["face"])
    part = model(data["spectrogram"], data["face"], num_reconstructed=2)
    assert part["reconstruction"].shape == (2, 3, 32, 32)
    torch.testing.assert_close(part["reconstruction"], full["reconstruction"][:2])
    _, logs_full = encoder_stage_loss(full, data, WEIGHTS)
    _, logs_part = encoder_stage_loss(part, data, WEIGHTS)
    torch.testing.assert_close(logs_part["loss/contrastive"], logs_full["loss/contrastive"])
    mae = (full["reconstruction"][:2] - data["face"][:2]).abs().mean()
    torch.testing.assert_close(logs_part["loss/mae"], mae)
    assert not torch.isclose(logs_part["loss/mae"], logs_full["loss/mae"])


def test_speech_face_model_rejects_mismatched_parts():
    with pytest.raises(ValueError, match="embedding_dim"):
        SpeechFaceModel(
            SpeechEncoder(**{**SPEECH_ENCODER_PRESETS["tiny"], "embedding_dim": 8}),
            FaceEncoder(**FACE_ENCODER_PRESETS["tiny"]),
            FaceDecoder(**FACE_DECODER_PRESETS["tiny"]),
        )
    with pytest.raises(ValueError, match="latent_channels"):
        SpeechFaceModel(
            SpeechEncoder(**SPEECH_ENCODER_PRESETS["tiny"]),
            FaceEncoder(**FACE_ENCODER_PRESETS["tiny"]),
            FaceDecoder(**FACE_DECODER_PRESETS["tiny"], latent_channels=8),
        )


def test_speech_face_model_overfits_one_batch():
    """8 pairs: speech→face R@1 reaches 100% (eval mode) and the reconstruction error falls.

    Adam at 2e-3 (the stage-1 config uses 1e-3 for speech, 1e-4 for faces). At init the tiny
    face embedding barely depends on the face (pairwise cosine ≈ 0.99); at 5e-3 without warmup
    the first steps drive it to a constant, which pins the CLIP loss at log B with no gradient
    to leave it, and R@1 stays at chance.
    """
    torch.manual_seed(0)
    model, data = tiny_model(), synthetic_pairs(8)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    first_mae = None
    for _ in range(60):
        outputs = model(data["spectrogram"], data["face"])
        loss, logs = encoder_stage_loss(outputs, data, WEIGHTS)
        first_mae = first_mae or logs["loss/mae"].item()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    assert logs["accuracy"].item() == 1.0 and logs["loss/contrastive"].item() < 0.1
    model.eval()  # BatchNorm running statistics: the retrieval must hold in eval mode too
    with torch.no_grad():
        speech = model.encode_speech(data["spectrogram"])
        face = model.encode_face(data["face"])
        mae = (model(data["spectrogram"], data["face"])["reconstruction"] - data["face"]).abs()
    assert (speech @ face.T).argmax(dim=1).tolist() == list(range(8))
    assert mae.mean().item() < 0.75 * first_mae
