"""`PrepareOptions`: the settings the corpus preparers (voxceleb, avspeech, folder) share.

Standard library only, so the `scldm` command can read the defaults for its `--help` without
loading the preparers.
"""

from __future__ import annotations

from dataclasses import dataclass

from scldm.errors import InputError


@dataclass(frozen=True)
class PrepareOptions:
    """How a corpus preparer writes its dataset; every field is one `scldm prepare` option."""

    image_size: int = 224  # face crop side in pixels (--image-size)
    seconds: float = 6.0  # audio kept from the start of each clip (--seconds)
    workers: int = 1  # parallel worker processes (--workers)
    seed: int = 0  # seed of the speaker split (--seed)
    overwrite: bool = False  # redo items an earlier run already prepared (--overwrite)

    def check(self) -> None:
        """Raise `InputError` (one line) for settings no preparer can use."""
        if self.image_size < 16 or self.seconds <= 0:
            raise InputError(
                None,
                f"--image-size must be >= 16 and --seconds > 0 "
                f"(got {self.image_size}, {self.seconds})",
            )
