"""Stage 2's refinement of the face decoder on frozen latents: it learns, it is deterministic,
it leaves its input alone, and it is saved once and reused by key."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from scldm.config import DecoderRefineConfig, DiffusionStageConfig, load_config
from scldm.data.manifest import read_manifest
from scldm.errors import InputError
from scldm.faces import load_face_tensor
from scldm.training.decoder import (
    new_decoder,
    refine,
    refine_key,
    refined_decoder,
    unique_faces,
    use_bf16,
)
from scldm.training.latents import build_cache, load_encoders


@pytest.fixture
def setup(tiny_stage1):
    data, run = tiny_stage1
    encoders = load_encoders(run)
    return data, encoders, build_cache(encoders, data, "train")


def _l1(decoder, latents, faces) -> float:
    with torch.no_grad():
        return (decoder(latents) - (faces.float() / 127.5 - 1)).abs().mean().item()


def test_unique_faces_pairs_each_image_with_its_latent(setup):
    data, encoders, cache = setup
    latents, faces = unique_faces(cache, data, encoders.image_size)
    names = {r["face"] for r in read_manifest(data, split="train")}
    assert len(latents) == len(faces) == len(names) and faces.dtype == torch.uint8
    first = cache.rows[int(cache.tensors["row"][0])]["face"]
    # uint8 holds the 8-bit image exactly
    exact = load_face_tensor(data / first, encoders.image_size)
    torch.testing.assert_close(faces[0].float() / 127.5 - 1, exact, atol=1e-6, rtol=0)
    torch.testing.assert_close(latents[0], cache.latents[0].float())


def test_refine_learns_and_is_deterministic(setup):
    data, encoders, cache = setup
    latents, faces = unique_faces(cache, data, encoders.image_size)
    before = {k: v.clone() for k, v in encoders.face_decoder.state_dict().items()}
    cfg = DecoderRefineConfig(steps=40, lr=1e-2, batch_size=16)
    a = refine(encoders.face_decoder, latents, faces, cfg, progress=False)
    b = refine(encoders.face_decoder, latents, faces, cfg, progress=False)
    assert _l1(a, latents, faces) < 0.9 * _l1(encoders.face_decoder, latents, faces)
    assert not a.training and not any(p.requires_grad for p in a.parameters())
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    # the stage-1 decoder itself is untouched
    for k, v in encoders.face_decoder.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_refine_with_squared_error_learns_it_and_is_keyed_apart(setup):
    """`loss: mse` lowers the squared error, trains a different decoder from L1's, and keys its
    cache folder apart; the config refuses an unknown loss before a run starts."""
    data, encoders, cache = setup
    latents, faces = unique_faces(cache, data, encoders.image_size)
    plain = DecoderRefineConfig(steps=40, lr=1e-2, batch_size=16)
    cfg = dataclasses.replace(plain, loss="mse")
    mse = refine(encoders.face_decoder, latents, faces, cfg, progress=False)
    l1 = refine(encoders.face_decoder, latents, faces, plain, progress=False)

    def squared(decoder):
        with torch.no_grad():
            return (decoder(latents) - (faces.float() / 127.5 - 1)).square().mean().item()

    assert squared(mse) < 0.8 * squared(encoders.face_decoder)
    assert any(not torch.equal(v, l1.state_dict()[k]) for k, v in mse.state_dict().items())
    assert refine_key(encoders, cache, cfg) != refine_key(encoders, cache, plain)
    with pytest.raises(InputError, match="decoder.loss: expected one of 'l1', 'mse'"):
        load_config(DiffusionStageConfig, "small", ["decoder.loss=l2"], stage="train")


def test_refine_against_a_patchgan_is_deterministic_and_keyed_apart(setup, monkeypatch):
    """With `adversarial`, the discriminator trains from its start step and adds its terms to
    the decoder's loss: the result differs from plain L1, is bitwise the same on a rerun, and
    its cache key differs from the L1 one."""
    from scldm.config import AdversarialConfig
    from scldm.training.adversarial import Adversary

    data, encoders, cache = setup
    latents, faces = unique_faces(cache, data, encoders.image_size)
    plain = DecoderRefineConfig(steps=12, lr=1e-2, batch_size=8)
    gan = AdversarialConfig(weight=0.5, feature_matching=1.0, start_step=4,
                            discriminator={"preset": "tiny"})  # fmt: skip
    cfg = DecoderRefineConfig(steps=12, lr=1e-2, batch_size=8, adversarial=gan)
    d_steps = []
    step = Adversary.discriminator_step

    def counted(self, *args, **kwargs):
        d_steps.append(1)
        return step(self, *args, **kwargs)

    monkeypatch.setattr(Adversary, "discriminator_step", counted)
    a = refine(encoders.face_decoder, latents, faces, cfg, progress=False)
    assert len(d_steps) == 8  # steps 4..11
    b = refine(encoders.face_decoder, latents, faces, cfg, progress=False)
    l1 = refine(encoders.face_decoder, latents, faces, plain, progress=False)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    assert any(not torch.equal(v, l1.state_dict()[k]) for k, v in a.state_dict().items())
    assert refine_key(encoders, cache, cfg) != refine_key(encoders, cache, plain)
    # a discriminator that would start after the last step is refused when the config loads
    # (small's starts at step 1,500 of 3,000)
    with pytest.raises(InputError, match=r"start_step: 1500 ≥ decoder.steps 1000, so the "):
        load_config(DiffusionStageConfig, "small", ["decoder.steps=1000"], stage="train")
    assert (
        load_config(DiffusionStageConfig, "small", ["decoder.steps=0"], stage="train").decoder.steps
        == 0
    )


def test_refine_in_bfloat16_learns_close_to_float32_and_is_keyed_apart(setup, monkeypatch):
    """`precision: bf16` autocasts the decoder (weights stay float32): it learns as float32
    does, within bfloat16's rounding, is deterministic, and keys its cache apart; "auto" takes
    float32 on a CPU without native bfloat16, so its key is float32's there."""
    data, encoders, cache = setup
    latents, faces = unique_faces(cache, data, encoders.image_size)
    fp32 = DecoderRefineConfig(steps=40, lr=1e-2, batch_size=16, precision="no")
    bf16 = dataclasses.replace(fp32, precision="bf16")
    a = refine(encoders.face_decoder, latents, faces, bf16, progress=False)
    b = refine(encoders.face_decoder, latents, faces, bf16, progress=False)
    c = refine(encoders.face_decoder, latents, faces, fp32, progress=False)
    before = _l1(encoders.face_decoder, latents, faces)
    assert _l1(a, latents, faces) < 0.9 * before
    assert abs(_l1(a, latents, faces) - _l1(c, latents, faces)) < 0.05 * before
    assert all(v.dtype == c.state_dict()[k].dtype for k, v in a.state_dict().items())
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
        assert v.is_contiguous(), k  # saved as safetensors
    assert any(not torch.equal(v, c.state_dict()[k]) for k, v in a.state_dict().items())
    assert refine_key(encoders, cache, fp32) != refine_key(encoders, cache, fp32, bf16=True)
    cpu = torch.device("cpu")
    assert use_bf16("bf16", cpu) and not use_bf16("no", cpu)
    monkeypatch.setattr("scldm.training.decoder.cpu_has_bf16", lambda: False)
    assert not use_bf16("auto", cpu)


