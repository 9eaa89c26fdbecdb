"""FaceEncoder (VGG-16 with a latent bottleneck) and FaceDecoder: shapes, gradients,
save/load, and loading VGGFace weights in both key layouts."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from scldm.errors import InputError
from scldm.models.blocks import VGG16_WIDTHS
from scldm.models.face_decoder import FACE_DECODER_PRESETS, FaceDecoder
from scldm.models.face_encoder import FACE_ENCODER_PRESETS, VGGFACE_MEAN_RGB, FaceEncoder

DEFAULT_DECODER_WIDTHS = FaceDecoder().config.widths
CONV_NAMES = [
    f"conv{b}_{i}" for b, n in enumerate((2, 2, 3, 3, 3), start=1) for i in range(1, n + 1)
]
TV_INDICES = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]  # torchvision vgg16 `features`


def faces(batch: int, height: int = 32, width: int = 32) -> torch.Tensor:
    return torch.rand(batch, 3, height, width) * 2 - 1


def assert_all_grads(model: torch.nn.Module) -> None:
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


# --- Shapes, gradients, save/load --------------------------------------------------------------


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("size", [(32, 32), (64, 96)])
def test_face_encoder_and_decoder_shapes(batch, size):
    encoder = FaceEncoder(**FACE_ENCODER_PRESETS["tiny"])
    decoder = FaceDecoder(**FACE_DECODER_PRESETS["tiny"])
    out = encoder(faces(batch, *size))
    assert out.latents.shape == (batch, 4, size[0] // 4, size[1] // 4)  # tiny: after block 2
    assert encoder.downsampling == 4
    assert out.embedding.shape == (batch, 16)
    image = decoder(out.latents)
    assert image.shape == (batch, 3, *size)
    assert image.abs().max() <= 1
    assert torch.equal(encoder.embed(out.latents), out.embedding)


def test_latent_and_embedding_layers_split_the_encoder_and_the_latent_path_is_encode():
    encoder = FaceEncoder(**FACE_ENCODER_PRESETS["tiny"])
    latent, embedding = encoder.latent_layers(), encoder.embedding_layers()
    ids = [id(p) for part in (latent, embedding) for p in part.parameters()]
    assert sorted(ids) == sorted(id(p) for p in encoder.parameters())  # each exactly once
    face = faces(2)
    out = encoder(face)
    (out.latents.sum()).backward()  # the latent depends on the latent layers only
    assert all(p.grad is not None for p in latent.parameters())
    assert all(p.grad is None for p in embedding.parameters())


def test_face_encoder_rejects_sizes_not_multiple_of_32():
    with pytest.raises(ValueError, match="multiples of 32"):
        FaceEncoder(**FACE_ENCODER_PRESETS["tiny"]).encode(faces(1, 48, 48))


@pytest.mark.parametrize("batch_norm", [False, True])
def test_face_models_gradient_reaches_every_parameter(batch_norm):
    encoder = FaceEncoder(**FACE_ENCODER_PRESETS["tiny"], batch_norm=batch_norm)
    decoder = FaceDecoder(**FACE_DECODER_PRESETS["tiny"], batch_norm=batch_norm)
    face = faces(3)
    out = encoder(face)
    loss = (out.embedding * torch.randn_like(out.embedding)).sum()
    loss = loss + (decoder(out.latents) - face).abs().mean()
    loss.backward()
    assert_all_grads(encoder)
    assert_all_grads(decoder)


def test_face_encoder_vggface_normalisation_is_0_255_minus_the_mean_face():
    plain = FaceEncoder(**FACE_ENCODER_PRESETS["tiny"])
    vgg = FaceEncoder(**{**FACE_ENCODER_PRESETS["tiny"], "vggface_normalisation": True})
    vgg.load_state_dict(plain.state_dict())
    face = faces(2)
    mean = torch.tensor(VGGFACE_MEAN_RGB).view(1, 3, 1, 1)
    manual = (face + 1) / 2 * 255 - mean
    assert torch.allclose(vgg.encode(face), plain.encode(manual), atol=1e-3)


def test_face_models_save_load_round_trip(tmp_path):
    encoder = FaceEncoder(**FACE_ENCODER_PRESETS["tiny"], batch_norm=True)
    decoder = FaceDecoder(**FACE_DECODER_PRESETS["tiny"])
    encoder(faces(4))  # move BatchNorm statistics
    decoder.register_to_config(scaling_factor=0.5)  # what stage 2 does: the one place it lives
    encoder.eval().save_pretrained(tmp_path / "enc")
    decoder.save_pretrained(tmp_path / "dec")
    encoder2 = FaceEncoder.from_pretrained(tmp_path / "enc").eval()
    decoder2 = FaceDecoder.from_pretrained(tmp_path / "dec")
    assert decoder2.config.scaling_factor == 0.5 and "scaling_factor" not in encoder2.config
    face = faces(2)
    with torch.no_grad():
        a, b = encoder(face), encoder2(face)
        assert torch.equal(a.latents, b.latents) and torch.equal(a.embedding, b.embedding)
        assert torch.equal(decoder(a.latents), decoder2(a.latents))


def test_an_older_face_encoder_config_with_a_latent_scale_still_loads(tmp_path, capfd):
    import json

    encoder = FaceEncoder(**FACE_ENCODER_PRESETS["tiny"]).eval()
    encoder.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert "scaling_factor" not in config
    (tmp_path / "config.json").write_text(json.dumps({**config, "scaling_factor": 1.0}))
    capfd.readouterr()
    loaded = FaceEncoder.from_pretrained(tmp_path).eval()
    assert "scaling_factor" not in loaded.config
    assert "scaling_factor" not in capfd.readouterr().err  # no "not expected" warning
    face = faces(2)
    with torch.no_grad():
        assert torch.equal(loaded.encode(face), encoder.encode(face))


def test_presets_keep_the_vgg16_structure_and_the_decoder_mirrors_the_encoder():
    for name in ("tiny", "small", "small_h4_wide"):
        encoder = FaceEncoder(**FACE_ENCODER_PRESETS[name])
        assert [k for k in encoder._vgg_targets() if k.startswith("conv")] == CONV_NAMES
    # decoder preset → the encoder preset it mirrors (small_h4_mid, stage 2's new decoder for
    # small_h4's latents, has no encoder of its own)
    mirrors = {n: n for n in ("tiny", "small", "small_h4", "small_h4_wide", "base")}
    for name, enc_name in {**mirrors, "small_h4_mid": "small_h4"}.items():
        widths = FACE_ENCODER_PRESETS[enc_name].get("widths", VGG16_WIDTHS)
        decoder_widths = FACE_DECODER_PRESETS[name].get("widths", DEFAULT_DECODER_WIDTHS)
        # the blocks up to the latent mirrored: the same pools and convs, each width the
        # encoder's times one factor (small's decoder is twice, small_h4's three times,
        # small_h4_wide's twice and small_h4_mid four times as wide)
        blocks = FACE_ENCODER_PRESETS[enc_name].get("latent_after_block", 3)
        pools = [i for i, w in enumerate(widths) if w == "M"]
        enc = tuple(widths[: pools[blocks - 1] + 1])
        assert [w == "M" for w in decoder_widths] == [w == "M" for w in enc]
        ratios = {d / e for d, e in zip(decoder_widths, enc, strict=True) if e != "M"}
        factor = {"small": 2.0, "small_h4": 3.0, "small_h4_wide": 2.0, "small_h4_mid": 4.0}
        assert ratios == {factor.get(name, 1.0)}


# --- VGGFace weights ---------------------------------------------------------------------------


def fake_vgg_state(encoder: FaceEncoder, layout: str, *, fc_width: int | None = None) -> dict:
    """A state dict with VGGFace's names and this encoder's shapes (random values)."""
    convs = [t[1] for k, t in encoder._vgg_targets().items() if k.startswith("conv")]
    state = {}
    for name, index, conv in zip(CONV_NAMES, TV_INDICES, convs, strict=True):
        key = name if layout == "dag" else f"features.{index}"
        state[f"{key}.weight"] = torch.randn_like(conv.weight)
        state[f"{key}.bias"] = torch.randn_like(conv.bias)
    fc6, fc7 = encoder.fc6.out_features, encoder.fc7.out_features
    if fc_width is not None:
        fc6 = fc7 = fc_width
    fc_shapes = {"fc6": (fc6, encoder.fc6.in_features), "fc7": (fc7, fc6), "fc8": (2622, fc7)}
    for i, (name, shape) in enumerate(fc_shapes.items()):
        key = name if layout == "dag" else f"classifier.{3 * i}"
        state[f"{key}.weight"] = torch.randn(shape)
        state[f"{key}.bias"] = torch.randn(shape[0])
    return state


@pytest.mark.parametrize("layout", ["dag", "torchvision"])
def test_load_vggface_both_layouts(tmp_path, layout):
    encoder = FaceEncoder(**FACE_ENCODER_PRESETS["tiny"])
    state = fake_vgg_state(encoder, layout)
    path = tmp_path / "vgg_face_dag.pth"
    torch.save(state, path)
    report = encoder.load_vggface(path)
    assert report["layout"] == ("vgg_face_dag" if layout == "dag" else "torchvision")
    assert report["loaded"] == [*CONV_NAMES, "fc6", "fc7"]
    assert list(report["skipped"]) == ["fc8"]
    assert report["new"] == ["to_latent", "from_latent", "proj"]
    first = "conv1_1" if layout == "dag" else "features.0"
    assert torch.equal(encoder.latent_blocks[0].conv.weight, state[f"{first}.weight"])
    last = "conv5_3" if layout == "dag" else "features.28"
    assert torch.equal(encoder.embed_blocks[-2].conv.bias, state[f"{last}.bias"])
    fc7 = "fc7" if layout == "dag" else "classifier.3"
    assert torch.equal(encoder.fc7.weight, state[f"{fc7}.weight"])


def test_load_vggface_skips_fc_layers_of_another_shape_and_reads_safetensors(tmp_path):
    encoder = FaceEncoder(**FACE_ENCODER_PRESETS["tiny"])
    path = tmp_path / "vgg.safetensors"
    save_file(fake_vgg_state(encoder, "dag", fc_width=4096), str(path))
    report = encoder.load_vggface(path)
    assert report["loaded"] == CONV_NAMES
    assert "(4096, 16)" in report["skipped"]["fc6"] and "(32, 16)" in report["skipped"]["fc6"]
    assert "(4096, 4096)" in report["skipped"]["fc7"]
    assert report["new"] == ["to_latent", "from_latent", "fc6", "fc7", "proj"]


def bad_file(tmp_path, kind: str):
    encoder = FaceEncoder(**FACE_ENCODER_PRESETS["tiny"])
    path = tmp_path / f"{kind}.pth"
    if kind == "random_bytes":
        path.write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8).numpy().tobytes())
    elif kind == "wrong_keys":
        torch.save({"encoder.layer1.weight": torch.zeros(3)}, path)
    elif kind == "unknown_extra_key":
        torch.save({**fake_vgg_state(encoder, "dag"), "conv6_1.weight": torch.zeros(1)}, path)
    elif kind == "wrong_conv_shape":
        state = fake_vgg_state(encoder, "torchvision")
        state["features.10.weight"] = torch.zeros(64, 8, 3, 3)
        torch.save(state, path)
    elif kind == "missing_conv":
        state = fake_vgg_state(encoder, "dag")
        del state["conv3_2.weight"]
        torch.save(state, path)
    elif kind == "not_a_dict":
        torch.save([torch.zeros(2)], path)
    return encoder, path


@pytest.mark.parametrize(
    "kind, message",
    [
        ("random_bytes", "not a readable weight file"),
        ("wrong_keys", "neither vgg_face_dag"),
        ("unknown_extra_key", "unknown keys"),
        ("wrong_conv_shape", r"features\.10\.weight \(conv3_1\)"),
        ("missing_conv", "missing conv3_2"),
        ("not_a_dict", "not a state dict"),
    ],
)
def test_load_vggface_rejects_bad_files_naming_them(tmp_path, kind, message):
    encoder, path = bad_file(tmp_path, kind)
    with pytest.raises(InputError, match=message) as info:
        encoder.load_vggface(path)
    assert str(path) in str(info.value)


def test_load_vggface_missing_file(tmp_path):
    with pytest.raises(InputError, match="no such weight file"):
        FaceEncoder(**FACE_ENCODER_PRESETS["tiny"]).load_vggface(tmp_path / "absent.pth")


@pytest.mark.parametrize("after_block", [1, 2, 3, 4])
def test_the_latent_can_sit_after_any_of_the_first_four_blocks(after_block):
    config = {**FACE_ENCODER_PRESETS["tiny"], "latent_after_block": after_block}
    encoder = FaceEncoder(**config)
    out = encoder(faces(2))
    side = 32 // 2**after_block
    assert out.latents.shape == (2, 4, side, side) and out.embedding.shape == (2, 16)
    # the decoder mirroring the same blocks brings the latent back to the image size
    widths = config["widths"][: 3 * after_block + (after_block > 2) * (after_block - 2)]
    decoder = FaceDecoder(widths=widths, image_size=32)
    assert decoder(out.latents).shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match="latent_after_block"):
        FaceEncoder(**{**config, "latent_after_block": 5})


def test_residual_decoder_adds_blocks_per_level_and_every_parameter_trains():
    residual = FaceDecoder(widths=(4, 4, "M", 8, 8, "M"), image_size=32, res_blocks=2)
    blocks = [m for m in residual.modules() if type(m).__name__ == "ResBlock"]
    assert len(blocks) == 1 + 2 * 2  # one at the latent's resolution, res_blocks per level
    latents = torch.randn(2, 4, 8, 8)
    out = residual(latents)
    assert out.shape == (2, 3, 32, 32) and out.abs().max() <= 1
    out.square().mean().backward()
    assert_all_grads(residual)
    # without residual blocks the decoder is the plain VGG mirror (older exports load unchanged)
    plain = FaceDecoder(widths=(4, 4, "M", 8, 8, "M"), image_size=32)
    assert not [m for m in plain.modules() if type(m).__name__ == "ResBlock"]


# --- The decoder's position bias ---------------------------------------------------------------


def test_position_bias_starts_at_zero_so_the_decoder_is_the_plain_one():
    kwargs = {"widths": (4, 4, "M", 8, 8, "M"), "image_size": 32}
    torch.manual_seed(0)
    plain = FaceDecoder(**kwargs).eval()
    torch.manual_seed(0)
    biased = FaceDecoder(**kwargs, position_bias=True).eval()
    assert plain.bias_image is None and biased.bias_image.shape == (3, 32, 32)
    z = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        assert torch.equal(plain(z), biased(z))


def test_position_bias_is_saved_and_resized_for_faces_of_another_size(tmp_path):
    decoder = FaceDecoder(widths=(4, 4, "M", 8, 8, "M"), image_size=32, position_bias=True)
    with torch.no_grad():
        decoder.bias_image.normal_()
    decoder.eval().save_pretrained(tmp_path)
    loaded = FaceDecoder.from_pretrained(tmp_path).eval()
    assert torch.equal(loaded.bias_image, decoder.bias_image)
    z = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(z), decoder(z))
        # a 16 × 24 latent decodes to 64 × 96 px with the bias stretched over it
        assert loaded(torch.randn(1, 4, 16, 24)).shape == (1, 3, 64, 96)


def test_position_bias_learns_what_every_face_shares_at_fixed_pixels():
    """Targets share a pattern of single dark pixels at fixed places (eyes, a mouth) whatever
    the latent: with the bias the decoder learns it within 150 steps; a convolutional decoder
    without it, equivariant to shifts but for its borders, does not."""
    g = torch.Generator().manual_seed(0)
    target = torch.full((3, 32, 32), 0.5)
    for y, x in ((12, 10), (12, 21), (22, 15), (22, 16)):
        target[:, y, x] = -0.8
    latents = torch.randn(64, 4, 8, 8, generator=g)
    errors = {}
    for bias in (False, True):
        torch.manual_seed(0)
        decoder = FaceDecoder(widths=(4, 4, "M", 8, 8, "M"), image_size=32, position_bias=bias)
        opt = torch.optim.Adam(decoder.parameters(), lr=3e-2)
        for _ in range(150):
            loss = (decoder(latents[:16]) - target).abs().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            out = decoder.eval()(latents[16:])  # latents it did not train on
        errors[bias] = (out[:, :, (12, 12, 22, 22), (10, 21, 15, 16)] - -0.8).abs().mean().item()
    assert errors[True] < 0.2 < errors[False], errors
