"""Hair of a SynthVox portrait: the hairline by style, hair behind the head (medium and long),
the cap over the scalp with side locks, curls, receding temples and baldness."""

from __future__ import annotations

import numpy as np

from scldm.data.synthvox.canvas import Pen, arc, ellipse, rgba
from scldm.data.synthvox.looks import Looks


def _hairline(lk: Looks, x: np.ndarray) -> np.ndarray:
    """y of the front hairline at x (|x| ≤ temple), by hairstyle; receding temples in men."""
    hh, reach = lk.hh, 0.9 * lk.hw
    centre = -0.78 * hh - 0.25 * lk.recede * hh
    temple = -0.42 * hh - 0.45 * lk.recede * hh
    r = np.clip(np.abs(x) / reach, 0, 1)
    if lk.hairstyle == "fringe":  # bangs cut straight above the brows
        return -0.4 * hh + 0.08 * hh * r**4 + 0.012 * np.abs(np.sin(x * 140))
    if lk.hairstyle == "middle_part":  # curtains parted at the centre
        return centre - 0.08 * hh + (temple - centre + 0.1 * hh) * r**0.7
    if lk.hairstyle == "side_part":  # swept across the forehead from a part on the left
        part = -0.45 * lk.hw
        sweep = np.clip((x - part) / (reach - part), 0, 1)
        near = np.clip((part - x) / (reach + part), 0, 1)
        return np.where(
            x > part,
            centre - 0.05 * hh + (temple - centre + 0.18 * hh) * sweep**0.6,
            centre - 0.05 * hh + (temple - centre) * near**1.5,
        )
    return centre + (temple - centre) * r**2  # curly


def _curls(pen: Pen, contour: np.ndarray, radius: float, fill, depth: float) -> None:
    """Round curls along a contour: discs every 1.3 radii of its length (a scalloped edge)."""
    steps = np.hypot(*np.diff(contour, axis=0).T)
    at = np.concatenate([[0], np.cumsum(steps)])
    s = np.arange(0, at[-1], 1.3 * radius)
    for x, y in zip(np.interp(s, at, contour[:, 0]), np.interp(s, at, contour[:, 1]), strict=True):
        pen.poly(ellipse(x, y, radius, radius, 10), fill, depth, solid=True)


def back(pen: Pen, lk: Looks) -> None:
    """Hair behind the head and neck: medium falls to the jaw, long past the shoulders."""
    if lk.hair_length not in ("medium", "long"):
        return
    vol, hw, hh = lk.hair_volume, lk.hw, lk.hh
    long = lk.hair_length == "long"
    bottom = hh + (0.28 if long else 0.02)
    top = arc(0, -0.1 * hh, hw + vol, 0.95 * hh + vol, np.pi, 2 * np.pi, 20)
    out = hw + vol * (1.6 if long else 1.2)
    sides = [(hw + vol, 0.0), (out, 0.5 * hh), (out * (1.15 if long else 1.0), bottom - 0.05)]
    sides += [(out * 0.9, bottom - 0.01), (hw * 0.6, bottom)]
    pts = np.concatenate([top, sides, [(-x, y) for x, y in reversed(sides)]])
    pen.poly(pts, rgba(lk.hair * 0.82), -0.3, solid=True)
    if lk.hairstyle == "curly":
        _curls(pen, pts, vol * 0.5, rgba(lk.hair * 0.82), -0.3)


def front(pen: Pen, lk: Looks, outline: np.ndarray) -> None:
    """The hair over the scalp (cap), and side locks over the cheeks for medium and long hair."""
    hw, hh, colour = lk.hw, lk.hh, rgba(lk.hair)
    if lk.hair_length == "bald":  # a fringe of hair above the ears, a shine on the scalp
        for side in (-1, 1):
            band = [
                (side * hw * 0.93, -0.45 * hh),
                (side * hw * 1.05, -0.35 * hh),
                (side * hw * 1.03, 0.1 * hh),
                (side * hw * 0.95, 0.05 * hh),
            ]
            pen.poly(np.array(band), rgba(lk.hair, 0.9), -0.2)
        pen.poly(
            ellipse(-0.25 * hw, -0.85 * hh, hw * 0.3, 0.12 * hh), rgba((255, 255, 255), 0.12), 0.2
        )
        return
    vol = lk.hair_volume * (1.6 if lk.hairstyle == "curly" else 1.0)
    low = 0.12 * hh if lk.hair_length == "short" else -0.1 * hh  # sideburns (short) or locks
    upper = outline[outline[:, 1] < low]
    # order left → over the top → right: angles measured from straight down
    upper = upper[np.argsort((np.arctan2(upper[:, 1], upper[:, 0]) - np.pi / 2) % (2 * np.pi))]
    centre = np.array([0.0, -0.1 * hh])
    d = upper - centre
    outer = centre + d * (1 + vol / np.hypot(d[:, 0], d[:, 1]))[:, None]
    x = np.linspace(0.9 * hw, -0.9 * hw, 25)
    inner = np.concatenate(
        [[(0.93 * hw, low)], np.stack([x, _hairline(lk, x)], 1), [(-0.93 * hw, low)]]
    )
    pen.poly(np.concatenate([outer, inner]), colour, 0.2, solid=True)
    if lk.hairstyle == "curly":
        _curls(pen, np.concatenate([outer, inner[1:-1]]), vol * 0.4, colour, 0.2)
    streak = rgba(lk.hair * 0.7 + 8, 0.5)  # a few strands give the style a direction
    for i in np.linspace(-0.7, 0.7, 5):
        if lk.hairstyle == "side_part":
            pen.line(
                arc(
                    -0.45 * hw,
                    -0.35 * hh,
                    (0.3 + 0.5 * abs(i)) * hw,
                    0.5 * hh,
                    1.15 * np.pi,
                    1.9 * np.pi,
                    6,
                ),
                streak,
                0.003,
                0.2,
            )
        elif lk.hairstyle == "middle_part":
            pen.line(
                [(0, -1.0 * hh), (i * hw * 0.6, -0.75 * hh), (np.sign(i) * 0.8 * hw, -0.45 * hh)],
                streak,
                0.003,
                0.2,
            )
        elif lk.hairstyle == "fringe":
            pen.line([(i * hw * 0.8, -0.9 * hh), (i * hw * 0.85, -0.45 * hh)], streak, 0.003, 0.3)
    if lk.hairstyle in ("middle_part", "side_part"):  # the parting shows skin
        px = 0.0 if lk.hairstyle == "middle_part" else -0.45 * hw
        pen.line(
            [(px, -1.05 * hh - vol), (px, _hairline(lk, np.array([px]))[0] - 0.01)],
            rgba(lk.skin * 0.85, 0.8),
            0.004,
            0.2,
        )
    if lk.hair_length in ("medium", "long"):
        bottom = hh * 0.95 if lk.hair_length == "medium" else hh * 1.25
        for side in (-1, 1):
            inner = 0.82 if lk.female else 0.9
            lock = [
                (side * 0.9 * hw, -0.5 * hh),
                (side * inner * hw, 0.3 * hh),
                (side * (inner + 0.05) * hw, bottom),
                (side * (hw + vol), bottom),
                (side * (hw + vol), -0.4 * hh),
            ]
            lock = np.array(lock)
            pen.poly(lock, colour, 0.1, solid=True)
            if lk.hairstyle == "curly":
                _curls(pen, lock, vol * 0.4, colour, 0.1)
