"""`scldm evaluate`: the paper's metrics for any voice → face model, every number with its
convention, a 95 % confidence interval, the true-face floor and chance.

For each clip of a split the model generates K faces (cached as PNGs in OUT, so an interrupted
run resumes). They are compared with three references built from the same data:
- `model`: the generated faces against the clip's true face;
- `floor`: another true face image of the same speaker against the clip's face: what a
  perfect model could score (when a speaker has a single image, the floor is not reported);
- `chance`: the true face of a randomly paired other speaker (a seeded derangement).
A generator plugs in through `FaceGenerator` (voices → faces), so baselines are scored the
same way as SCLDM.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from scldm import __version__
from scldm.data.manifest import read_manifest
from scldm.errors import InputError
from scldm.evaluation.metrics import (
    age_errors,
    feature_distances,
    gender_hits,
    mean_by_group,
    pooled_hits,
    summarise,
)
from scldm.faces import load_face_tensor, make_grid, save_image, to_pil
from scldm.io import save_figure, write_json, write_text

log = logging.getLogger(__name__)

CONDITIONS = ("model", "floor", "chance")
DISTANCES = ("l1", "l2", "cos")
NOT_LABELS = {"speaker_id", "audio", "face", "faces", "split", "source"}  # manifest fields


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


@dataclass(frozen=True)
class EvalSettings:
    split: str = "test"
    num_images: int = 1
    seed: int = 0
    max_clips: int | None = None
    batch_size: int = 16
    pool_size: int = 100
    age_tolerance: float = 10.0
    bootstrap: int = 1000


@dataclass
class Clip:
    index: int
    speaker: str
    audio: Path
    face: Path
    other_face: Path | None  # another image of the same speaker: the floor's reference
    chance_face: Path  # a face of a different speaker: chance
    labels: dict[str, Any] = field(default_factory=dict)


def plan_clips(data: Path, split: str, *, max_clips: int | None, seed: int) -> list[Clip]:
    """The clips of `split` in manifest order (the first `max_clips`), each with its floor and
    chance references. Chance pairs every speaker with another by a seeded derangement."""
    rows = read_manifest(data, split=split)
    if max_clips is not None:
        rows = rows[:max_clips]
    if not rows:
        raise InputError(data, f"has no clips in split {split!r}")
    speakers = sorted({r["speaker_id"] for r in rows})
    if len(speakers) < 2:
        raise InputError(data, f"split {split!r} needs at least 2 speakers for chance")
    images: dict[str, list[str]] = {}
    for r in read_manifest(data):  # every image of a speaker, from all of its rows
        if r["speaker_id"] in speakers:
            for f in [r["face"], *r.get("faces", [])]:
                if f not in images.setdefault(r["speaker_id"], []):
                    images[r["speaker_id"]].append(f)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(speakers))
    # a cyclic shift of a random order: a derangement, so nobody is paired with themself
    partner = {speakers[perm[i]]: speakers[perm[(i + 1) % len(perm)]] for i in range(len(perm))}
    clips = []
    for i, r in enumerate(rows):
        s = r["speaker_id"]
        others = [f for f in images[s] if f != r["face"]]
        clips.append(
            Clip(
                index=i,
                speaker=s,
                audio=data / r["audio"],
                face=data / r["face"],
                other_face=data / others[i % len(others)] if others else None,
                chance_face=data / images[partner[s]][i % len(images[partner[s]])],
                labels={k: v for k, v in r.items() if k not in NOT_LABELS},
            )
        )
    return clips


def _seed_for(seed: int, clip: Clip, k: int) -> int:
    digest = hashlib.sha256(f"{seed}/{clip.audio.name}/{clip.speaker}/{clip.index}/{k}".encode())
    return int.from_bytes(digest.digest()[:8], "little") >> 1


def image_path(out: Path, clip: Clip, k: int) -> Path:
    return out / "images" / f"{clip.index:06d}_{k}.png"


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


def _features(extractor: Any, faces: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
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
    true_f, true_ok = _features(extractor, faces.images["true"])
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
        f, ok = _features(extractor, faces.images[cond])
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
        query, q_ids = mean_by_group(f.double(), row_spk, weights=ok)
        found = {s for s, o in zip(row_spk, ok.tolist(), strict=True) if o} & true_found
        kept = [s for s in ids if s in found]
        q_row = {s: i for i, s in enumerate(q_ids)}
        hits = pooled_hits(
            query.float()[torch.tensor([q_row[s] for s in kept], dtype=torch.long)],
            spk_mean[torch.tensor([row_of[s] for s in kept], dtype=torch.long)],
            pool_size=settings.pool_size,
            seed=settings.seed,
        )
        for k, h in hits.items():
            metrics[f"R@{k}"] = summarise(h, kept, resamples=settings.bootstrap, seed=settings.seed)
        metrics["pool_size"] = min(settings.pool_size, len(kept))
        result[cond] = metrics
    return result


def score_attributes(
    estimator: Any, faces: Faces, clips: Sequence[Clip], settings: EvalSettings
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
    for cond in CONDITIONS:
        present = faces.present[cond]
        if not bool(present.any()):
            result[cond] = None
            continue
        pred = _attributes(estimator, faces.images[cond])
        rows = faces.clip_of[cond]
        row_spk = [speakers[i] for i in rows]
        missing = ~present.numpy()

        def masked(v: np.ndarray, missing: np.ndarray = missing) -> np.ndarray:
            v = v.astype(float)
            v[missing] = np.nan
            return v

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
    settings: EvalSettings = EvalSettings(),
    model_path: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Generate (or reuse) faces for the split, score them with every feature network and
    attribute estimator, and write OUT/metrics.json, OUT/report.md and its pictures."""
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
            "or one of everyone when fewer); ties count against the query; chance R@K = K/pool",
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
    write_json(out / "metrics.json", result, indent=1)
    write_report(result, clips, faces, out, settings)
    return result


