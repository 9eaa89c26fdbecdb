"""The parts of a SynthVox portrait other than hair: body and neck, ears, eyes and brows, nose,
mouth, age lines, beard and glasses. Each draws with a posed `Pen` from a speaker's `Looks` (and,
for expression and gaze, the image's `Pose`)."""

from __future__ import annotations

import numpy as np

from scldm.data.synthvox.canvas import Pen, arc, ellipse, rgba
from scldm.data.synthvox.looks import Looks, Pose

# --- Body -------------------------------------------------------------------------------------


def body(pen: Pen, lk: Looks, pose: Pose) -> None:
    top, nw, sw = lk.hh + 0.07, lk.neck, lk.shoulders
    torso = [(-nw * 1.3, top), (-sw * 0.75, top + 0.03), (-sw, top + 0.1), (-sw * 1.08, 0.7)]
    torso = np.array(torso + [(-x, y) for x, y in reversed(torso)])
    pen.poly(torso, rgba(pose.clothes))
    collar = arc(0, top - 0.01, nw * 1.35, 0.07, np.pi, 0)  # round neckline, skin shows
    pen.poly(
        np.concatenate([[(-nw, 0.2 * lk.hh)], collar, [(nw, 0.2 * lk.hh)]]), rgba(lk.skin * 0.92)
    )
    shadow = [
        (-nw, 0.6 * lk.hh),
        (-nw * 1.02, lk.hh + 0.035),
        (nw * 1.02, lk.hh + 0.035),
        (nw, 0.6 * lk.hh),
    ]
    pen.poly(np.array(shadow), rgba(lk.skin * 0.5, 0.45))  # under the jaw
    if not lk.female:  # a hint of an Adam's apple
        pen.line(
            arc(0, top - 0.045, 0.008, 0.006, 0.2, np.pi - 0.2, 6),
            rgba(lk.skin * 0.75, 0.6),
            0.003,
        )


def ears(pen: Pen, lk: Looks) -> None:
    for side in (-1, 1):
        x = side * lk.hw * 0.97
        pen.poly(
            ellipse(x, 0.14 * lk.hh, 0.024, 0.05), rgba(lk.skin * 0.93), -0.6 * side, solid=True
        )
        pen.line(
            arc(x, 0.12 * lk.hh, 0.012, 0.03, -1.2, 1.2, 8) * [1, 1],
            rgba(lk.skin * 0.7, 0.6),
            0.003,
            -0.6 * side,
        )
        if lk.earrings:
            pen.poly(
                ellipse(x, 0.14 * lk.hh + 0.05, 0.007, 0.007, 10),
                rgba((225, 190, 80)),
                -0.6 * side,
            )


def eyes(pen: Pen, lk: Looks, pose: Pose) -> None:
    dark = rgba(np.minimum(lk.hair, 60) * 0.6)
    for side in (-1, 1):
        cx, w, h = side * lk.eye_dx, lk.eye_w, lk.eye_h
        upper = arc(cx, 0.004, w, h * 1.5, np.pi, 2 * np.pi, 12)
        lower = arc(cx, -0.002, w, h * 0.9, 0, np.pi, 12)
        white = np.concatenate([upper, lower])
        pen.poly(white, rgba((236, 232, 228)), 0.55)
        gaze = 0.25 * pose.yaw * w
        pen.poly(ellipse(cx + gaze, 0.0, h * 1.05, h * 1.05, 16), rgba(lk.eye), 0.6)
        pen.poly(ellipse(cx + gaze, 0.0, h * 0.45, h * 0.45, 10), rgba((15, 12, 12)), 0.6)
        pen.poly(
            ellipse(cx + gaze + 0.3 * h, -0.35 * h, h * 0.2, h * 0.2, 6),
            rgba((255, 255, 255), 0.9),
            0.6,
        )
        pen.line(upper, dark, 0.0035 + 0.003 * lk.makeup, 0.56)  # upper lid / eyeliner
        if lk.makeup > 0:  # lashes flick out at the outer corner
            pen.line(
                [upper[-1 if side > 0 else 0], (cx + side * w * 1.35, -h * 1.2)], dark, 0.004, 0.55
            )
        lid = arc(cx, -0.001, w * 1.05, h * 2.2, np.pi + 0.35, 2 * np.pi - 0.35, 10)
        pen.line(lid, rgba(lk.skin * 0.72, 0.5), 0.0025, 0.55)  # lid crease
        # brows: thicker, straighter and lower in men; greyed with the hair
        by = -lk.eye_h - lk.brow_lift
        bx = np.linspace(cx - side * w * 1.05, cx + side * w * 1.25, 8)
        arch = lk.brow_arch * np.sin(np.linspace(0.2, np.pi - 0.1, 8))
        top = np.stack([bx, by - arch - lk.brow_thick / 2], 1)
        bottom = np.stack([bx, by - arch + lk.brow_thick / 2], 1)
        bottom[-1, 1] -= lk.brow_thick * 0.6  # tapered tail
        pen.poly(np.concatenate([top, bottom[::-1]]), rgba(lk.hair * 0.75 + [10, 8, 6]), 0.6)


