"""Loss properties: CLIP InfoNCE (value, symmetry, permutation, masking, gathered negatives),
reconstruction terms, the stage-1 total, and the LPIPS wrapper (offline, user weights)."""

from __future__ import annotations

import math
import socket

import pytest
import torch
import torch.nn.functional as F

from scldm.errors import InputError
from scldm.losses import clip_loss, encoder_stage_loss, reconstruction_loss, region_weights

SCALE = torch.tensor(math.log(1 / 0.07))


def pairs(batch: int = 6, dim: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(batch, dim), torch.randn(batch, dim)


# --- clip_loss ---------------------------------------------------------------------------------


def test_clip_loss_of_identical_embeddings_is_log_batch():
    emb = torch.randn(1, 8).expand(5, 8)
    loss, logs = clip_loss(emb, emb, SCALE)
    assert loss.item() == pytest.approx(math.log(5), abs=1e-6)
    assert logs["logit_scale"].item() == pytest.approx(1 / 0.07)


def test_clip_loss_vanishes_for_matched_orthogonal_pairs():
    emb = torch.eye(4)
    loss, logs = clip_loss(emb, 3 * emb, torch.tensor(math.log(100.0)))
    assert loss.item() < 1e-10 and logs["accuracy"].item() == 1.0


def test_clip_loss_is_symmetric():
    speech, face = pairs()
    assert torch.allclose(clip_loss(speech, face, SCALE)[0], clip_loss(face, speech, SCALE)[0])


def test_clip_loss_is_invariant_to_jointly_permuting_pairs():
    speech, face = pairs()
    speakers = torch.tensor([0, 1, 1, 2, 3, 3])
    perm = torch.randperm(6)
    a, _ = clip_loss(speech, face, SCALE, speaker_ids=speakers)
    b, _ = clip_loss(speech[perm], face[perm], SCALE, speaker_ids=speakers[perm])
    assert torch.allclose(a, b, atol=1e-6)


def test_clip_loss_masks_same_speaker_negatives_as_if_removed():
    speech, face = pairs(4)
    speakers = torch.tensor([7, 7, 8, 9])  # clips 0 and 1: one speaker
    masked, _ = clip_loss(speech, face, SCALE, speaker_ids=speakers)
    logits = SCALE.exp() * F.normalize(speech, dim=-1) @ F.normalize(face, dim=-1).T
    by_hand = []
    for matrix in (logits, logits.T):  # speech→face rows, then face→speech rows
        for i in range(4):
            keep = [j for j in range(4) if j == i or speakers[j] != speakers[i]]
            by_hand.append(-torch.log_softmax(matrix[i, keep], dim=0)[keep.index(i)])
    expected = (torch.stack(by_hand[:4]).mean() + torch.stack(by_hand[4:]).mean()) / 2
    assert torch.allclose(masked, expected, atol=1e-6)


def fake_ranks(
    monkeypatch, rank: int, sizes: list[int], global_tensors: list[torch.Tensor]
) -> None:
    """Pretend to be `rank` of len(sizes) processes holding sizes[r] rows each. The first
    all_gather shares the sizes; the i-th gradient-carrying one returns each rank's rows of
    global_tensors[i] padded with zeros to the largest size, the local chunk being the caller's
    own tensor (so the gradient path is the one the real collective gives)."""
    import torch.distributed.nn.functional as dist_fn

    pending = iter(global_tensors)
    starts = [sum(sizes[:r]) for r in range(len(sizes))]

    def all_gather_sizes(out, size):
        assert int(size) == sizes[rank]
        for r, n in enumerate(sizes):
            out[r].fill_(n)

    def all_gather(x):
        full, most = next(pending), max(sizes)
        assert len(x) == most
        chunks = []
        for start, n in zip(starts, sizes, strict=True):
            chunk = full[start : start + n]
            chunk = torch.cat([chunk, chunk.new_zeros(most - n, *chunk.shape[1:])])
            chunks.append(chunk)
        assert torch.allclose(chunks[rank].float(), x.float())
        chunks[rank] = x
        return tuple(chunks)

    monkeypatch.setattr(torch.distributed, "is_available", lambda: True)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: len(sizes))
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: rank)
    monkeypatch.setattr(torch.distributed, "all_gather", all_gather_sizes)
    monkeypatch.setattr(dist_fn, "all_gather", all_gather)


