"""`scldm evaluate`: the paper's metrics for any voice → face model, every number with its
convention, a 95 % confidence interval, the true-face floor and chance.

For each clip of a split the model generates K faces (cached as PNGs in OUT, so an interrupted
run resumes). They are compared with three references built from the same data:
- `model`: the generated faces against the clip's true face;
- `floor`: another true face image of the same speaker against the clip's face: what a
  perfect model could score (when a speaker has a single image, the floor is not reported);
- `chance`: the true face of a randomly paired other speaker (a seeded derangement).
A generator plugs in through `FaceGenerator` (voices → faces), so baselines are scored the
same way as SCLDM. Beside this module in `scldm.evaluation`: `clips` plans the clips and their
references, `fidelity` scores realism and reconstruction, `report` writes the report.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from scldm import __version__
from scldm.errors import InputError
from scldm.evaluation.clips import Clip, EvalSettings, image_path, plan_clips
from scldm.evaluation.metrics import (
    age_errors,
    feature_distances,
    gender_hits,
    mean_by_group,
    pooled_hits,
    summarise,
)
from scldm.faces import load_face_tensor, save_image, to_pil
from scldm.io import write_json, write_text

if TYPE_CHECKING:
    from scldm.evaluation.fidelity import FaceReconstructor

log = logging.getLogger(__name__)

CONDITIONS = ("model", "floor", "chance")
DISTANCES = ("l1", "l2", "cos")
DEFAULT_SETTINGS = EvalSettings()


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


@dataclass
class PipelineGenerator:
    """A `SpeechToFacePipeline` as a `FaceGenerator`: its saved sampling config (`pipe.sampling`)
    with `overrides` (num_inference_steps, guidance_scale, temperature, prior_scale)."""

    pipe: Any
    overrides: Mapping[str, Any] = field(default_factory=dict)
    name: str = "scldm"

    @property
    def image_size(self) -> int:
        return int(self.pipe.face_decoder.config.image_size)

    @property
    def settings(self) -> dict[str, Any]:
        sampling = asdict(self.pipe.sampling) | dict(self.overrides)
        del sampling["scheduler"]  # the component samples: recorded by its class
        return {"scheduler": type(self.pipe.scheduler).__name__, **sampling}

    def __call__(
        self, audio: Sequence[Path], generators: Sequence[torch.Generator]
    ) -> torch.Tensor:
        out = self.pipe(
            [str(a) for a in audio], generator=list(generators), output_type="pt", **self.overrides
        ).images
        return out * 2 - 1


def _seed_for(seed: int, clip: Clip, k: int) -> int:
    digest = hashlib.sha256(f"{seed}/{clip.audio.name}/{clip.speaker}/{clip.index}/{k}".encode())
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
) -> None:
    """Generate the missing `OUT/images/<clip>_<k>.png`. Each image has its own seeded
    generator, so the faces do not depend on batching or on where a run was interrupted. A
    cache made with other settings is refused rather than mixed."""
    key = {"model": generator.name, "seed": seed, "num_images": num_images, **generator.settings}
    key_file = out / "images" / "settings.json"
    if key_file.is_file():
        old = json.loads(key_file.read_text())
        if old != json.loads(json.dumps(key)):
            raise InputError(
                out, f"holds images generated with other settings ({old}); use a new -o folder"
            )
    write_text(key_file, json.dumps(key, indent=1))
    todo = [(c, k) for c in clips for k in range(num_images) if not image_path(out, c, k).is_file()]
    if not todo:
        return
    bar = tqdm(total=len(todo), desc="generating faces", unit="face", disable=not progress)
    for i in range(0, len(todo), batch_size):
        chunk = todo[i : i + batch_size]
        gens = [torch.Generator().manual_seed(_seed_for(seed, c, k)) for c, k in chunk]
        with torch.no_grad():
            faces = generator([c.audio for c, _ in chunk], gens)
        for (c, k), face in zip(chunk, faces, strict=True):
            save_image(to_pil(face), image_path(out, c, k))
        bar.update(len(chunk))
    bar.close()


def _load(paths: Sequence[Path | None], size: int) -> torch.Tensor:
    return torch.stack(
        [load_face_tensor(p, size) if p is not None else torch.zeros(3, size, size) for p in paths]
    )


def _batched(fn: Callable[[torch.Tensor], Any], faces: torch.Tensor, batch: int = 64) -> list:
    return [fn(faces[i : i + batch]) for i in range(0, len(faces), batch)]


def batched_features(extractor: Any, faces: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (B, D) float32, found (B,) bool) of `extractor` over faces, 64 at a time."""
    parts = _batched(extractor, faces)
    return torch.cat([p[0] for p in parts]).float(), torch.cat([p[1] for p in parts]).bool()


