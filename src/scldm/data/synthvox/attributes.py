"""SynthVox speakers: hidden attributes and the distributions they are drawn from.

Three groups (DESIGN.md §6): *linked* attributes reach both the voice and the face (gender, age,
body size); *voice-only* ones shape only the voice (timbre and speaking habits); *face-only* ones
shape only the face and are drawn independently of everything a voice carries, so no model can
infer them from speech. Hair length and beard are face attributes that depend on gender (and
baldness on age), as they do in people. docs/synthvox.md tabulates every distribution below.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

# --- Vocabulary -------------------------------------------------------------------------------

GENDERS = ("f", "m")
AGE_RANGE = (18, 80)  # years, uniform
SKIN_TONES = ("pale", "fair", "medium", "olive", "brown", "dark")
HAIR_COLOURS = ("black", "brown", "blonde", "red")
EYE_COLOURS = ("brown", "hazel", "green", "blue")
HAIRSTYLES = ("side_part", "middle_part", "fringe", "curly")
BACKGROUNDS = ("blue", "green", "grey", "yellow", "purple")
HAIR_LENGTHS = ("bald", "short", "medium", "long")
BEARDS = ("none", "stubble", "full")

SKIN_TONE_P = (0.15, 0.2, 0.2, 0.15, 0.15, 0.15)
# Hair and eye colour depend on skin tone (light skin → more blond/red hair and light eyes), as in
# people; all three are face-only, so the dependence stays invisible to a voice.
HAIR_COLOUR_P = {
    "pale": (0.10, 0.35, 0.35, 0.20),
    "fair": (0.15, 0.40, 0.30, 0.15),
    "medium": (0.35, 0.50, 0.12, 0.03),
    "olive": (0.70, 0.30, 0.0, 0.0),
    "brown": (0.80, 0.20, 0.0, 0.0),
    "dark": (0.90, 0.10, 0.0, 0.0),
}
EYE_COLOUR_P = {
    "pale": (0.15, 0.15, 0.25, 0.45),
    "fair": (0.25, 0.20, 0.20, 0.35),
    "medium": (0.50, 0.25, 0.15, 0.10),
    "olive": (0.75, 0.20, 0.05, 0.0),
    "brown": (0.90, 0.10, 0.0, 0.0),
    "dark": (0.95, 0.05, 0.0, 0.0),
}
HAIR_LENGTH_P = {"f": (0.0, 0.15, 0.30, 0.55), "m": (0.0, 0.70, 0.22, 0.08)}
BEARD_P_MEN = (0.50, 0.22, 0.28)
GLASSES_P = 0.3

# Manifest fields by group (in manifest order). `face_attributes` lists what the oracle predicts.
LINKED = ("gender", "age", "size")
VOICE_ONLY = ("breathiness", "nasality", "speaking_rate", "pitch_offset", "pitch_range")
FACE_ONLY = ("skin_tone", "hair_colour", "eye_colour", "hairstyle", "glasses", "background")
GENDER_LINKED_FACE = ("hair_length", "beard")
CATEGORIES: dict[str, tuple[Any, ...]] = {
    "gender": GENDERS,
    "skin_tone": SKIN_TONES,
    "hair_colour": HAIR_COLOURS,
    "eye_colour": EYE_COLOURS,
    "hairstyle": HAIRSTYLES,
    "glasses": (False, True),
    "background": BACKGROUNDS,
    "hair_length": HAIR_LENGTHS,
    "beard": BEARDS,
}


@dataclass(frozen=True)
class Speaker:
    """One synthetic speaker: its id, its seed stream and every hidden attribute."""

    index: int
    speaker_id: str
    seed: int
    # linked: voice and face
    gender: str  # "f" | "m"
    age: int  # years, 18..80
    size: float  # body size relative to the gender's mean, in standard deviations (|size| ≤ 2.5)
    # voice-only
    breathiness: float  # 0..1, aspiration noise and open glottis; rises further with age
    nasality: float  # 0..1, velopharyngeal coupling on vowels
    speaking_rate: float  # tempo habit, × the average rate (slows further with age)
    pitch_offset: float  # semitones, the speaker's F0 beyond what gender, age and size predict
    pitch_range: float  # semitones, height of stressed-syllable pitch accents
    # face-only
    skin_tone: str
    hair_colour: str
    eye_colour: str
    hairstyle: str
    glasses: bool
    background: str
    # face, gender-linked (and baldness age-linked)
    hair_length: str
    beard: str

    def rng(self, *stream: int) -> np.random.Generator:
        """An independent generator for one purpose of this speaker (voice, face, clip k, ...).

        Seeded by (dataset seed, speaker index, stream...) so results do not depend on which
        worker process renders the speaker, or in which order.
        """
        return np.random.default_rng([self.seed, self.index, *stream])

    def attributes(self) -> dict[str, Any]:
        """The hidden attributes as manifest fields: linked, voice-only, face-only, then
        gender-linked face attributes."""
        d = asdict(self)
        return {k: d[k] for k in (*LINKED, *VOICE_ONLY, *FACE_ONLY, *GENDER_LINKED_FACE)}


# --- Sampling ---------------------------------------------------------------------------------

ATTRIBUTE_STREAM = 0  # rng stream of the attributes; voice/face/clips use other streams


def _choice(rng: np.random.Generator, options: tuple, p: tuple[float, ...]) -> Any:
    return options[int(rng.choice(len(options), p=np.asarray(p) / sum(p)))]


def _gender(seed: int, index: int) -> str:
    # Speakers come in pairs (2k, 2k+1) holding one woman and one man in a random order: any even
    # count is exactly balanced, and every speaker's gender still depends only on (seed, index).
    flip = np.random.default_rng([seed, index // 2, 7919]).random() < 0.5
    return GENDERS[(index % 2) ^ int(flip)]


def sample_speaker(seed: int, index: int) -> Speaker:
    """Draw speaker `index` of the dataset with `seed`; a pure function of the two."""
    rng = np.random.default_rng([seed, index, ATTRIBUTE_STREAM])
    gender = _gender(seed, index)
    age = int(rng.integers(AGE_RANGE[0], AGE_RANGE[1] + 1))
    size = float(np.clip(rng.normal(), -2.5, 2.5))
    skin = _choice(rng, SKIN_TONES, SKIN_TONE_P)
    hair_length = _choice(rng, HAIR_LENGTHS, HAIR_LENGTH_P[gender])
    # male-pattern baldness: none before 30, then rising to one man in two at 80
    if gender == "m" and rng.random() < 0.5 * np.clip((age - 30) / 50, 0, 1) ** 1.5:
        hair_length = "bald"
    return Speaker(
        index=index,
        speaker_id=f"sv{index:05d}",
        seed=seed,
        gender=gender,
        age=age,
        size=round(size, 3),
        breathiness=round(float(rng.beta(2.0, 5.0)), 3),
        nasality=round(float(rng.beta(2.0, 4.0)), 3),
        speaking_rate=round(float(np.exp(rng.normal(0.0, 0.08))), 3),
        pitch_offset=round(float(np.clip(rng.normal(0.0, 1.2), -2.5, 2.5)), 3),
        pitch_range=round(float(rng.uniform(1.5, 5.0)), 3),
        skin_tone=skin,
        hair_colour=_choice(rng, HAIR_COLOURS, HAIR_COLOUR_P[skin]),
        eye_colour=_choice(rng, EYE_COLOURS, EYE_COLOUR_P[skin]),
        hairstyle=HAIRSTYLES[int(rng.integers(len(HAIRSTYLES)))],
        glasses=bool(rng.random() < GLASSES_P),
        background=BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))],
        hair_length=hair_length,
        beard=_choice(rng, BEARDS, BEARD_P_MEN) if gender == "m" else "none",
    )


def speaker_from_row(row: Mapping[str, Any], *, seed: int, index: int) -> Speaker:
    """Rebuild a `Speaker` from a manifest row (the inverse of `Speaker.attributes`)."""
    keys = (*LINKED, *VOICE_ONLY, *FACE_ONLY, *GENDER_LINKED_FACE)
    return Speaker(
        index=index, speaker_id=row["speaker_id"], seed=seed, **{k: row[k] for k in keys}
    )