def test_refined_decoder_is_saved_once_and_keyed_by_settings(setup):
    data, encoders, cache = setup
    with pytest.raises(InputError, match="decoder: steps"):
        refined_decoder(encoders, cache, DecoderRefineConfig(steps=-1), data)
    assert refined_decoder(encoders, cache, DecoderRefineConfig(steps=0), data) is (
        encoders.face_decoder
    )
    exported = (encoders.path / "face_decoder" / "diffusion_pytorch_model.safetensors").read_bytes()
    cfg = DecoderRefineConfig(steps=3, batch_size=8)
    val = build_cache(encoders, data, "val")
    cached = lambda: set((encoders.path.parent / "cache").glob("decoder-*"))  # noqa: E731
    existing = cached()  # the fixture is shared: other tests may have refined already
    first = refined_decoder(encoders, cache, cfg, data, val)
    folders = sorted(cached() - existing)
    bf16 = use_bf16(cfg.precision, torch.device("cpu"))  # "auto": this CPU's choice
    key = refine_key(encoders, cache, cfg, bf16=bf16)
    assert folders == [encoders.path.parent / "cache" / f"decoder-{key}"]
    info = json.loads((folders[0] / "refine.json").read_text())
    assert info["steps"] == 3 and {"val_psnr_before", "val_psnr_after"} <= info.keys()
    assert info["precision"] == ("bf16" if bf16 else "float32")
    stamp = (folders[0] / "refine.json").stat().st_mtime_ns
    again = refined_decoder(encoders, cache, cfg, data, val)
    assert (folders[0] / "refine.json").stat().st_mtime_ns == stamp  # read, not retrained
    for k, v in first.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k
    refined_decoder(encoders, cache, DecoderRefineConfig(steps=3, batch_size=8, lr=2e-3), data)
    assert len(cached() - existing) == 2
    # the stage-1 export is never rewritten
    assert (
        encoders.path / "face_decoder" / "diffusion_pytorch_model.safetensors"
    ).read_bytes() == exported


