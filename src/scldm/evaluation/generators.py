"""One loader for every voice → face model: `load_generator(path)` reads a pipeline folder's
model_index.json and wraps the pipeline as a `FaceGenerator`, the interface `scldm generate`,
`scldm evaluate` and `scldm compare` use.

- `SpeechToFacePipeline` (SCLDM) → `PipelineGenerator`: its saved sampling config with the
  command line's overrides (steps, guidance, temperature, prior scale, scheduler).
- a baseline pipeline of `scldm.baselines.BASELINES` (Speech2Face, …) → `BaselineGenerator`:
  the same call, without sampling options. A diffusion-only option given for one is refused in
  one line (`check_options`), before anything loads.

Both record what the image cache keys on (`settings`), what the reports print (`method`: name,
title, whether it is deterministic, its deviations from the published method) and their
parameter count. `generate_cached` fills an evaluation's image cache with any `FaceGenerator`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from tqdm.auto import tqdm

from scldm.baselines import BASELINES, pipeline_class
from scldm.errors import InputError
from scldm.evaluation.clips import Clip, image_path
from scldm.faces import save_image, to_pil
from scldm.io import write_bytes, write_text

log = logging.getLogger(__name__)

SCLDM_CLASS = "SpeechToFacePipeline"
# the keyword arguments of SpeechToFacePipeline.__call__ a baseline lacks, and their options
DIFFUSION_OPTIONS = {
    "num_inference_steps": "--steps",
    "guidance_scale": "--guidance",
    "scheduler": "--scheduler",
    "prior_scale": "--prior-scale",
    "temperature": "--temperature",
}
SCLDM_METHOD = {
    "name": "scldm",
    "title": "SCLDM (speech-conditioned latent diffusion with a face prior)",
    "deterministic": False,
    "deviations": [],
}


PAPER_PRIOR_SCALE = 0.01  # the paper's λ_infer (Table 4)


def scldm_deviations(settings: Mapping[str, Any], scheduler: Mapping[str, Any]) -> list[str]:
    """How an SCLDM pipeline samples unlike the paper (DESIGN §2: an ε-predicting UNet on LDM's
    noise schedule, λ_infer 0.01, one conditional pass a step), from its sampling `settings`
    and its scheduler's config."""
    out = []
    kind = scheduler.get("prediction_type", "epsilon")
    if kind != "epsilon":
        target = {"v_prediction": "v", "sample": "x_0"}.get(kind, kind)
        out.append(f"the UNet predicts {target}, not ε (paper eq. 6)")
    if scheduler.get("rescale_betas_zero_snr"):
        out.append("the noise schedule is rescaled to zero terminal SNR (paper: LDM's)")
    prior_scale = settings.get("prior_scale")
    if prior_scale is not None and prior_scale != PAPER_PRIOR_SCALE:
        out.append(f"prior scale λ_infer {prior_scale:g} (paper {PAPER_PRIOR_SCALE:g})")
    guidance = settings.get("guidance_scale")
    if guidance is not None and guidance != 1.0:
        out.append(f"classifier-free guidance {guidance:g} (the paper samples without)")
    return out


class FaceGenerator(Protocol):
    """What `evaluate` needs from a model: voices → faces."""

    name: str
    image_size: int
    settings: dict[str, Any]  # recorded in metrics.json and part of the image cache's key

    def __call__(
        self, audio: Sequence[Path], generators: Sequence[torch.Generator]
    ) -> torch.Tensor:
        """One face per (audio, generator) pair: (B, 3, H, W) in [-1, 1]."""
        ...


def _num_parameters(pipe: Any) -> int:
    """Parameters of the pipeline's networks (what generates; schedulers have none)."""
    modules = [m for m in pipe.components.values() if isinstance(m, torch.nn.Module)]
    return sum(p.numel() for m in modules for p in m.parameters())


