"""From a SynthVox speaker to what its portraits show: proportions, colours and per-image pose.

`looks_of` fixes a speaker's appearance (its attributes plus small identity details drawn from
its own seed stream, so two speakers with equal attributes still look like two people);
`pose_of` draws what changes between two photos of the same person: head pose, light,
expression, framing and clothes. Lengths are in face units: 1 = the side of the image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scldm.data.synthvox.attributes import Speaker

SKIN_RGB = {
    "pale": (246, 224, 208),
    "fair": (234, 196, 168),
    "medium": (206, 158, 120),
    "olive": (176, 128, 88),
    "brown": (134, 90, 60),
    "dark": (88, 58, 42),
}
HAIR_RGB = {
    "black": (28, 24, 24),
    "brown": (96, 60, 34),
    "blonde": (214, 178, 108),
    "red": (170, 72, 30),
}
GREY_RGB = (206, 204, 200)  # fully grey hair
EYE_RGB = {
    "brown": (88, 50, 24),
    "hazel": (140, 110, 50),
    "green": (70, 140, 80),
    "blue": (70, 130, 200),
}
BACKGROUND_RGB = {
    "blue": (110, 150, 200),
    "green": (120, 175, 120),
    "grey": (165, 165, 165),
    "yellow": (220, 200, 110),
    "purple": (155, 115, 185),
}
CLOTHES_RGB = (
    (40, 50, 80),
    (200, 200, 205),
    (120, 30, 40),
    (60, 90, 60),
    (30, 30, 30),
    (150, 120, 90),
    (70, 110, 160),
    (180, 140, 60),
    (110, 70, 120),
    (90, 90, 95),
)
FRAMES_RGB = ((20, 20, 22), (90, 55, 30), (105, 105, 115))


@dataclass(frozen=True)
class Looks:
    """A speaker's appearance, fixed across its images."""

    female: bool
    # head and body
    hw: float  # head half-width
    hh: float  # head half-height, crown to chin
    jaw_square: float  # superellipse exponent of the lower head: 2 round ... 3 square
    chin_taper: float  # how much the chin narrows
    cheeks: float  # cheek fullness (size)
    jowls: float  # sagging of the lower face (age)
    neck: float  # neck half-width
    shoulders: float  # shoulder half-width
    # features
    eye_dx: float  # half the distance between the eye centres
    eye_w: float
    eye_h: float
    brow_lift: float  # brow height above the eyes
    brow_thick: float
    brow_arch: float
    nose_len: float
    nose_w: float
    mouth_w: float
    lip_full: float
    # hair and age
    hair_length: str
    hairstyle: str
    hair_volume: float
    recede: float  # temple recession, 0..1
    wrinkles: float  # 0..1
    age_spots: np.ndarray  # (K, 2) positions in head half-widths / half-heights
    # colours (RGB float arrays)
    skin: np.ndarray
    hair: np.ndarray
    eye: np.ndarray
    lips: np.ndarray
    background: np.ndarray
    # extras
    beard: str
    glasses: bool
    frame: np.ndarray
    round_frames: bool
    makeup: float  # eyeliner and lip colour, 0..1
    earrings: bool


@dataclass(frozen=True)
class Pose:
    """What changes from one image of a speaker to the next."""

    yaw: float  # head turn, in head half-widths of nose parallax
    roll: float  # radians
    dx: float
    dy: float
    scale: float
    light: float  # -1..1: light from the left ... right
    brightness: float
    smile: float  # -0.3 (frown) ... 1 (broad smile)
    clothes: np.ndarray


def _mix(a, b, t: float) -> np.ndarray:
    return (1 - t) * np.asarray(a, float) + t * np.asarray(b, float)