def test_a_new_decoder_of_another_architecture_learns_and_is_keyed_apart(setup):
    """`decoder.model` trains a new decoder from scratch on the frozen latents instead of
    refining stage 1's: it has the widths asked for and stage 1's latent channels and face size,
    its start is seeded, it learns, its cache is keyed apart and loads back with its
    architecture, and refine.json says what it is."""
    data, encoders, cache = setup
    stage1 = encoders.face_decoder
    wide = [w if w == "M" else 2 * w for w in stage1.config.widths]
    cfg = DecoderRefineConfig(steps=40, lr=1e-2, batch_size=16, model={"widths": wide})
    start = new_decoder(stage1, cfg.model)
    assert list(start.config.widths) == wide
    for k in ("latent_channels", "image_size", "res_blocks", "position_bias"):
        assert start.config[k] == stage1.config[k], k
    again = new_decoder(stage1, cfg.model)
    for k, v in start.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k
    latents, faces = unique_faces(cache, data, encoders.image_size)
    trained = refine(start, latents, faces, cfg, progress=False)
    assert _l1(trained, latents, faces) < 0.9 * _l1(start, latents, faces)
    plain = dataclasses.replace(cfg, model=None)
    assert refine_key(encoders, cache, cfg) != refine_key(encoders, cache, plain)
    narrow = dataclasses.replace(cfg, model={"widths": list(stage1.config.widths)})
    assert refine_key(encoders, cache, narrow) != refine_key(encoders, cache, cfg)

    small = dataclasses.replace(cfg, steps=3, batch_size=8)
    shipped = refined_decoder(encoders, cache, small, data)
    bf16 = use_bf16(small.precision, torch.device("cpu"))
    key = refine_key(encoders, cache, small, bf16=bf16)
    folder = encoders.path.parent / "cache" / f"decoder-{key}"
    info = json.loads((folder / "refine.json").read_text())
    assert info["widths"] == wide and info["parameters"] == sum(
        p.numel() for p in shipped.parameters()
    )
    reread = refined_decoder(encoders, cache, small, data)
    assert list(reread.config.widths) == wide
    for k, v in shipped.state_dict().items():
        assert torch.equal(v, reread.state_dict()[k]), k


@pytest.mark.parametrize(
    "model, message",
    [
        ({"latent_channels": 3}, "decoder.model.latent_channels: 3 does not fit"),
        ({"widths": [8, "M"]}, "widths: .* upsample 1 times, stage 1's latents need 2"),
        ({"preset": "huge"}, "decoder.model.preset: unknown 'huge'"),
        ({"width": 8}, "decoder.model: .*width"),
    ],
)
def test_a_new_decoder_that_cannot_fit_is_refused_in_one_line(setup, model, message):
    data, encoders, cache = setup
    cfg = DecoderRefineConfig(steps=3, model=model)
    with pytest.raises(InputError, match=message):
        refined_decoder(encoders, cache, cfg, data)
    with pytest.raises(InputError, match="decoder.model: a new decoder needs decoder.steps"):
        refined_decoder(encoders, cache, dataclasses.replace(cfg, steps=0), data)


