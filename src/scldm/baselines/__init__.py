"""The published baselines SCLDM is compared with, each a pipeline called as SCLDM's (audio →
faces) and saved as a folder of JSON and safetensors. `BASELINES` maps a method's name to its
pipeline class, imported only when asked for (`pipeline_class`)."""

from __future__ import annotations

import importlib

from scldm.errors import InputError

BASELINES: dict[str, str] = {
    "speech2face": "scldm.baselines.speech2face:Speech2FacePipeline",
    "wen": "scldm.baselines.wen:WenPipeline",
    "wav2pix": "scldm.baselines.wav2pix:Wav2PixPipeline",
}


def pipeline_class(name: str) -> type:
    """The pipeline class of a method, by method name (`speech2face`) or class name
    (`Speech2FacePipeline`, as model_index.json records it)."""
    for method, target in BASELINES.items():
        module, cls = target.split(":")
        if name in (method, cls):
            return getattr(importlib.import_module(module), cls)
    raise InputError(None, f"unknown baseline {name!r}; known: {', '.join(BASELINES)}")


__all__ = ["BASELINES", "pipeline_class"]