@dataclass
class PipelineGenerator:
    """A `SpeechToFacePipeline` as a `FaceGenerator`: its saved sampling config (`pipe.sampling`)
    with `overrides` (num_inference_steps, guidance_scale, temperature, prior_scale)."""

    pipe: Any
    overrides: Mapping[str, Any] = field(default_factory=dict)
    name: str = "scldm"

    @property
    def method(self) -> dict[str, Any]:
        """`SCLDM_METHOD`, with the deviations of this pipeline and these overrides."""
        deviations = scldm_deviations(self.settings, self.pipe.scheduler.config)
        return {**SCLDM_METHOD, "deviations": deviations}

    @property
    def image_size(self) -> int:
        return int(self.pipe.face_decoder.config.image_size)

    @property
    def settings(self) -> dict[str, Any]:
        sampling = asdict(self.pipe.sampling) | dict(self.overrides)
        del sampling["scheduler"]  # the component samples: recorded by its class
        return {"scheduler": type(self.pipe.scheduler).__name__, **sampling}

    @property
    def num_parameters(self) -> int:
        return _num_parameters(self.pipe)

    def sample(self, audio: Any, **kwargs: Any) -> Any:
        """The pipeline's call with the overrides: `FaceOutput` (`.images`)."""
        return self.pipe(audio, **kwargs, **self.overrides)

    def __call__(
        self, audio: Sequence[Path], generators: Sequence[torch.Generator]
    ) -> torch.Tensor:
        out = self.sample([str(a) for a in audio], generator=list(generators), output_type="pt")
        return out.images * 2 - 1


@dataclass
class BaselineGenerator:
    """A baseline's pipeline (`scldm.baselines`) as a `FaceGenerator`. `pipe.method` describes
    it (name, title, deterministic, deviations, ...); `pipe.image_size` is its output size."""

    pipe: Any
    _warned: bool = field(default=False, repr=False)

    @property
    def method(self) -> dict[str, Any]:
        return dict(self.pipe.method)

    @property
    def name(self) -> str:
        return str(self.method["name"])

    @property
    def deterministic(self) -> bool:
        return bool(self.method.get("deterministic", False))

    @property
    def deviations(self) -> list[str]:
        return list(self.method.get("deviations", []))

    @property
    def image_size(self) -> int:
        return int(self.pipe.image_size)

    @property
    def settings(self) -> dict[str, Any]:
        return {"method": self.name, "deterministic": self.deterministic}

    @property
    def num_parameters(self) -> int:
        return _num_parameters(self.pipe)

    def sample(self, audio: Any, **kwargs: Any) -> Any:
        return self.pipe(audio, **kwargs)

    def __call__(
        self, audio: Sequence[Path], generators: Sequence[torch.Generator]
    ) -> torch.Tensor:
        out = self.sample([str(a) for a in audio], generator=list(generators), output_type="pt")
        return out.images * 2 - 1


def warn_if_identical(generator: Any, num_images: int) -> None:
    """Log once per generator that a deterministic method's K > 1 faces per voice are one face."""
    if num_images > 1 and getattr(generator, "deterministic", False):
        if not getattr(generator, "_warned", False):
            log.warning(
                "%s is deterministic: its %d images per voice are identical (diversity 0)",
                generator.method.get("title", generator.name),
                num_images,
            )
            generator._warned = True


# --- Generating into the image cache ---------------------------------------------------------


def _seed_for(seed: int, clip: Clip, k: int) -> int:
    digest = hashlib.sha256(f"{seed}/{clip.audio.name}/{clip.speaker}/{clip.key}/{k}".encode())
    return int.from_bytes(digest.digest()[:8], "little") >> 1