@pytest.mark.parametrize("with_speakers", [False, True])
@pytest.mark.parametrize("sizes", [[4, 4, 4], [4, 3, 4]], ids=["equal", "a clip left out"])
def test_clip_loss_gathered_equals_single_process(monkeypatch, with_speakers, sizes):
    """Also when one rank left an unreadable clip out of its batch: the rows are padded for the
    collective and dropped after, so every rank scores against the 11 real columns."""
    n = sum(sizes)
    speech, face = pairs(12)
    speech, face = speech[:n], face[:n]
    speakers = torch.tensor([0, 1, 2, 3, 4, 0, 5, 6, 7, 8, 3, 9])[:n] if with_speakers else None
    full, _ = clip_loss(speech, face, SCALE, speaker_ids=speakers)
    gathered = [F.normalize(speech, dim=-1), F.normalize(face, dim=-1)]
    gathered += [speakers] if with_speakers else []
    per_rank = []
    for rank, size in enumerate(sizes):
        rows = slice(sum(sizes[:rank]), sum(sizes[:rank]) + size)
        with monkeypatch.context() as m:
            fake_ranks(m, rank, sizes, gathered)
            ids = speakers[rows] if with_speakers else None
            loss, _ = clip_loss(speech[rows], face[rows], SCALE, speaker_ids=ids, gather=True)
        per_rank.append(loss * size)
    # DDP averages the per-rank losses' gradients: the mean (weighted by rows when the ranks'
    # batches differ) is the global batch's loss
    assert torch.allclose(torch.stack(per_rank).sum() / n, full, atol=1e-6)


def test_clip_loss_without_distributed_ignores_gather():
    speech, face = pairs()
    a, _ = clip_loss(speech, face, SCALE, gather=True)
    assert torch.allclose(a, clip_loss(speech, face, SCALE)[0])


# --- Reconstruction and the stage-1 total ------------------------------------------------------


def test_reconstruction_loss_terms():
    target = torch.zeros(2, 3, 8, 8)
    recon = torch.full_like(target, 0.5)
    assert reconstruction_loss(recon, target)["loss/mae"].item() == pytest.approx(0.5)
    terms = reconstruction_loss(recon, target, perceptual=lambda x, y: torch.tensor([1.0, 3.0]))
    assert terms["loss/lpips"].item() == pytest.approx(2.0)


def test_region_weights_weigh_the_box_k_times_at_mean_1():
    # the eye band of a 64 px face: rows 22-33, columns 16-47 (384 of 4,096 pixels)
    w = region_weights(64, (22 / 64, 16 / 64, 34 / 64, 48 / 64), 8.0)
    assert w.shape == (64, 64) and w.mean().item() == pytest.approx(1.0)
    inside = torch.zeros(64, 64, dtype=torch.bool)
    inside[22:34, 16:48] = True
    assert w[inside].unique().numel() == w[~inside].unique().numel() == 1
    assert (w[inside][0] / w[~inside][0]).item() == pytest.approx(8.0)
    assert w[~inside][0].item() == pytest.approx(4096 / (4096 - 384 + 8 * 384))
    assert torch.equal(region_weights(8, (0.0, 0.0, 1.0, 1.0), 5.0), torch.ones(8, 8))


def test_weighted_mae_counts_errors_in_the_box_more():
    target = torch.zeros(1, 3, 8, 8)
    box = (0.0, 0.0, 0.5, 0.5)  # the top-left quarter
    w = region_weights(8, box, 3.0)  # inside 3 / 1.5 = 2, outside 1 / 1.5
    inside, outside = target.clone(), target.clone()
    inside[..., 0, 0] = 1.0
    outside[..., 7, 7] = 1.0
    mae = lambda x: reconstruction_loss(x, target, pixel_weights=w)["loss/mae"].item()  # noqa: E731
    assert mae(inside) == pytest.approx(2.0 / 64) and mae(outside) == pytest.approx(1 / 1.5 / 64)
    ones = torch.ones(8, 8)
    plain = reconstruction_loss(inside, target)["loss/mae"]
    assert torch.equal(reconstruction_loss(inside, target, pixel_weights=ones)["loss/mae"], plain)


