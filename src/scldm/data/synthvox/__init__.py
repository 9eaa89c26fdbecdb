"""SynthVox: a procedural paired voice-face benchmark whose shared attributes are known exactly.

Speakers with hidden attributes (`attributes`), their voices from a source-filter synthesiser
(`voice`, `phones`), their portraits from a parametric renderer (`looks`, `render`), the dataset
writer behind `scldm prepare synthvox` (`generate`) and the proof that the linked attributes,
and only those, are in the audio (`probe`). See docs/synthvox.md.
"""

from scldm.data.synthvox.attributes import Speaker, sample_speaker
from scldm.data.synthvox.generate import prepare_synthvox, training_data
from scldm.data.synthvox.looks import looks_of, pose_of
from scldm.data.synthvox.render import render, render_face
from scldm.data.synthvox.voice import synthesize, synthesize_clip, voice_params

__all__ = [
    "Speaker",
    "looks_of",
    "pose_of",
    "prepare_synthvox",
    "render",
    "render_face",
    "sample_speaker",
    "synthesize",
    "synthesize_clip",
    "training_data",
    "voice_params",
]