def nose(pen: Pen, lk: Looks) -> None:
    tip, w = lk.nose_len, lk.nose_w
    shade = rgba(lk.skin * 0.62, 0.7)
    pen.line(
        [(0.3 * w, 0.02), (0.45 * w, tip * 0.75), (0.8 * w, tip * 0.95)],
        rgba(lk.skin * 0.75, 0.5),
        0.003,
        0.9,
    )
    pen.line(arc(0, tip, w, w * 0.5, 0.15 * np.pi, 0.85 * np.pi, 10), shade, 0.004, 1.0)
    for side in (-1, 1):
        pen.poly(
            ellipse(side * w * 0.55, tip + 0.003, w * 0.28, w * 0.16, 10),
            rgba(lk.skin * 0.45, 0.8),
            0.95,
        )


def mouth(pen: Pen, lk: Looks, pose: Pose) -> None:
    my, w = lk.nose_len + 0.055, lk.mouth_w * (1 + 0.12 * max(pose.smile, 0))
    lift = 0.012 * pose.smile  # corners up when smiling
    up, lo = 0.008 * lk.lip_full, 0.011 * lk.lip_full
    x = np.linspace(-w, w, 13)
    k = (x / w) ** 2
    seam = my - lift * k + 0.004 * max(pose.smile, 0) * (1 - k)
    upper = np.stack([x, seam - up * (1 - k) * (1 + 0.4 * np.cos(np.pi * x / w * 1.6) ** 2)], 1)
    lower = np.stack([x, seam + lo * (1 - k**1.5)], 1)
    opening = max(pose.smile - 0.55, 0) * 0.03  # a broad smile shows teeth
    if opening > 0:
        gap = np.stack([x[2:-2], seam[2:-2] + opening * (1 - k[2:-2])], 1)
        pen.poly(
            np.concatenate([np.stack([x[2:-2], seam[2:-2]], 1), gap[::-1]]),
            rgba((240, 238, 232)),
            0.8,
        )
        lower[:, 1] += opening * (1 - k)
    pen.poly(np.concatenate([upper, np.stack([x, seam], 1)[::-1]]), rgba(lk.lips * 0.92), 0.8)
    pen.poly(
        np.concatenate([np.stack([x, seam + opening * (1 - k)], 1), lower[::-1]]),
        rgba(lk.lips),
        0.8,
    )
    pen.line(
        np.stack([x, seam], 1) if opening == 0 else upper[[0, -1]],
        rgba(lk.lips * 0.5, 0.8),
        0.0025,
        0.8,
    )