def stage_outputs(batch: int = 4):
    speech, face = pairs(batch)
    speech.requires_grad_(True)
    recon = torch.rand(batch, 3, 8, 8, requires_grad=True)
    outputs = {
        "speech_embedding": speech,
        "face_embedding": face,
        "reconstruction": recon,
        "logit_scale": SCALE.clone().requires_grad_(True),
    }
    return outputs, {"face": torch.zeros(batch, 3, 8, 8), "speaker": torch.arange(batch)}


def test_encoder_stage_loss_is_the_weighted_sum_of_its_logs():
    outputs, batch = stage_outputs()
    weights = {"loss/contrastive": 0.5, "loss/mae": 2.0, "loss/lpips": 3.0}
    loss, logs = encoder_stage_loss(
        outputs, batch, weights, perceptual=lambda x, y: x.mean((1, 2, 3))
    )
    assert set(logs) == {
        "loss",
        "loss/contrastive",
        "loss/mae",
        "loss/lpips",
        "accuracy",
        "logit_scale",
    }
    expected = sum(w * logs[k] for k, w in weights.items())
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert all(not v.requires_grad for v in logs.values())
    loss.backward()
    assert outputs["logit_scale"].grad is not None and outputs["speech_embedding"].grad is not None


def test_encoder_stage_loss_skips_lpips_at_weight_zero_and_checks_weights():
    outputs, batch = stage_outputs()
    _, logs = encoder_stage_loss(outputs, batch, {"loss/contrastive": 1.0, "loss/mae": 1.0})
    assert "loss/lpips" not in logs
    with pytest.raises(ValueError, match="unknown loss weights"):
        encoder_stage_loss(outputs, batch, {"loss/recon": 1.0})
    with pytest.raises(ValueError, match="no perceptual module"):
        encoder_stage_loss(outputs, batch, {"loss/lpips": 1.0})


# --- LPIPS -------------------------------------------------------------------------------------


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


def test_lpips_random_backbone_offline(no_network):
    from scldm.models.perceptual import LPIPS

    metric = LPIPS(net="alex", random_backbone=True)
    assert not any(p.requires_grad for p in metric.parameters()) and not metric.training
    x = (torch.rand(2, 3, 32, 32) * 2 - 1).requires_grad_(True)
    y = torch.rand(2, 3, 32, 32) * 2 - 1
    d = metric(x, y)
    assert d.shape == (2,) and (d > 0).all()
    assert torch.allclose(metric(y, y), torch.zeros(2), atol=1e-6)
    d.sum().backward()
    assert x.grad.abs().sum() > 0
    # the package's calibrated heads are loaded, not left random
    import lpips

    shipped = torch.load(
        lpips.__file__.replace("__init__.py", "weights/v0.1/alex.pth"),
        map_location="cpu",
        weights_only=True,
    )
    assert torch.equal(metric.model.lin0.model[1].weight, shipped["lin0.model.1.weight"])


def test_lpips_loads_a_torchvision_backbone_from_a_user_path(tmp_path, no_network):
    from scldm.models.perceptual import LPIPS

    reference = LPIPS(net="alex", random_backbone=True)
    state = {
        f"features.{k.split('.', 1)[1]}": torch.randn_like(v)
        for k, v in reference.model.net.state_dict().items()
    }
    state["classifier.1.weight"] = torch.zeros(4, 4)  # a full alexnet file: ignored
    torch.save(state, tmp_path / "alexnet.pth")
    metric = LPIPS(net="alex", backbone_weights=tmp_path / "alexnet.pth")
    assert torch.equal(getattr(metric.model.net.slice3, "6").weight, state["features.6.weight"])

    del state["features.6.weight"]
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(InputError, match="partial.pth: missing backbone weights"):
        LPIPS(net="alex", backbone_weights=tmp_path / "partial.pth")
    with pytest.raises(InputError, match="no such weight file"):
        LPIPS(net="alex", backbone_weights=tmp_path / "absent.pth")
    with pytest.raises(InputError, match="backbone weights"):
        LPIPS(net="alex")