def looks_of(speaker: Speaker) -> Looks:
    """The appearance of `speaker`: attributes plus identity details from its face stream."""
    s, rng = speaker, speaker.rng(2)
    f = s.gender == "f"
    u = (s.age - 18) / 62  # 0 at 18, 1 at 80
    ident = lambda sd: float(1 + sd * rng.standard_normal())  # noqa: E731  a personal ×factor
    # greying starts around 30-46 and is nearly complete about 34 years later
    onset = rng.normal(38, 4)
    grey = float(np.clip((s.age - onset) / 34, 0, 0.97))
    hair = _mix(np.asarray(HAIR_RGB[s.hair_colour]) * ident(0.06), GREY_RGB, grey)
    skin = np.asarray(SKIN_RGB[s.skin_tone], float) * ident(0.025)
    # older skin: less colour and a little sallower
    skin = _mix(skin, skin.mean() * np.array([1.0, 0.97, 0.9]), 0.25 * u)
    makeup = float(f and rng.random() < 0.8) * rng.uniform(0.5, 1.0)
    lips = _mix(skin * np.array([0.86, 0.62, 0.62]) + [25, 0, 0], (175, 45, 65), 0.7 * makeup)
    lips = _mix(lips, skin * 0.9, 0.35 * u)
    size = s.size
    # age spots from 50 on; six are always drawn so the stream stays aligned across ages
    spots = rng.uniform([-0.7, -0.7], [0.7, 0.5], (6, 2))
    spots = spots[: round(6 * np.clip((s.age - 50) / 30, 0, 1))]
    return Looks(
        female=f,
        hw=0.165 * (1 + 0.07 * size) * (0.96 if f else 1.03) * ident(0.012),
        hh=0.225 * (0.98 if f else 1.02) * (1 + 0.01 * size) * ident(0.015),
        jaw_square=(2.1 if f else 2.8 + 0.12 * size) * ident(0.04),
        chin_taper=(0.32 if f else 0.2) * ident(0.1),
        cheeks=0.09 * size,
        jowls=0.09 * u**1.5,
        neck=(0.052 if f else 0.085) * (1 + 0.2 * size),
        shoulders=(0.26 if f else 0.31) * (1 + 0.14 * size),
        eye_dx=0.068 * ident(0.04),
        eye_w=0.036 * ident(0.05),
        eye_h=0.017 * (1 - 0.3 * u) * (1.1 if f else 1.0) * ident(0.06),
        brow_lift=(0.042 if f else 0.032) * ident(0.08),
        brow_thick=(0.006 if f else 0.015) * (1 - 0.25 * u) * ident(0.12),
        brow_arch=(0.012 if f else 0.004) * ident(0.2),
        nose_len=0.09 * (1 + 0.1 * u) * ident(0.06),
        nose_w=(0.022 if f else 0.028) * ident(0.08),
        mouth_w=(0.042 if f else 0.047) * ident(0.06),
        lip_full=(1.25 if f else 0.9) * (1 - 0.45 * u) * ident(0.1),
        hair_length=s.hair_length,
        hairstyle=s.hairstyle,
        hair_volume=(0.035 if f else 0.02) * (1 - 0.3 * u) * ident(0.15),
        recede=0.0 if f else float(np.clip((s.age - 28) / 40, 0, 1) * rng.uniform(0.2, 1.0)),
        wrinkles=float(np.clip((s.age - 20) / 60, 0, 1)),
        age_spots=spots,
        skin=skin,
        hair=hair,
        eye=np.asarray(EYE_RGB[s.eye_colour], float) * ident(0.05),
        lips=lips,
        background=np.asarray(BACKGROUND_RGB[s.background], float) * ident(0.03),
        beard=s.beard,
        glasses=s.glasses,
        frame=np.asarray(FRAMES_RGB[int(rng.integers(len(FRAMES_RGB)))], float),
        round_frames=bool(rng.random() < 0.5),
        makeup=makeup,
        earrings=bool(f and rng.random() < 0.4),
    )


def pose_of(speaker: Speaker, image: int) -> Pose:
    """Pose, light, expression and clothes of image `image` of `speaker`."""
    rng = speaker.rng(200, image)
    return Pose(
        yaw=rng.uniform(-0.12, 0.12),
        roll=np.deg2rad(rng.uniform(-4, 4)),
        dx=rng.uniform(-0.02, 0.02),
        dy=rng.uniform(-0.02, 0.02),
        scale=rng.uniform(0.985, 1.015),
        light=rng.uniform(-1, 1),
        brightness=rng.uniform(0.9, 1.08),
        smile=rng.uniform(-0.3, 1.0),
        clothes=np.asarray(CLOTHES_RGB[int(rng.integers(len(CLOTHES_RGB)))], float),
    )
