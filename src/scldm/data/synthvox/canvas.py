"""Drawing primitives of the SynthVox renderer: shapes in face units and the posed pen.

Face units: origin between the eyes, x right, y down, 1 = the side of the image. The `Pen`
poses every shape (yaw as depth parallax, roll, shift, scale) and draws it on a supersampled
canvas; shapes marked solid also go to a mask that tells the shading pass where the head is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import ImageDraw

from scldm.data.synthvox.looks import Looks, Pose

CENTRE = (0.5, 0.47)  # where the point between the eyes sits in the image
ZOOM = 1.15  # framing: the head fills about half the image width, as in face-crop datasets


def ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 24) -> np.ndarray:
    """n points on an ellipse: (n, 2)."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], 1)


def arc(cx: float, cy: float, rx: float, ry: float, t0: float, t1: float, n: int = 12):
    """n points on an elliptic arc from angle t0 to t1 (y down: π/2 is the bottom): (n, 2)."""
    t = np.linspace(t0, t1, n)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], 1)


def rgba(colour, alpha: float = 1.0) -> tuple[int, int, int, int]:
    """An RGB float colour and an opacity in [0, 1] as a Pillow RGBA fill."""
    r, g, b = np.clip(np.asarray(colour, float), 0, 255).round().astype(int).tolist()
    return r, g, b, round(255 * float(np.clip(alpha, 0, 1)))


@dataclass
class Pen:
    """Poses shapes given in face units and draws them on the supersampled canvas."""

    draw: ImageDraw.ImageDraw
    mask: ImageDraw.ImageDraw  # head, neck and hair: where the face light and shading apply
    side: int  # canvas pixels
    pose: Pose
    hw: float  # head half-width: yaw parallax is measured in it

    def xy(self, pts, depth: float) -> list[tuple[float, float]]:
        p, pts = self.pose, np.asarray(pts, dtype=np.float64)
        x = pts[:, 0] + p.yaw * depth * self.hw  # nearer parts move further when the head turns
        c, s = np.cos(p.roll), np.sin(p.roll)
        k = p.scale * ZOOM
        px = (CENTRE[0] + p.dx + k * (c * x - s * pts[:, 1])) * self.side
        py = (CENTRE[1] + p.dy + k * (s * x + c * pts[:, 1])) * self.side
        return list(zip(px.tolist(), py.tolist(), strict=True))

    def poly(self, pts, fill, depth: float = 0.0, *, solid: bool = False) -> None:
        xy = self.xy(pts, depth)
        self.draw.polygon(xy, fill=fill)
        if solid:
            self.mask.polygon(xy, fill=255)

    def line(self, pts, fill, width: float, depth: float = 0.0) -> None:
        w = max(1, round(width * self.side * self.pose.scale * ZOOM))
        self.draw.line(self.xy(pts, depth), fill=fill, width=w, joint="curve")


# --- Head ------------------------------------------------------------------------------------


def head_outline(lk: Looks, n: int = 72) -> np.ndarray:
    """Head contour (n, 2), clockwise from the right temple: a superellipse cranium over a jaw
    whose squareness and chin width follow gender and size; cheeks fill out with size, jowls
    sag with age."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    c, s = np.cos(t), np.sin(t)
    expo = np.where(s > 0, 2 / lk.jaw_square, 2 / 2.3)
    x = lk.hw * np.sign(c) * np.abs(c) ** expo
    y = np.where(s > 0, lk.hh, 1.05 * lk.hh) * np.sign(s) * np.abs(s) ** expo
    v = np.clip(y / lk.hh, 0, 1)  # 0 at the eyes, 1 at the chin
    bulge = lk.cheeks * np.exp(-(((v - 0.45) / 0.25) ** 2))
    bulge += lk.jowls * np.exp(-(((v - 0.78) / 0.14) ** 2))
    return np.stack([x * (1 - lk.chin_taper * v**3) * (1 + bulge), y], 1)
