"""Face image I/O: load any image as RGB, crop and resize, convert to/from [-1, 1] tensors,
captioned grids for reports, a crop around a point (AVSpeech's face centre), and dlib HOG
detection + 5-point alignment when the `eval` extra is installed."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont, ImageOps, UnidentifiedImageError

from scldm.errors import InputError, require
from scldm.io import atomic_path

MIN_FACE_SIDE = 16  # smaller images hold no usable face

Image.MAX_IMAGE_PIXELS = 200_000_000


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)  # 16/32-bit grayscale: scale to 8 bits
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    elif img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.clip(arr * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")  # transparent pixels become white, not black
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img if img.mode == "RGB" else img.convert("RGB")


def load_face(path: str | Path) -> Image.Image:
    """Open a jpg/png/webp/... image as an 8-bit RGB `PIL.Image` (EXIF rotation applied)."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such file")
    if path.is_dir():
        raise InputError(path, "is a directory, not an image")
    if path.stat().st_size == 0:
        raise InputError(path, "empty file")
    try:
        with Image.open(path) as img:
            img.load()
            # in place: without an orientation tag exif_transpose would return a copy
            ImageOps.exif_transpose(img, in_place=True)
            rgb = _to_rgb(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise InputError(path, f"not a readable image ({e})") from None
    if min(rgb.size) < MIN_FACE_SIDE:
        w, h = rgb.size
        raise InputError(path, f"image is {w}x{h}; a face needs at least {MIN_FACE_SIDE} px a side")
    return rgb


def center_crop_resize(img: Image.Image, size: int) -> Image.Image:
    """The largest centred square, resized to size × size (Lanczos, anti-aliased)."""
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    square = img.crop((left, top, left + side, top + side))
    return square if side == size else square.resize((size, size), Image.Resampling.LANCZOS)


def crop_around(img: Image.Image, x: float, y: float, *, scale: float = 0.5) -> Image.Image:
    """A square of side `scale`·min(W, H) centred on the normalised point (x, y) in [0, 1].

    Parts that fall outside the frame are filled by replicating the border (no black bars).
    """
    if not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
        raise ValueError(f"face centre ({x}, {y}) is not normalised to [0, 1]")
    w, h = img.size
    side = max(1, round(scale * min(w, h)))
    left, top = round(x * w - side / 2), round(y * h - side / 2)
    pad = max(0, -left, -top, left + side - w, top + side - h)
    if pad:
        arr = np.pad(np.asarray(img), ((pad, pad), (pad, pad), (0, 0)), mode="edge")
        img, left, top = Image.fromarray(arr), left + pad, top + pad
    return img.crop((left, top, left + side, top + side))


def to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB image → (3, H, W) float32 in [-1, 1], contiguous."""
    arr = np.asarray(img if img.mode == "RGB" else img.convert("RGB"))  # (H, W, 3) uint8
    # channels first while still uint8 (a quarter of the bytes), so the batch `collate` stacks
    # is a plain copy; the arithmetic is the same as ever: u / 127.5 - 1 in float32
    chw = torch.from_numpy(arr.transpose(2, 0, 1).copy())  # (3, H, W)
    return chw.float().div_(127.5).sub_(1.0)


def to_pil(face: torch.Tensor) -> Image.Image:
    """(3, H, W) tensor in [-1, 1] → RGB image (values outside the range are clipped)."""
    arr = ((face.detach().float().cpu().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return Image.fromarray(arr.permute(1, 2, 0).numpy(), "RGB")


def load_face_tensor(path: str | Path, size: int) -> torch.Tensor:
    """Load, centre-crop and resize a face image: (3, size, size) in [-1, 1]."""
    return to_tensor(center_crop_resize(load_face(path), size))


@lru_cache(maxsize=4)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the bitmap font
        return ImageFont.load_default()


def make_grid(
    images: Sequence[Image.Image | torch.Tensor],
    *,
    ncols: int,
    captions: Sequence[str] | None = None,
    pad: int = 2,
    caption_height: int | None = None,
) -> Image.Image:
    """Tile images (PIL or (3, H, W) tensors in [-1, 1]) into a grid, each with a caption above it.

    Images are shown at the size of the first one. Returns an RGB image on a white background.
    """
    if not images:
        raise ValueError("make_grid needs at least one image")
    pils = [to_pil(im) if isinstance(im, torch.Tensor) else im.convert("RGB") for im in images]
    w, h = pils[0].size
    pils = [p if p.size == (w, h) else p.resize((w, h), Image.Resampling.LANCZOS) for p in pils]
    if captions is not None and len(captions) != len(pils):
        raise ValueError(f"{len(captions)} captions for {len(pils)} images")
    cap_h = 0 if captions is None else (caption_height or max(10, min(16, w // 6)) + 4)
    nrows = -(-len(pils) // ncols)
    grid = Image.new("RGB", (ncols * (w + pad) + pad, nrows * (h + cap_h + pad) + pad), "white")
    draw = ImageDraw.Draw(grid)
    font = _font(cap_h - 4) if cap_h else None
    for i, im in enumerate(pils):
        r, c = divmod(i, ncols)
        x, y = pad + c * (w + pad), pad + r * (h + cap_h + pad)
        if captions is not None:
            draw.text((x + 1, y + 1), captions[i], fill="black", font=font)
        grid.paste(im, (x, y + cap_h))
    return grid


def save_image(img: Image.Image, path: str | Path, **kwargs) -> Path:
    """Write an image atomically (temporary name, then rename)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        img.save(tmp, format=Image.registered_extensions().get(path.suffix.lower()), **kwargs)
    return path


# --- Detection and alignment (optional: the `eval` extra) ------------------------------------


def _dlib_model_dir() -> Path:
    # importing face_recognition_models needs pkg_resources, which new setuptools lacks
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise InputError(
            None,
            "face-recognition-models is not installed; install it with: pip install 'scldm[eval]'",
        )
    return Path(list(spec.submodule_search_locations)[0]) / "models"


@lru_cache(maxsize=1)
def _dlib_models():
    dlib = require("dlib", package="dlib-bin")
    predictor = dlib.shape_predictor(
        str(_dlib_model_dir() / "shape_predictor_5_face_landmarks.dat")
    )
    return dlib, dlib.get_frontal_face_detector(), predictor


def detect_faces(img: Image.Image, *, upsample: int = 1) -> list[tuple[int, int, int, int]]:
    """Face boxes (left, top, right, bottom) from dlib's HOG detector, largest first."""
    _, detector, _ = _dlib_models()
    rects = detector(np.asarray(img.convert("RGB")), upsample)
    boxes = [(r.left(), r.top(), r.right(), r.bottom()) for r in rects]
    return sorted(boxes, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]), reverse=True)


def align_face(
    img: Image.Image,
    size: int,
    *,
    box: tuple[int, int, int, int] | None = None,
    near: tuple[float, float] | None = None,
    padding: float = 0.25,
) -> Image.Image | None:
    """Detect a face, fit dlib's 5 landmarks and return an aligned size × size crop.

    `box` skips detection; `near` (normalised x, y) picks the detected face closest to that
    point (AVSpeech gives the speaker's face centre). Returns None when no face is found.
    """
    dlib, _, predictor = _dlib_models()
    rgb = np.asarray(img.convert("RGB"))
    if box is None:
        boxes = detect_faces(img)
        if not boxes:
            return None
        if near is not None:
            px, py = near[0] * img.width, near[1] * img.height
            box = min(
                boxes, key=lambda b: ((b[0] + b[2]) / 2 - px) ** 2 + ((b[1] + b[3]) / 2 - py) ** 2
            )
        else:
            box = boxes[0]
    shape = predictor(rgb, dlib.rectangle(*box))
    chip = dlib.get_face_chip(rgb, shape, size=size, padding=padding)
    return Image.fromarray(chip)
