"""What the web page does, without the page: `Studio` loads the models once (their folders fixed
at start) and turns an uploaded or recorded voice into faces from each of them, with the part
of the audio the models heard and its spectrogram. Every limit and every check lives here, so
the page (`scldm.app.page`) only lays out components, and tests call the handler in-process.

A voice passes the checks `scldm generate` makes (`scldm.audio.read_voice`: readable by
content, whatever its name; not truncated, too short, silent or without speech), plus the
upload's limits (size, duration). Each model gets the same waveform: the first seconds its
front end reads (6 s for SCLDM), looped when the recording is shorter."""

from __future__ import annotations

import io
import logging
import math
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from scldm.audio import SAMPLE_RATE, Voice, load_audio, loop_to_length, read_voice
from scldm.errors import InputError
from scldm.evaluation.generators import (
    describe,
    input_seconds,
    load_generator,
    training_data,
)
from scldm.faces import to_pil

log = logging.getLogger(__name__)

DEFAULT_SECONDS = 6.0  # what a model whose front end does not say hears


@dataclass(frozen=True)
class Limits:
    """What one request may ask for. The upload's size is also enforced by the server before
    the file reaches the handler (`page.serve`)."""

    max_upload_mb: float = 20.0
    max_seconds: float = 600.0  # the whole recording; the models hear its start
    max_faces: int = 8
    max_steps: int = 100
    guidance: tuple[float, float] = (0.0, 20.0)
    temperature: tuple[float, float] = (0.0, 2.0)