# --- Report ----------------------------------------------------------------------------------


def fmt(m: Mapping[str, Any] | None, digits: int = 2, scale: float = 1.0) -> str:
    """'value [low, high]' of a summarised metric; n/a when missing."""
    if not m or not np.isfinite(m["value"]):
        return "n/a"
    v, (lo, hi) = m["value"] * scale, (x * scale for x in m["ci"])
    return f"{v:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def feature_table(name: str, res: Mapping[str, Any]) -> str:
    """The paper's Table 2 layout for one feature network: L1, L2, cosine on L2-normalised
    features against the clip's face, then retrieval."""
    lines = [
        f"| {name} | L1 ↓ | L2 ↓ | cos ×100 ↓ | cos ×100 to speaker mean ↓ | R@1 | R@5 | R@10 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for cond in CONDITIONS:
        m = res.get(cond)
        if m is None:
            lines.append(f"| {cond} | n/a | n/a | n/a | n/a | n/a | n/a | n/a |")
            continue
        cells = [fmt(m[f"{d}/l2norm/clip"]) for d in DISTANCES]
        cells.append(fmt(m["cos/l2norm/speaker"]))
        cells += [fmt(m[f"R@{k}"], 1, 100) for k in (1, 5, 10)]
        lines.append(f"| {cond} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def attribute_table(name: str, res: Mapping[str, Any]) -> str:
    keys = [k for k in (res.get("model") or {}) if k]
    head = [k.replace("_", " ") for k in keys]
    lines = [f"| {name} | " + " | ".join(head) + " |", "|---|" + "---|" * len(keys)]
    for cond in CONDITIONS:
        m = res.get(cond)
        cells = ["n/a" if m is None else fmt(m.get(k), 1 if k == "age_mae" else 3) for k in keys]
        lines.append(f"| {cond} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _plot(result: Mapping[str, Any], path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(f"{n}: cos ×100 (↓)", r, "cos/l2norm/clip") for n, r in result["features"].items()]
    panels += [
        (f"{n}: {k.replace('_', ' ')}", r, k)
        for n, r in result["attributes"].items()
        for k in ("gender_acc", "age_within")
        if r.get("model") and k in r["model"]
    ]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3), squeeze=False)
    for ax, (title, res, key) in zip(axes[0], panels, strict=True):
        conds = [c for c in CONDITIONS if res.get(c)]
        vals = [res[c][key]["value"] for c in conds]
        errs = np.array(
            [
                [v - res[c][key]["ci"][0], res[c][key]["ci"][1] - v]
                for c, v in zip(conds, vals, strict=True)
            ]
        ).T
        ax.bar(
            conds,
            vals,
            yerr=errs,
            capsize=4,
            color=["tab:blue", "tab:green", "tab:grey"][: len(conds)],
        )
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def sample_grid(
    clips: Sequence[Clip], faces: Faces, num_images: int, path: Path, *, speakers: int = 8
) -> Path:
    """true face | K generated faces for the first clip of up to `speakers` speakers."""
    firsts, seen = [], set()
    for c in clips:
        if c.speaker not in seen:
            seen.add(c.speaker)
            firsts.append(c)
    firsts = firsts[:speakers]
    images, captions = [], []
    for c in firsts:
        images.append(faces.images["true"][c.index])
        tag = " ".join(str(c.labels[k]) for k in ("gender", "age") if c.labels.get(k) is not None)
        captions.append(f"true {tag}".strip())
        for k in range(num_images):
            images.append(faces.images["model"][c.index * num_images + k])
            captions.append("generated")
    return save_image(make_grid(images, ncols=1 + num_images, captions=captions), path)


def write_report(
    result: Mapping[str, Any],
    clips: Sequence[Clip],
    faces: Faces,
    out: Path,
    settings: EvalSettings,
) -> Path:
    grid = sample_grid(clips, faces, settings.num_images, out / "samples.png")
    plot = _plot(result, out / "metrics.png")
    c = result["counts"]
    lines = [
        "# Evaluation",
        "",
        f"Model `{result['model'].get('path') or result['model']['name']}` on `{result['data']}`, "
        f"split `{settings.split}`: {c['clips']} clips of {c['speakers']} speakers, "
        f"{settings.num_images} generated face(s) per clip (seed {settings.seed}). Generation: "
        + ", ".join(f"{k} {v}" for k, v in result["model"].items() if k not in ("name", "path"))
        + ".",
        "",
        "Every cell is `value [95 % CI]`: the mean over speakers, with a bootstrap over speakers. "
        "Rows: **model** (generated vs the clip's true face), **floor** (another true image of "
        "the same speaker: what a perfect model scores) and **chance** (a true face of a "
        "randomly paired speaker). Conventions in full are in metrics.json.",
        "",
    ]
    for name, res in result["features"].items():
        conv = ", ".join(f"{k}: {v}" for k, v in res["convention"].items())
        lines += [
            f"## Feature distances and retrieval: `{name}`",
            "",
            f"Convention: {conv}. Distances on L2-normalised features against the clip's face; "
            f"retrieval by speaker in pools of {settings.pool_size} (or everyone, if fewer).",
            f"Faces not found: {res['not_found']}.",
            "",
            feature_table(name, res),
            "",
        ]
    for name, res in result["attributes"].items():
        conv = ", ".join(f"{k}: {v}" for k, v in res["convention"].items())
        lines += [
            f"## Attributes: `{name}`",
            "",
            f"Convention: {conv}. Faces not found: {res['not_found']}.",
            "",
            attribute_table(name, res),
            "",
        ]
    if plot is not None:
        lines += [f"![metrics]({plot.name})", ""]
    lines += ["## Samples (true | generated)", "", f"![samples]({grid.name})", ""]
    return write_text(out / "report.md", "\n".join(lines))