def generate_cached(
    generator: FaceGenerator,
    clips: Sequence[Clip],
    out: Path,
    *,
    num_images: int,
    seed: int,
    batch_size: int,
    progress: bool = True,
) -> dict[int, str]:
    """Generate the missing `OUT/images/<clip>_<k>.png`. Each image has its own seeded
    generator, so the faces do not depend on batching or on where a run was interrupted. A
    cache made with other settings is refused rather than mixed. A deterministic generator
    makes one face a clip, copied to its other K − 1 files. A clip whose audio the generator
    refuses (`InputError`: unreadable, silent, too short) gets no images; the returned mapping
    names each such clip (by `Clip.key`) and why, so the caller skips and counts it."""
    key = {"model": generator.name, "seed": seed, "num_images": num_images, **generator.settings}
    key_file = out / "images" / "settings.json"
    if key_file.is_file():
        old = json.loads(key_file.read_text())
        if old != json.loads(json.dumps(key)):
            raise InputError(
                out, f"holds images generated with other settings ({old}); use a new -o folder"
            )
    write_text(key_file, json.dumps(key, indent=1))
    made = 1 if getattr(generator, "deterministic", False) else num_images
    todo = [(c, k) for c in clips for k in range(made) if not image_path(out, c, k).is_file()]
    bar = tqdm(
        total=len(todo), desc="generating faces", unit="face", disable=not todo or not progress
    )
    skipped: dict[int, str] = {}  # clip key → why its audio could not be used
    for i in range(0, len(todo), batch_size):
        chunk = [(c, k) for c, k in todo[i : i + batch_size] if c.key not in skipped]
        try:
            made_faces = _faces(generator, chunk, seed)
        except InputError:  # an unusable clip in the batch: make the others one by one
            made_faces = []
            for item in chunk:
                if item[0].key in skipped:
                    continue
                try:
                    made_faces += _faces(generator, [item], seed)
                except InputError as e:
                    skipped[item[0].key] = f"{e.path}: {e.problem}"
        for (c, k), face in made_faces:
            save_image(to_pil(face), image_path(out, c, k))
        bar.update(len(todo[i : i + batch_size]))
    bar.close()
    for c in clips if made < num_images else ():
        for k in range(made, num_images):
            if c.key not in skipped and not image_path(out, c, k).is_file():
                write_bytes(image_path(out, c, k), image_path(out, c, 0).read_bytes())
    return skipped


def _faces(generator: FaceGenerator, items: Sequence[tuple[Clip, int]], seed: int) -> list:
    """[((clip, k), face)] for `items`, each face from its own seeded generator."""
    gens = [torch.Generator().manual_seed(_seed_for(seed, c, k)) for c, k in items]
    with torch.no_grad():
        faces = generator([c.audio for c, _ in items], gens)
    return list(zip(items, faces, strict=True))


# --- Reading a pipeline folder -----------------------------------------------------------------


def baseline_methods() -> dict[str, str]:
    """Class name → method name of every registered baseline pipeline."""
    return {spec.rsplit(":", 1)[1]: name for name, spec in BASELINES.items()}