def _attributes(estimator: Any, faces: torch.Tensor) -> dict[str, list]:
    out: dict[str, list] = {}
    for part in _batched(estimator, faces):
        for k, v in part.items():
            out.setdefault(k, []).extend(v)
    return out


@dataclass
class Faces:
    """Faces of every condition, one row per (clip, image k) for `model`, one per clip else;
    `clip_of[c]` maps rows to clips and `present[c]` marks rows that exist (the floor needs a
    second image of the speaker)."""

    images: dict[str, torch.Tensor]
    clip_of: dict[str, list[int]]
    present: dict[str, torch.Tensor]


def load_faces(clips: Sequence[Clip], out: Path, num_images: int, size: int) -> Faces:
    model_rows = [(c, k) for c in clips for k in range(num_images)]
    return Faces(
        images={
            "true": _load([c.face for c in clips], size),
            "model": _load([image_path(out, c, k) for c, k in model_rows], size),
            "floor": _load([c.other_face for c in clips], size),
            "chance": _load([c.chance_face for c in clips], size),
        },
        clip_of={
            "model": [c.index for c, _ in model_rows],
            "floor": [c.index for c in clips],
            "chance": [c.index for c in clips],
        },
        present={
            "model": torch.ones(len(model_rows), dtype=torch.bool),
            "floor": torch.tensor([c.other_face is not None for c in clips]),
            "chance": torch.ones(len(clips), dtype=torch.bool),
        },
    )