def test_refine_with_a_weighted_region_fits_it_better_and_is_keyed_apart(setup):
    """`recon_region` weighs a box's pixel errors K times: the refined decoder's error inside the
    box, relative to its error outside, falls below uniform refinement's; weight 1 is bitwise
    the default (and keyed alike), a weighted refinement is keyed apart, and a bad setting is
    refused in one line."""
    from scldm.config import ReconRegionConfig

    data, encoders, cache = setup
    latents, faces = unique_faces(cache, data, encoders.image_size)
    plain = DecoderRefineConfig(steps=40, lr=3e-3, batch_size=16, loss="mse")
    box = (0.25, 0.25, 0.5, 0.75)
    one = dataclasses.replace(plain, recon_region=ReconRegionConfig(box=box, weight=1.0))
    eyes = dataclasses.replace(plain, recon_region=ReconRegionConfig(box=box, weight=16.0))
    uniform = refine(encoders.face_decoder, latents, faces, plain, progress=False)
    same = refine(encoders.face_decoder, latents, faces, one, progress=False)
    weighted = refine(encoders.face_decoder, latents, faces, eyes, progress=False)
    for k, v in uniform.state_dict().items():
        assert torch.equal(v, same.state_dict()[k]), k

    size = faces.shape[-1]
    inside = torch.zeros(size, size, dtype=torch.bool)
    inside[size // 4 : size // 2, size // 4 : 3 * size // 4] = True

    def inside_over_outside(decoder):  # measured: 1.09 uniform, 0.87 weighted
        with torch.no_grad():
            error = (decoder(latents) - (faces.float() / 127.5 - 1)).square().mean((0, 1))
        return (error[inside].mean() / error[~inside].mean()).item()

    assert inside_over_outside(weighted) < 0.9 * inside_over_outside(uniform)
    assert refine_key(encoders, cache, one) == refine_key(encoders, cache, plain)
    assert refine_key(encoders, cache, eyes) != refine_key(encoders, cache, plain)
    with pytest.raises(InputError, match="recon_region.weight: expected > 0, got -1"):
        bad = ["decoder.recon_region.weight=-1"]
        load_config(DiffusionStageConfig, "small", bad, stage="train")


def test_the_anchor_holds_the_face_outside_the_discriminators_box(setup, monkeypatch):
    """`anchor` holds the decoder's output outside `adversarial.box` to a frozen copy of the
    decoder taken when the discriminator starts: from that copy, the anchored decoder's output
    moves far less outside the box than the free one's, while inside it both move; the two runs
    are the same up to that step, the anchored one is keyed apart, and an anchor without a box
    to spare is refused in one line."""
    from scldm.config import AdversarialConfig
    from scldm.losses import box_mask
    from scldm.training import decoder as module

    data, encoders, cache = setup
    latents, faces = unique_faces(cache, data, encoders.image_size)
    box = (0.25, 0.25, 0.5, 0.75)
    gan = AdversarialConfig(weight=0.5, feature_matching=1.0, start_step=20, box=box,
                            discriminator={"preset": "tiny"})  # fmt: skip
    free = DecoderRefineConfig(steps=60, lr=1e-2, batch_size=8, loss="mse", adversarial=gan)
    held = dataclasses.replace(free, anchor=10.0)
    copies = []
    deepcopy = module.copy.deepcopy
    monkeypatch.setattr(module.copy, "deepcopy", lambda x: copies.append(deepcopy(x)) or copies[-1])
    a = refine(encoders.face_decoder, latents, faces, held, progress=False)
    teacher = copies[-1]  # the copy taken at the start step
    b = refine(encoders.face_decoder, latents, faces, free, progress=False)
    assert len(copies) == 3 and not teacher.training

    inside = box_mask(faces.shape[-1], box).bool()

    def moved(decoder):  # mean |output − the copy's| inside and outside the box
        with torch.no_grad():
            change = (decoder(latents) - teacher(latents)).abs().mean((0, 1))
        return change[inside].mean().item(), change[~inside].mean().item()

    (a_in, a_out), (_, b_out) = moved(a), moved(b)
    assert a_out < 0.5 * b_out  # measured: 0.024 against 0.074
    assert a_in > 2 * a_out  # measured: 0.139 inside (free: 0.097)
    assert refine_key(encoders, cache, held) != refine_key(encoders, cache, free)
    with pytest.raises(InputError, match="decoder.anchor: holds the face outside"):
        dataclasses.replace(free, adversarial=dataclasses.replace(gan, box=(0.0, 0.0, 1.0, 1.0)),
                            anchor=1.0)  # fmt: skip
    with pytest.raises(InputError, match="decoder.anchor: expected ≥ 0, got -1"):
        load_config(DiffusionStageConfig, "small", ["decoder.anchor=-1"], stage="train")
