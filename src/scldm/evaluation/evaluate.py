"""`scldm evaluate`: the paper's metrics for any voice → face model, every number with its
convention, a 95 % confidence interval, the true-face floor and chance.

For each clip of a split the model generates K faces (cached as PNGs in OUT, so an interrupted
run resumes). They are compared with three references built from the same data:
- `model`: the generated faces against the clip's true face;
- `floor`: another true face image of the same speaker against the clip's face: what a
  perfect model could score (when a speaker has a single image, the floor is not reported);
- `chance`: the true face of a randomly paired other speaker (a seeded derangement).
A generator plugs in through `FaceGenerator` (voices → faces; `generators` loads SCLDM's and
the baselines' pipelines as one), so baselines are scored the same way as SCLDM, at one scoring
size (`EvalSettings.image_size`). With K ≥ 2 faces per clip, their diversity is scored too.
Beside this module in `scldm.evaluation`: `clips` plans the clips and their references,
`fidelity` scores realism and reconstruction, `report` writes the report.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from scldm import __version__
from scldm.errors import InputError
from scldm.evaluation.clips import Clip, EvalSettings, face_size, image_path, plan_clips
from scldm.evaluation.generators import (  # PipelineGenerator: re-exported for older imports
    FaceGenerator,
    PipelineGenerator,  # noqa: F401
    generate_cached,
    warn_if_identical,
)
from scldm.evaluation.metrics import (
    age_errors,
    feature_distances,
    gender_hits,
    mean_by_group,
    pairwise_diversity,
    pooled_hits,
    speaker_means,
    summarise,
)
from scldm.faces import MIN_FACE_SIDE, load_face_tensor
from scldm.io import write_json

if TYPE_CHECKING:
    from scldm.evaluation.fidelity import FaceReconstructor

log = logging.getLogger(__name__)

CONDITIONS = ("model", "floor", "chance")
DISTANCES = ("l1", "l2", "cos")
DEFAULT_SETTINGS = EvalSettings()


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


def _summary(
    values: np.ndarray,
    speakers: Sequence[str],
    settings: EvalSettings,
    sink: dict[str, dict[str, float]] | None = None,
    key: str = "",
) -> dict[str, Any]:
    """`summarise` over speakers; with a `sink`, also its per-speaker means as sink[key]."""
    if sink is not None:
        means, ids = speaker_means(values, speakers)
        sink[key] = dict(zip(ids, means.tolist(), strict=True))
    return summarise(values, speakers, resamples=settings.bootstrap, seed=settings.seed)


def score_features(
    extractor: Any,
    faces: Faces,
    clips: Sequence[Clip],
    settings: EvalSettings,
    per_speaker: dict[str, dict[str, float]] | None = None,
) -> dict[str, Any]:
    """Distances to the clip's face and to the speaker's mean face, raw and L2-normalised,
    and speech→face retrieval, for every condition; the diversity of each clip's K ≥ 2
    generated faces. `per_speaker` receives the model condition's per-speaker values."""
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
        sink = per_speaker if cond == "model" else None
        f, ok = batched_features(extractor, faces.images[cond])
        ok &= faces.present[cond]
        made = ok.clone()  # found, whether or not the clip's true face was
        clip_idx = torch.tensor(faces.clip_of[cond])
        ok &= true_ok[clip_idx]
        result["not_found"][cond] = int((~ok & faces.present[cond]).sum())
        if not bool(faces.present[cond].any()):
            result[cond] = None
            continue
        row_spk = [speakers[i] for i in clip_idx.tolist()]
        metrics: dict[str, Any] = {}
        if cond == "model":  # rows are clip-major: clip c's K faces are rows cK … cK + K − 1
            k = settings.num_images
            metrics["diversity"] = None  # n/a with one face a clip
            if k >= 2:
                div = pairwise_diversity(f.view(-1, k, f.shape[-1]), made.view(-1, k))
                metrics["diversity"] = _summary(div, speakers, settings, sink, "diversity")
        for target, ref in (("clip", true_f[clip_idx]), ("speaker", spk_mean[sid[clip_idx]])):
            for norm in ("raw", "l2norm"):
                d = feature_distances(f, ref, normalise=norm == "l2norm")
                for name in DISTANCES:
                    v = d[name].numpy().copy()
                    v[~ok.numpy()] = np.nan
                    key = f"{name}/{norm}/{target}"
                    metrics[key] = _summary(v, row_spk, settings, sink, key)
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
            metrics[f"R@{k}"] = _summary(h, kept, settings, sink, f"R@{k}")
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
    per_speaker: dict[str, dict[str, float]] | None = None,
) -> dict[str, Any]:
    """Gender accuracy, age within ±tolerance and age MAE for every condition, against the
    manifest's labels where a clip has them, else against the estimator on the true face.
    Class attributes the estimator returns beyond gender and age (SynthVox's oracle reads all
    of them) are scored as accuracies against the manifest's values. `per_speaker` receives
    the model condition's per-speaker values."""
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
        values: dict[str, np.ndarray] = {}
        if "gender" in pred:
            values["gender_acc"] = gender_hits(pred["gender"], [targets["gender"][i] for i in rows])
        if "age" in pred:
            err = masked(age_errors(pred["age"], [targets["age"][i] for i in rows]))
            values["age_within"] = np.where(
                np.isfinite(err), (err <= settings.age_tolerance).astype(float), np.nan
            )
            values["age_mae"] = err
        for name in extras:
            values[f"{name}_acc"] = np.array(
                [float(p == clips[i].labels[name]) for p, i in zip(pred[name], rows, strict=True)]
            )
        sink = per_speaker if cond == "model" else None
        result[cond] = {
            k: _summary(masked(v), row_spk, settings, sink, k) for k, v in values.items()
        }
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
    """Generate (or reuse) faces for the split, score them at the scoring size with every
    feature network and attribute estimator, their realism and (given a `reconstructor`) the
    face autoencoder's fidelity; write OUT/metrics.json, OUT/per_speaker.json (the model's
    per-speaker values, for paired comparisons), OUT/report.md and its pictures."""
    from scldm.evaluation.fidelity import score_fidelity  # these read this module's types
    from scldm.evaluation.report import write_report

    if settings.image_size is not None and settings.image_size < MIN_FACE_SIDE:
        raise InputError(None, f"--image-size must be at least {MIN_FACE_SIDE}")
    unreadable: dict[str, str] = {}
    clips = plan_clips(
        data, settings.split, max_clips=settings.max_clips, seed=settings.seed,
        unreadable=unreadable,
    )  # fmt: skip
    if unreadable:  # damaged true faces: their clips are left out, and counted
        path, problem = next(iter(unreadable.items()))
        log.warning(
            "%d face image(s) cannot be read and are left out, with their clips (first: %s: %s)",
            len(unreadable), path, problem,
        )  # fmt: skip
    size = settings.image_size or face_size(clips)
    warn_if_identical(generator, settings.num_images)
    out.mkdir(parents=True, exist_ok=True)
    skipped = generate_cached(
        generator,
        clips,
        out,
        num_images=settings.num_images,
        seed=settings.seed,
        batch_size=settings.batch_size,
        progress=progress,
    )
    if skipped:  # clips whose audio the model refused: left out of every row, and counted
        log.warning(
            "skipping %d of %d clips whose audio the model cannot use (first: %s)",
            len(skipped), len(clips), next(iter(skipped.values())),
        )  # fmt: skip
        kept = [c for c in clips if c.key not in skipped]
        clips = [dataclasses.replace(c, index=i) for i, c in enumerate(kept)]
        if len({c.speaker for c in clips}) < 2:
            raise InputError(data, "fewer than 2 speakers have usable audio")
    faces = load_faces(clips, out, settings.num_images, size)
    params = getattr(generator, "num_parameters", None)
    result: dict[str, Any] = {
        "model": {"name": generator.name, "path": model_path, **generator.settings},
        "method": {**getattr(generator, "method", {}), "parameters": params},
        "scoring": {
            "image_size": size,
            "generated_size": generator.image_size,
            "convention": "true and generated faces centre-cropped and resized to image_size "
            "with Lanczos (PIL); image_size is --image-size or, by default, the side of the "
            "split's true face images as stored",
        },
        "data": str(data),
        "settings": asdict(settings),
        "code_version": __version__,
        "counts": {
            "clips": len(clips),
            "speakers": len({c.speaker for c in clips}),
            "generated_images": len(clips) * settings.num_images,
            "floor_clips": sum(c.other_face is not None for c in clips),
            "skipped_clips": len(skipped),
            "unreadable_faces": len(unreadable),
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
            "diversity": "per clip with K >= 2 generated faces: the mean over its K(K-1)/2 pairs "
            "of 100*(1 - cos) between L2-normalised features (found faces only); 0 = identical "
            "faces; n/a with K = 1; then mean over speakers with the bootstrap",
        },
        "features": {},
        "attributes": {},
    }
    per_speaker: dict[str, dict[str, float]] = {}
    for kind, scorers, score in (
        ("features", features, score_features),
        ("attributes", attributes, score_attributes),
    ):
        for name, scorer in scorers.items():
            log.info("scoring %s: %s", kind, name)
            sink: dict[str, dict[str, float]] = {}
            result[kind][name] = score(scorer, faces, clips, settings, per_speaker=sink)
            per_speaker |= {f"{kind}/{name}/{k}": v for k, v in sink.items()}
    result |= score_fidelity(faces, clips, features, attributes, settings, reconstructor)
    write_json(
        out / "per_speaker.json",
        {
            "condition": "model",
            "convention": "KIND/NETWORK/METRIC → {speaker: the speaker's mean}: the values "
            "metrics.json's model rows average and bootstrap over speakers",
            "values": per_speaker,
        },
        indent=None,
    )
    write_json(out / "metrics.json", result, indent=1)
    write_report(result, clips, faces, out, settings)
    return result