def score_features(
    extractor: Any, faces: Faces, clips: Sequence[Clip], settings: EvalSettings
) -> dict[str, Any]:
    """Distances to the clip's face and to the speaker's mean face, raw and L2-normalised,
    and speech→face retrieval, for every condition."""
    speakers = [c.speaker for c in clips]
    true_f, true_ok = batched_features(extractor, faces.images["true"])
    # the speaker's mean true face feature (over the found faces of its clips)
    spk_mean, ids = mean_by_group(true_f.double(), speakers, weights=true_ok)
    spk_mean = spk_mean.float()
    row_of = {s: i for i, s in enumerate(ids)}
    sid = torch.tensor([row_of[s] for s in speakers])
    true_found = {s for s, o in zip(speakers, true_ok.tolist(), strict=True) if o}
    result: dict[str, Any] = {
        "convention": extractor.convention,
        "not_found": {"true": int((~true_ok).sum())},
    }
    for cond in CONDITIONS:
        f, ok = batched_features(extractor, faces.images[cond])
        ok &= faces.present[cond]
        clip_idx = torch.tensor(faces.clip_of[cond])
        ok &= true_ok[clip_idx]
        result["not_found"][cond] = int((~ok & faces.present[cond]).sum())
        if not bool(faces.present[cond].any()):
            result[cond] = None
            continue
        row_spk = [speakers[i] for i in clip_idx.tolist()]
        metrics: dict[str, Any] = {}
        for target, ref in (("clip", true_f[clip_idx]), ("speaker", spk_mean[sid[clip_idx]])):
            for norm in ("raw", "l2norm"):
                d = feature_distances(f, ref, normalise=norm == "l2norm")
                for name in DISTANCES:
                    v = d[name].numpy().copy()
                    v[~ok.numpy()] = np.nan
                    metrics[f"{name}/{norm}/{target}"] = summarise(
                        v, row_spk, resamples=settings.bootstrap, seed=settings.seed
                    )
        # retrieval by speaker: the mean feature of a speaker's faces of this condition as the
        # query, the speaker's mean true face as the key (speakers with found faces of both)
        found = {s for s, o in zip(row_spk, ok.tolist(), strict=True) if o} & true_found
        kept = [s for s in ids if s in found]
        pool = min(settings.pool_size, len(kept))
        if cond == "chance":
            # a face unrelated to the speaker ranks the speaker's key uniformly: R@K = K/pool.
            # The chance faces belong to a deranged partner, whose own key is in the pool, so
            # retrieving with them would measure the partner, not chance.
            hits = {k: np.full(len(kept), min(k, pool) / max(pool, 1)) for k in (1, 5, 10)}
        else:
            query, q_ids = mean_by_group(f.double(), row_spk, weights=ok)
            q_row = {s: i for i, s in enumerate(q_ids)}
            hits = pooled_hits(
                query.float()[torch.tensor([q_row[s] for s in kept], dtype=torch.long)],
                spk_mean[torch.tensor([row_of[s] for s in kept], dtype=torch.long)],
                pool_size=settings.pool_size,
                seed=settings.seed,
            )
        for k, h in hits.items():
            metrics[f"R@{k}"] = summarise(h, kept, resamples=settings.bootstrap, seed=settings.seed)
        metrics["pool_size"] = pool
        result[cond] = metrics
    return result


def score_attributes(
    estimator: Any,
    faces: Faces,
    clips: Sequence[Clip],
    settings: EvalSettings,
    *,
    conditions: Sequence[str] = CONDITIONS,
) -> dict[str, Any]:
    """Gender accuracy, age within ±tolerance and age MAE for every condition, against the
    manifest's labels where a clip has them, else against the estimator on the true face.
    Class attributes the estimator returns beyond gender and age (SynthVox's oracle reads all
    of them) are scored as accuracies against the manifest's values."""
    speakers = [c.speaker for c in clips]
    on_true = _attributes(estimator, faces.images["true"])
    target_source = {}
    targets: dict[str, list] = {}
    for name in ("gender", "age"):
        labelled = [c.labels.get(name) for c in clips]
        use_labels = all(v is not None for v in labelled)
        targets[name] = labelled if use_labels else on_true.get(name, [None] * len(clips))
        target_source[name] = "manifest labels" if use_labels else "estimator on the true face"
    extras = [
        k
        for k in on_true
        if k not in ("gender", "age")
        and all(isinstance(c.labels.get(k), str | bool) for c in clips)
    ]
    result: dict[str, Any] = {
        "convention": {
            **estimator.convention,
            "targets": target_source,
            "age_tolerance_years": settings.age_tolerance,
        },
        "not_found": {"true": sum(v is None for v in on_true.get("gender", []))},
    }
    for cond in conditions:
        present = faces.present[cond]
        if not bool(present.any()):
            result[cond] = None
            continue
        pred = _attributes(estimator, faces.images[cond])
        rows = faces.clip_of[cond]
        row_spk = [speakers[i] for i in rows]
        missing = ~present.numpy()

        def masked(v: np.ndarray, missing: np.ndarray = missing) -> np.ndarray:
            return np.where(missing, np.nan, v.astype(float))

        result["not_found"][cond] = sum(
            p is None for p, m in zip(pred.get("gender", []), missing, strict=False) if not m
        )
        metrics = {}
        if "gender" in pred:
            hits = gender_hits(pred["gender"], [targets["gender"][i] for i in rows])
            metrics["gender_acc"] = summarise(masked(hits), row_spk, resamples=settings.bootstrap)
        if "age" in pred:
            err = masked(age_errors(pred["age"], [targets["age"][i] for i in rows]))
            within = np.where(
                np.isfinite(err), (err <= settings.age_tolerance).astype(float), np.nan
            )
            metrics["age_within"] = summarise(within, row_spk, resamples=settings.bootstrap)
            metrics["age_mae"] = summarise(err, row_spk, resamples=settings.bootstrap)
        for name in extras:
            hits = np.array(
                [float(p == clips[i].labels[name]) for p, i in zip(pred[name], rows, strict=True)]
            )
            metrics[f"{name}_acc"] = summarise(masked(hits), row_spk, resamples=settings.bootstrap)
        result[cond] = metrics
    return result