@dataclass(frozen=True)
class Sampling:
    """SCLDM's sampling settings of one request; None keeps the pipeline's saved default."""

    guidance_scale: float | None = None
    temperature: float | None = None
    num_inference_steps: int | None = None

    def kwargs(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class Model:
    """One loaded pipeline: its name on the page, folder, generator and what it was trained on."""

    name: str
    path: Path
    generator: Any  # PipelineGenerator | BaselineGenerator
    title: str
    trained_on: str
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def diffusion(self) -> bool:
        return self.generator.name == "scldm"

    @property
    def deterministic(self) -> bool:
        return bool(self.generator.method.get("deterministic", False))

    @property
    def seconds(self) -> float:
        return input_seconds(self.path) or DEFAULT_SECONDS


@dataclass
class Result:
    """The answer to one request: faces per model name, the audio the models heard (16 kHz; a
    short recording looped to their length, as their front ends loop it), its spectrogram,
    notices for the page, and how long it took."""

    faces: dict[str, list[Image.Image]]
    heard: np.ndarray
    spectrogram: Image.Image
    notices: list[str]
    seconds: float


def trained_on(path: Path) -> str:
    """A sentence for the page about the model's training data (its export's metadata)."""
    data = training_data(path)
    if data is None:
        return "its training data is not recorded in the pipeline folder"
    name = data.get("name") or "an unnamed data set"
    if data.get("synthetic"):
        return (
            f"trained on {name}, synthetic voices: real voices are outside its training data, "
            "so its faces show what it learnt there, not the speaker"
        )
    return f"trained on {name}"


def model_names(specs: list[str]) -> dict[str, Path]:
    """`--model DIR` or `--model NAME=DIR`, each given once or more → {name: folder}. A bare
    folder is named by its method (scldm, speech2face, ...), numbered when that repeats."""
    named: dict[str, Path] = {}
    for spec in specs:
        name, sep, folder = spec.partition("=")
        path = Path(folder if sep else spec)
        if not sep:
            method = describe(path)["method"] or path.name
            name, k = method, 2
            while name in named:
                name, k = f"{method}-{k}", k + 1
        elif not name or name in named:
            raise InputError(None, f"--model {spec}: each NAME= must be unique and not empty")
        named[name] = path
    return named


class Studio:
    """The models of a page, loaded once from folders fixed at start, and the request handler
    `run(upload, ...)`. One request at a time per model (a pipeline's scheduler keeps state)."""

    def __init__(
        self,
        models: Mapping[str, Path],
        limits: Limits | None = None,
        device: str | torch.device | None = None,
    ) -> None:
        if not models:
            raise InputError(None, "give at least one --model")
        self.limits = limits or Limits()
        self.models: list[Model] = []
        for name, path in models.items():
            generator = load_generator(Path(path), device=device)
            title = str(generator.method.get("title", generator.name)).split(" (")[0]
            self.models.append(Model(name, Path(path), generator, title, trained_on(path)))
            log.info("%s: %s from %s (%s)", name, title, path, self.models[-1].trained_on)

    @property
    def seconds(self) -> float:
        """The audio every model gets: the longest any front end reads."""
        return max(m.seconds for m in self.models)

    def sampling_defaults(self) -> Sampling | None:
        """The first SCLDM model's saved sampling settings (None without an SCLDM model)."""
        for m in self.models:
            if m.diffusion:
                s = m.generator.pipe.sampling
                return Sampling(s.guidance_scale, s.temperature, s.num_inference_steps)
        return None

    # --- one request -------------------------------------------------------------------------

    def listen(self, upload: str | Path) -> tuple[Voice, list[str]]:
        """Check an upload against the limits and read what the models hear of it."""
        path = Path(upload)
        limits = self.limits
        if path.is_file() and path.stat().st_size > limits.max_upload_mb * 1e6:
            size = path.stat().st_size / 1e6
            raise InputError(
                path, f"is {size:.1f} MB; uploads are limited to {limits.max_upload_mb:g} MB"
            )
        voice = read_voice(path, self.seconds)
        total = voice.total_seconds
        if total is None:  # a format whose header does not say (m4a, webm): decode to the limit
            total = load_audio(path, max_seconds=limits.max_seconds + 1).size / SAMPLE_RATE
        if total > limits.max_seconds:
            raise InputError(
                path,
                f"is {total:.0f} s long; recordings are limited to {limits.max_seconds:g} s "
                f"(the models hear the first {self.seconds:g} s: trim it and upload that)",
            )
        notices = [f"your recording is {n}" for n in [voice.notice()] if n]
        return voice, notices

    def check(self, num_images: int, seed: int, sampling: Sampling) -> None:
        """Refuse out-of-range settings in one line (the page's sliders bound them; a client
        of the API may send anything)."""
        limits = self.limits
        if not 1 <= num_images <= limits.max_faces:
            raise InputError(None, f"faces must be 1 to {limits.max_faces}, got {num_images}")
        if not 0 <= seed < 2**63:
            raise InputError(None, f"seed must be 0 to 2^63 - 1, got {seed}")
        for name, value, (lo, hi) in (
            ("guidance", sampling.guidance_scale, limits.guidance),
            ("temperature", sampling.temperature, limits.temperature),
        ):
            if value is not None and not (math.isfinite(value) and lo <= value <= hi):
                raise InputError(None, f"{name} must be {lo:g} to {hi:g}, got {value}")
        steps = sampling.num_inference_steps
        if steps is not None and not 1 <= steps <= limits.max_steps:
            raise InputError(None, f"steps must be 1 to {limits.max_steps}, got {steps}")

    def run(
        self,
        upload: str | Path | None,
        num_images: int = 4,
        seed: int = 0,
        sampling: Sampling | None = None,
    ) -> Result:
        """Faces from every model for one voice: `num_images` each, seeded by `seed` (the same
        voice and seed give the same faces), SCLDM's with `sampling`."""
        if upload is None:
            raise InputError(None, "record or upload some speech first")
        sampling = sampling or Sampling()
        num_images, seed = int(num_images), int(seed)
        self.check(num_images, seed, sampling)
        start = time.perf_counter()
        voice, notices = self.listen(upload)
        faces = {}
        for m in self.models:
            kwargs = sampling.kwargs() if m.diffusion else {}
            count = 1 if m.deterministic else num_images  # its K faces would be one face
            wave = voice.wave[: round(m.seconds * SAMPLE_RATE)]
            with m.lock, torch.no_grad():
                images = m.generator.sample(
                    wave,
                    num_images_per_prompt=count,
                    generator=torch.Generator().manual_seed(seed),
                    output_type="pt",
                    **kwargs,
                ).images
            faces[m.name] = [to_pil(im * 2 - 1) for im in images]
        heard = loop_to_length(voice.wave, round(self.seconds * SAMPLE_RATE))  # as the models do
        return Result(faces, heard, spectrogram(heard), notices, time.perf_counter() - start)


def spectrogram_db(wave: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Power in dB, (frames, 257): 25 ms Hann windows every 10 ms, a 512-point FFT."""
    n, hop = int(0.025 * sample_rate), int(0.010 * sample_rate)
    x = np.pad(wave.astype(np.float32), (0, max(0, n - wave.size)))
    frames = x[np.arange(0, x.size - n + 1, hop)[:, None] + np.arange(n)] * np.hanning(n)
    return 10 * np.log10(np.abs(np.fft.rfft(frames, 512)) ** 2 + 1e-10)


def spectrogram(wave: np.ndarray, sample_rate: int = SAMPLE_RATE) -> Image.Image:
    """`spectrogram_db` as a picture (0–8 kHz, 80 dB of range) with time and frequency axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    db = spectrogram_db(wave, sample_rate)
    seconds = max(wave.size, int(0.025 * sample_rate)) / sample_rate
    fig, ax = plt.subplots(figsize=(6, 2.4), dpi=100)
    ax.imshow(
        db.T,
        origin="lower",
        aspect="auto",
        cmap="magma",
        vmin=db.max() - 80,
        vmax=db.max(),
        extent=(0, seconds, 0, sample_rate / 2000),
    )
    ax.set_xlabel("time (s)")
    ax.set_ylabel("frequency (kHz)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    buf.seek(0)
    return Image.open(buf).convert("RGB")
