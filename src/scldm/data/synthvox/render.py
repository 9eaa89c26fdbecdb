"""Parametric, anti-aliased portraits of SynthVox speakers (numpy + Pillow).

Every shape is a polygon in face units (origin between the eyes, 1 = the image side), posed
(yaw as depth parallax, roll, shift, scale), drawn with Pillow at ≥ 4× the output size and
reduced with a Lanczos filter, which anti-aliases every edge; a numpy pass adds directional
light and shading. Head and jaw follow gender and size, hair length and style vary per speaker,
age greys the hair and lines the skin, some men have beards; skin, hair and eye colour,
hairstyle, glasses and background are the face-only attributes (see `looks.py`).
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from scldm.data.synthvox import hair, parts
from scldm.data.synthvox.attributes import Speaker
from scldm.data.synthvox.canvas import CENTRE, ZOOM, Pen, ellipse, head_outline, rgba
from scldm.data.synthvox.looks import Looks, Pose, looks_of, pose_of

CANVAS_MIN = 256  # draw at least this large before reducing: ≥ 4× at 64 px


def _shade(canvas: Image.Image, mask: Image.Image, lk: Looks, pose: Pose) -> Image.Image:
    """Light from one side and a soft fall-off towards the rim of the head and hair; a faint
    gradient and vignette on the background."""
    side = canvas.size[0]
    img = np.asarray(canvas, dtype=np.float32)
    solid = np.asarray(mask, dtype=np.float32)[:, :, None] / 255  # (H, W, 1)
    coords = (np.arange(side, dtype=np.float32) + 0.5) / side
    x = (coords - CENTRE[0] - pose.dx) / (pose.scale * ZOOM * lk.hw)  # in head half-widths
    y = (coords - CENTRE[1] - pose.dy) / (pose.scale * ZOOM * lk.hh)
    rim = np.hypot(x[None, :] / 1.05, y[:, None] / 1.1)  # (H, W) elliptical radius
    head = 1 + 0.15 * pose.light * np.clip(x, -1.3, 1.3)[None, :]
    head = head - 0.2 * np.clip((rim - 0.6) / 0.45, 0, 1) ** 2
    back = 1 + 0.04 * pose.light * x[None, :] - 0.05 * np.clip(rim - 2, 0, 2)
    shade = pose.brightness * (solid * head[:, :, None] + (1 - solid) * back[:, :, None])
    return Image.fromarray(np.clip(img * shade, 0, 255).astype(np.uint8), "RGB")


def render(lk: Looks, pose: Pose, size: int) -> Image.Image:
    """Draw one portrait of appearance `lk` in pose `pose`: an RGB image of size × size."""
    ss = max(2, -(-CANVAS_MIN // size))
    side = size * ss
    canvas = Image.new(
        "RGB", (side, side), tuple(np.clip(lk.background, 0, 255).astype(int).tolist())
    )
    mask = Image.new("L", (side, side), 0)
    pen = Pen(ImageDraw.Draw(canvas, "RGBA"), ImageDraw.Draw(mask), side, pose, lk.hw)
    outline = head_outline(lk)
    parts.body(pen, lk, pose)
    hair.back(pen, lk)
    parts.ears(pen, lk)
    pen.poly(outline, rgba(lk.skin), solid=True)
    if lk.makeup > 0 or lk.female:  # a touch of colour on the cheeks
        for s in (-1, 1):
            pen.poly(
                ellipse(s * lk.hw * 0.55, 0.45 * lk.hh, 0.035, 0.022),
                rgba((230, 110, 110), 0.12),
                0.5,
            )
    parts.age_lines(pen, lk)
    parts.beard(pen, lk, outline)
    parts.nose(pen, lk)
    parts.mouth(pen, lk, pose)
    parts.eyes(pen, lk, pose)
    hair.front(pen, lk, outline)
    parts.glasses(pen, lk)
    canvas = _shade(canvas, mask, lk, pose)
    return canvas.resize((size, size), Image.Resampling.LANCZOS)


def render_face(speaker: Speaker, image: int, size: int) -> Image.Image:
    """Portrait `image` of `speaker`, size × size RGB; deterministic in (seed, speaker, image)."""
    return render(looks_of(speaker), pose_of(speaker, image), size)
