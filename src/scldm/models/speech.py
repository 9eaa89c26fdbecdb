"""The speech side of SCLDM, chosen by name: a front end and the speech encoder it feeds.

- `speech2face` (the default, the paper's): the Speech2Face spectrogram front end and the
  Speech2Face + CBAM encoder trained from scratch (`SpeechEncoder`);
- `ge2e`: Resemblyzer's mel front end and the pretrained GE2E speaker encoder with a trainable
  head (`GE2ESpeechEncoder`).

A stage config picks one with `speech_encoder: {type: ge2e, preset: small, ...}`; the front end
config (`frontend: {...}`) then holds that front end's keyword arguments. Saved models name
their classes in config.json, which `component_class` maps back for loading.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from scldm.audio import MelFrontend, SpectrogramFrontend
from scldm.errors import InputError
from scldm.models.face_decoder import FaceDecoder
from scldm.models.face_encoder import FaceEncoder
from scldm.models.ge2e import GE2E_PRESETS, GE2ESpeechEncoder
from scldm.models.speech_encoder import SPEECH_ENCODER_PRESETS, SpeechEncoder


class SpeechSide(NamedTuple):
    frontend: type
    encoder: type
    presets: Mapping[str, dict]


SPEECH_SIDES: dict[str, SpeechSide] = {
    "speech2face": SpeechSide(SpectrogramFrontend, SpeechEncoder, SPEECH_ENCODER_PRESETS),
    "ge2e": SpeechSide(MelFrontend, GE2ESpeechEncoder, GE2E_PRESETS),
}
# what a stage-1 export may hold, by the class name in its parts' config.json
COMPONENTS: dict[str, type] = {
    cls.__name__: cls
    for cls in (
        SpectrogramFrontend,
        MelFrontend,
        SpeechEncoder,
        GE2ESpeechEncoder,
        FaceEncoder,
        FaceDecoder,
    )
}


def speech_type(speech_encoder: Mapping[str, Any]) -> str:
    """The `type` of a speech_encoder config mapping (default `speech2face`), checked."""
    name = speech_encoder.get("type", "speech2face")
    if name not in SPEECH_SIDES:
        raise InputError(
            None, f"speech_encoder.type: unknown {name!r}; known: {', '.join(SPEECH_SIDES)}"
        )
    return name


def build_speech(
    frontend: Mapping[str, Any],
    speech_encoder: Mapping[str, Any],
    *,
    ge2e_weights: str | Path | None = None,
) -> tuple[Any, Any]:
    """(front end, speech encoder) from the config mappings: `speech_encoder.type` picks the
    pair, `preset: NAME` an architecture preset whose values the other keys override. A GE2E
    encoder gets its pretrained backbone from `ge2e_weights` (default: the installed
    resemblyzer package's file)."""
    name = speech_type(speech_encoder)
    side = SPEECH_SIDES[name]
    kwargs = {k: v for k, v in speech_encoder.items() if k != "type"}
    preset = kwargs.pop("preset", None)
    if preset is not None:
        if preset not in side.presets:
            known = ", ".join(side.presets)
            raise InputError(None, f"speech_encoder.preset: unknown {preset!r}; known: {known}")
        kwargs = {**side.presets[preset], **kwargs}
    try:
        built = side.frontend(**frontend), side.encoder(**kwargs)
    except TypeError as e:  # an unknown constructor keyword in the config
        raise InputError(None, f"{name} speech side config: {e}") from None
    if name == "ge2e":
        built[1].load_backbone(ge2e_weights)
    return built


def component_class(folder: str | Path) -> type:
    """The class of a saved component (`save_pretrained` folder), from its config.json."""
    path = Path(folder) / "config.json"
    try:
        name = json.loads(path.read_text())["_class_name"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(path, f"is not a saved model config ({e})") from None
    if name not in COMPONENTS:
        raise InputError(path, f"unknown component class {name!r}; known: {', '.join(COMPONENTS)}")
    return COMPONENTS[name]