def evaluate(
    generator: FaceGenerator,
    data: Path,
    out: Path,
    *,
    features: Mapping[str, Any],
    attributes: Mapping[str, Any],
    settings: EvalSettings = DEFAULT_SETTINGS,
    model_path: str | None = None,
    reconstructor: FaceReconstructor | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Generate (or reuse) faces for the split, score them with every feature network and
    attribute estimator, their realism and (given a `reconstructor`) the face autoencoder's
    fidelity; write OUT/metrics.json, OUT/report.md and its pictures."""
    from scldm.evaluation.fidelity import score_fidelity  # these read this module's types
    from scldm.evaluation.report import write_report

    clips = plan_clips(data, settings.split, max_clips=settings.max_clips, seed=settings.seed)
    out.mkdir(parents=True, exist_ok=True)
    generate_cached(
        generator,
        clips,
        out,
        num_images=settings.num_images,
        seed=settings.seed,
        batch_size=settings.batch_size,
        progress=progress,
    )
    faces = load_faces(clips, out, settings.num_images, generator.image_size)
    result: dict[str, Any] = {
        "model": {"name": generator.name, "path": model_path, **generator.settings},
        "data": str(data),
        "settings": asdict(settings),
        "code_version": __version__,
        "counts": {
            "clips": len(clips),
            "speakers": len({c.speaker for c in clips}),
            "generated_images": len(clips) * settings.num_images,
            "floor_clips": sum(c.other_face is not None for c in clips),
        },
        "conventions": {
            "conditions": {
                "model": "generated faces vs the clip's true face",
                "floor": "another true image of the same speaker vs the clip's face",
                "chance": "a true face of a randomly paired other speaker (seeded derangement)",
            },
            "distances": "per image: l1 = sum|a-b|, l2 = ||a-b||_2, cos = 100*(1 - cos(a, b)); "
            "raw features and L2-normalised (l2norm); target = the clip's true face (clip) or the "
            "mean feature of the speaker's true faces in the split (speaker)",
            "aggregation": "mean over speakers of per-speaker means; 95% percentile bootstrap over "
            f"speakers ({settings.bootstrap} resamples)",
            "retrieval": "per speaker: query = mean feature of the condition's faces, key = mean "
            f"true face feature; cosine; pools of {settings.pool_size} speakers (20 random pools, "
            "or one of everyone when fewer); ties count against the query; the chance row's R@K is "
            "K/pool exactly (its faces are a paired other speaker's, whose retrieval would "
            "measure that speaker)",
            "not_found": "faces where a detector found no face are counted per condition and left "
            "out of that condition's metrics",
        },
        "features": {},
        "attributes": {},
    }
    for name, extractor in features.items():
        log.info("scoring features: %s", name)
        result["features"][name] = score_features(extractor, faces, clips, settings)
    for name, estimator in attributes.items():
        log.info("scoring attributes: %s", name)
        result["attributes"][name] = score_attributes(estimator, faces, clips, settings)
    result |= score_fidelity(faces, clips, features, attributes, settings, reconstructor)
    write_json(out / "metrics.json", result, indent=1)
    write_report(result, clips, faces, out, settings)
    return result
