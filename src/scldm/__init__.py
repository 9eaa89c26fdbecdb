"""scldm: speech-to-face generation with a speech-conditioned latent diffusion model.

The public names are imported on first use (PEP 562), so `import scldm` — and with it the
`scldm` command's `--help` — loads no torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_LAZY = {
    "InputError": "scldm.errors",
    "SpectrogramFrontend": "scldm.audio",
    "load_audio": "scldm.audio",
}
__all__ = ["InputError", "SpectrogramFrontend", "__version__", "load_audio"]

if TYPE_CHECKING:
    from scldm.audio import SpectrogramFrontend, load_audio
    from scldm.errors import InputError


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'scldm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