def model_index(path: Path) -> dict[str, Any]:
    """A pipeline folder's model_index.json, or an `InputError` naming the folder."""
    index = Path(path) / "model_index.json"
    if not index.is_file():
        raise InputError(path, "is not a pipeline folder (no model_index.json)")
    try:
        data = json.loads(index.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(index, f"is not readable JSON ({e})") from None
    if not isinstance(data, dict):
        raise InputError(index, "is not a JSON object")
    return data


def describe(path: Path) -> dict[str, Any]:
    """What a pipeline folder holds, from its model_index.json alone (no weights loaded):
    {"class", "method": name, "title", "deterministic", "deviations"}; "method" is None for a
    class that is neither SCLDM's nor a registered baseline's."""
    index = model_index(path)
    cls = index.get("_class_name")
    if cls == SCLDM_CLASS:
        sampling = index.get("sampling") if isinstance(index.get("sampling"), dict) else {}
        try:
            scheduler = json.loads((Path(path) / "scheduler" / "scheduler_config.json").read_text())
        except (OSError, ValueError):
            scheduler = {}
        deviations = scldm_deviations(sampling, scheduler if isinstance(scheduler, dict) else {})
        return {"class": cls, **SCLDM_METHOD, "deviations": deviations, "method": "scldm"}
    methods = baseline_methods()
    if cls in methods:
        saved = index.get("method") if isinstance(index.get("method"), dict) else {}
        info = {"name": methods[cls], "title": methods[cls], "deterministic": False}
        info |= {"deviations": [], **saved}
        return {"class": cls, **info, "method": methods[cls]}
    return {"class": cls, "method": None, "name": None, "title": None}


def input_seconds(path: Path) -> float | None:
    """The seconds of audio a pipeline folder's front end reads (its saved config), when it
    says (SCLDM's and Speech2Face's; Wen et al. read a voice whole)."""
    try:
        config = json.loads((Path(path) / "frontend" / "config.json").read_text())
    except (OSError, ValueError):
        return None
    seconds = config.get("segment_seconds")
    return float(seconds) if isinstance(seconds, int | float) else None


def training_data(path: Path) -> dict[str, Any] | None:
    """What a pipeline folder's model was trained on, from its parts' scldm_meta.json:
    {"path", "name", "synthetic"} (`scldm.data.synthvox.training_data`), None if unrecorded."""
    for meta in sorted(Path(path).glob("*/scldm_meta.json")):
        try:
            data = json.loads(meta.read_text()).get("training_data")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(data, dict):
            return data
    return None


def synthetic_note(path: Path) -> str | None:
    """One sentence when the model was trained on synthetic voices only, else None."""
    data = training_data(path) or {}
    if not data.get("synthetic"):
        return None
    return (
        f"this model was trained on {data.get('name', 'synthetic data')}'s synthetic voices "
        "only; for a real voice its faces show what it learnt there, not that person"
    )


def unknown_pipeline(path: Path, cls: Any) -> InputError:
    """The error for a folder whose class is neither SCLDM's pipeline nor a known baseline's."""
    known = ", ".join([SCLDM_CLASS, *sorted(baseline_methods())])
    what = "names no pipeline class" if cls is None else f"holds a {cls} pipeline"
    return InputError(path, f"{what} in model_index.json; known pipelines: {known}")


def check_options(
    path: Path, overrides: Mapping[str, Any], scheduler: str | None = None
) -> dict[str, Any]:
    """`describe(path)`, after refusing diffusion-only options (steps, guidance, scheduler,
    prior scale, temperature) for a baseline: one `InputError` naming the folder. Unknown
    classes pass here (`load_generator` refuses them)."""
    info = describe(path)
    values = {**overrides, "scheduler": scheduler}
    given = [flag for key, flag in DIFFUSION_OPTIONS.items() if values.get(key) is not None]
    if info["method"] not in (None, "scldm") and given:
        title = str(info["title"]).split(" (")[0]
        options = " or ".join(given)
        plural = "options" if len(given) > 1 else "option"
        raise InputError(
            path, f"is a {title} pipeline, which has no {options} (diffusion-only {plural})"
        )
    return info


def _from_pretrained(cls: Any, path: Path) -> Any:
    """`cls.from_pretrained(path)`, with a missing or damaged weight file named in one line."""
    from safetensors import SafetensorError

    try:
        return cls.from_pretrained(path)
    except (OSError, SafetensorError) as e:  # diffusers reports both as OSError mostly
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(path, f"cannot load its weights: {first}") from None


def load_generator(
    path: Path,
    *,
    overrides: Mapping[str, Any] | None = None,
    scheduler: str | None = None,
    device: str | torch.device | None = None,
) -> PipelineGenerator | BaselineGenerator:
    """The `FaceGenerator` of a pipeline folder, dispatching on model_index.json's
    `_class_name`: SCLDM's pipeline with its sampling `overrides` (and `scheduler`, which swaps
    the sampler) or a baseline's (which refuses them). Weights load on `device` (default CPU)."""
    overrides = dict(overrides or {})
    info = check_options(path, overrides, scheduler)
    if info["method"] is None:
        raise unknown_pipeline(path, info["class"])
    if info["method"] == "scldm":
        from scldm.diffusion.pipeline import SpeechToFacePipeline

        pipe = _from_pretrained(SpeechToFacePipeline, path)
        if scheduler:
            pipe.set_sampling(scheduler=scheduler)
        generator: PipelineGenerator | BaselineGenerator = PipelineGenerator(pipe, overrides)
    else:
        pipe = _from_pretrained(pipeline_class(info["class"]), path)
        generator = BaselineGenerator(pipe)
    if device is not None:
        pipe.to(device)
    return generator