def age_lines(pen: Pen, lk: Looks) -> None:
    """Forehead lines, nasolabial folds, crow's feet, bags and marionette lines, deepening with
    age; age spots after 55."""
    a = lk.wrinkles
    if a <= 0:
        return
    line = rgba(lk.skin * 0.6, 0.3 + 0.6 * a)
    for i in range(1 + round(2 * a)):  # forehead
        y = -lk.hh * (0.36 + 0.09 * i) + 0.05
        pen.line(
            arc(0, y, lk.hw * (0.55 - 0.05 * i), 0.05, 1.25 * np.pi, 1.75 * np.pi, 10),
            line,
            0.005,
            0.3,
        )
    tip, mw = lk.nose_len, lk.mouth_w
    for side in (-1, 1):
        fold = [(side * lk.nose_w * 1.1, tip - 0.005), (side * mw * 0.95, tip + 0.035)]
        fold.append((side * mw * 1.15, tip + 0.075))
        pen.line(fold, rgba(lk.skin * 0.6, 0.2 + 0.7 * a), 0.0055, 0.7)  # nasolabial fold
        ex = side * (lk.eye_dx + lk.eye_w * 1.25)
        for dy in (-0.012, 0.0, 0.012)[: 1 + round(2 * a)]:  # crow's feet
            pen.line([(ex, dy * 0.3), (ex + side * 0.022, dy)], line, 0.004, 0.4)
        bag = arc(
            side * lk.eye_dx, lk.eye_h * 0.9, lk.eye_w * 0.9, lk.eye_h * 1.4, 0.2, np.pi - 0.2, 10
        )
        pen.line(bag, rgba(lk.skin * 0.62, 0.8 * a), 0.005, 0.5)  # bags under the eyes
        if a > 0.45:  # marionette lines
            marionette = [(side * mw * 1.1, tip + 0.07), (side * mw * 1.02, tip + 0.115)]
            pen.line(marionette, rgba(lk.skin * 0.6, 1.6 * (a - 0.45)), 0.005, 0.6)
    for x, y in lk.age_spots * [lk.hw, lk.hh]:
        pen.poly(ellipse(x, y, 0.007, 0.006, 8), rgba(lk.skin * [0.75, 0.65, 0.55], 0.6), 0.4)


def beard(pen: Pen, lk: Looks, outline: np.ndarray) -> None:
    if lk.beard == "none" and lk.female:
        return
    full = lk.beard == "full"
    lowface = outline[(outline[:, 1] > 0.22 * lk.hh)]  # the jaw, right cheek → chin → left
    lowface = lowface[np.argsort(np.arctan2(lowface[:, 1], lowface[:, 0]))]
    if full:  # a full beard stands off the jaw
        lowface = lowface * [1.04, 1.0] + [0, 0.018]
    tip, mw = lk.nose_len, lk.mouth_w
    inner = [
        (-lk.hw * 0.78, 0.2 * lk.hh),
        (-lk.hw * 0.55, tip + 0.01),
        (-mw * 1.2, tip + 0.03),
        (0, tip + 0.02),
    ]
    inner += [(-x, y) for x, y in reversed(inner)]  # left cheek → under the nose → right
    region = np.concatenate([lowface, inner])
    alpha = {"none": 0.08, "stubble": 0.35, "full": 0.95}[lk.beard]  # "none": a shaved shadow
    pen.poly(region, rgba(lk.hair * 0.8 if lk.beard != "none" else lk.skin * 0.5, alpha), 0.3)
    if full:  # moustache
        pen.poly(ellipse(0, tip + 0.03, mw * 1.15, 0.012, 16), rgba(lk.hair * 0.75, 0.95), 0.8)


def glasses(pen: Pen, lk: Looks) -> None:
    if not lk.glasses:
        return
    frame = rgba(lk.frame)
    rx, ry = lk.eye_w * 1.45, lk.eye_w * 1.05
    for side in (-1, 1):
        cx = side * lk.eye_dx
        if lk.round_frames:
            rim = ellipse(cx, 0.003, rx, ry, 28)
        else:  # rounded rectangle: a superellipse
            t = np.linspace(0, 2 * np.pi, 28, endpoint=False)
            c, s = np.cos(t), np.sin(t)
            rim = np.stack(
                [
                    cx + rx * np.sign(c) * np.abs(c) ** 0.5,
                    0.003 + ry * 0.85 * np.sign(s) * np.abs(s) ** 0.5,
                ],
                1,
            )
        pen.poly(rim, rgba((235, 240, 250), 0.12), 0.7)  # lens glare
        pen.line(np.concatenate([rim, rim[:1]]), frame, 0.011, 0.7)
        pen.line(
            [(cx + side * rx, -0.005), (side * lk.hw * 0.98, -0.01)], frame, 0.008, 0.3
        )  # temple arm
    pen.line(
        arc(0, 0.0, lk.eye_dx - rx, 0.01, 1.15 * np.pi, 1.85 * np.pi, 6), frame, 0.008, 0.8
    )  # bridge
