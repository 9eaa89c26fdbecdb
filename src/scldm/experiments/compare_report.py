"""The outputs of `scldm compare`, from the evaluations it ran: the paper's Table 2/3 layout
(OUT/table.md and table.csv), the paired differences of SCLDM and each other method
(differences.csv), the face-only attributes, OUT/grid.png (true face | one face per method for
the same voices) and OUT/compare.json (everything, with the conventions).

Rows: each model; for a method trained with several seeds, each seed and the mean over seeds
(per speaker, then bootstrapped over speakers like every other number); then the true-face
floor, chance and, for the SynthVox oracle's attributes, the voice-only ceiling (exact, from
the labels: no interval). The floor, chance and realism floor depend on the clips only, so they
are read from the first model's evaluation (every model's are the same).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scldm.data.synthvox.attributes import FACE_ONLY, GENDER_LINKED_FACE
from scldm.evaluation.clips import EvalSettings, first_clips, image_path, plan_clips, true_caption
from scldm.evaluation.metrics import bootstrap_ci, paired_bootstrap
from scldm.evaluation.report import fmt
from scldm.experiments.compare import Model
from scldm.faces import load_face_tensor, make_grid, save_image
from scldm.io import write_csv, write_json, write_text

REFERENCE = "scldm"  # differences are this method minus each other one
GRID_MIN_SIZE = 96  # px a face in grid.png
ZERO = 1e-9  # an interval end within this of 0 does not exclude 0 (float noise of equal values)


@dataclass(frozen=True)
class Column:
    key: str  # "features/NET/METRIC", "attributes/EST/METRIC" or "realism/two_sample"
    header: str
    short: str  # the CSV's column name
    digits: int = 2
    scale: float = 1.0

    @property
    def paired(self) -> bool:
        """Whether per-speaker values exist (realism is one classifier over all faces)."""
        return not self.key.startswith("realism/")


def feature_columns(net: str, *, prefix: str = "") -> list[Column]:
    f = f"features/{net}/"
    return [
        Column(f + "l1/l2norm/clip", "L1 ↓", prefix + "l1"),
        Column(f + "l2/l2norm/clip", "L2 ↓", prefix + "l2", 3),
        Column(f + "cos/l2norm/clip", "cos ×100 ↓", prefix + "cos"),
        Column(f + "R@1", "R@1 %", prefix + "R@1", 1, 100),
        Column(f + "R@10", "R@10 %", prefix + "R@10", 1, 100),
    ]


def attribute_columns(est: str, tolerance: float, *, prefix: str = "") -> list[Column]:
    a = f"attributes/{est}/"
    return [
        Column(a + "gender_acc", "gender", prefix + "gender", 3),
        Column(a + "age_within", f"age ±{tolerance:g} y", prefix + "age_within", 3),
        Column(a + "age_mae", "age MAE ↓", prefix + "age_mae", 1),
    ]


def main_columns(net: str | None, est: str | None, tolerance: float) -> list[Column]:
    """The paper's Table 2/3 columns (after params and training minutes)."""
    cols = feature_columns(net) if net else []
    cols += attribute_columns(est, tolerance) if est else []
    if net:
        cols.append(Column(f"features/{net}/diversity", "diversity", "diversity"))
    return [*cols, Column("realism/two_sample", "two-sample acc ↓", "two_sample", 3)]


def face_only_columns(metrics: Mapping[str, Any], est: str | None) -> list[Column]:
    """The estimator's accuracies of the face attributes no voice carries (and, marked †, of
    those linked to gender only), as far as the evaluation scored them."""
    scored = ((metrics.get("attributes", {}).get(est) or {}).get("model") or {}) if est else {}
    cols = []
    for names, mark in ((FACE_ONLY, ""), (GENDER_LINKED_FACE, " †")):
        for name in names:
            if f"{name}_acc" in scored:
                header = name.replace("_", " ") + mark
                cols.append(Column(f"attributes/{est}/{name}_acc", header, name, 3))
    return cols


# --- Cells -------------------------------------------------------------------------------------


Cell = dict[str, Any] | None  # {"value": float, "ci": [low, high] | None}


def metric_cell(metrics: Mapping[str, Any], key: str, cond: str) -> Cell:
    """The summary of `key` for condition `cond` (model, floor, chance) in a metrics.json."""
    if key == "realism/two_sample":
        test = (metrics.get("realism") or {}).get("two_sample", {}).get(cond)
        return None if not test else {"value": test["accuracy"], "ci": test["ci"]}
    kind, name, metric = key.split("/", 2)
    m = ((metrics.get(kind) or {}).get(name) or {}).get(cond) or {}
    cell = m.get(metric)
    return None if not cell else {"value": cell["value"], "ci": cell["ci"]}


def seed_mean(per_speaker: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Per speaker, the mean over seeds (speakers with a finite value in every seed)."""
    shared = set.intersection(*(set(p) for p in per_speaker)) if per_speaker else set()
    out = {}
    for s in sorted(shared):
        values = [p[s] for p in per_speaker]
        if all(np.isfinite(values)):
            out[s] = float(np.mean(values))
    return out


def cell_text(cell: Cell, col: Column) -> str:
    if not cell or cell["value"] is None or not np.isfinite(cell["value"]):
        return "n/a"
    if cell.get("ci") is None:
        return f"{cell['value'] * col.scale:.{col.digits}f}"
    return fmt(cell, col.digits, col.scale)


def _params(n: int | None) -> str:
    if n is None:
        return "n/a"
    return f"{n / 1e6:.2f} M" if n >= 1e5 else f"{n / 1e3:.1f} k"


# --- Rows --------------------------------------------------------------------------------------


@dataclass
class Row:
    label: str
    kind: str  # model, mean, floor, chance, ceiling
    method: str = ""
    seed: int | None = None
    parameters: int | None = None
    train_minutes: float | None = None
    cells: dict[str, Cell] = field(default_factory=dict)


@dataclass
class Group:
    """A method's models: the seeds of one trained method, or one model given by name."""

    label: str
    method: str
    models: list[Model]
    per_speaker: list[dict[str, dict[str, float]]]  # each model's per_speaker.json values

    def speakers(self, key: str) -> dict[str, float]:
        return seed_mean([p.get(key, {}) for p in self.per_speaker])


def _groups(models: Sequence[Model], per_speaker: Mapping[str, Any]) -> list[Group]:
    groups: dict[str, Group] = {}
    for m in models:
        key = m.method if m.seed is not None else f"model:{m.name}"
        label = m.method if m.seed is not None else m.name
        g = groups.setdefault(key, Group(label, m.method, [], []))
        g.models.append(m)
        g.per_speaker.append(per_speaker[m.name])
    return list(groups.values())


def build_rows(
    groups: Sequence[Group],
    metrics: Mapping[str, Any],
    minutes: Mapping[str, float | None],
    columns: Sequence[Column],
    ceiling: Mapping[str, float],
    settings: EvalSettings,
) -> list[Row]:
    rows = []
    for g in groups:
        for m in g.models:
            met = metrics[m.name]
            cells = {c.key: metric_cell(met, c.key, "model") for c in columns}
            params = met.get("method", {}).get("parameters")
            rows.append(Row(m.name, "model", g.method, m.seed, params, minutes[m.name], cells))
        if len(g.models) > 1:
            cells = {}
            for c in columns:
                if c.paired:
                    v = np.array(list(g.speakers(c.key).values()))
                    mean, lo, hi = bootstrap_ci(v, resamples=settings.bootstrap, seed=settings.seed)
                    cells[c.key] = {"value": mean, "ci": [lo, hi]} if v.size else None
                else:  # realism: the mean of the seeds' accuracies
                    seeds = [metric_cell(metrics[m.name], c.key, "model") for m in g.models]
                    ok = [s["value"] for s in seeds if s]
                    cells[c.key] = {"value": float(np.mean(ok)), "ci": None} if ok else None
            mins = [minutes[m.name] for m in g.models if minutes[m.name] is not None]
            label = f"{g.label} (mean of seeds {', '.join(str(m.seed) for m in g.models)})"
            mean_min = float(np.mean(mins)) if mins else None
            rows.append(Row(label, "mean", g.method, None, rows[-1].parameters, mean_min, cells))
    first = metrics[groups[0].models[0].name]
    for cond in ("floor", "chance"):
        rows.append(
            Row(cond, cond, cells={c.key: metric_cell(first, c.key, cond) for c in columns})
        )
    if ceiling:
        cells = {c.key: _ceiling_cell(c, ceiling, settings.age_tolerance) for c in columns}
        rows.append(Row("voice-only ceiling", "ceiling", cells=cells))
    return rows


def _ceiling_cell(col: Column, ceiling: Mapping[str, float], tolerance: float) -> Cell:
    """The oracle folder's voice-only ceiling of an attribute column (ceilings.json names age
    within ±10 y `age_within_10`; at another tolerance it has none)."""
    if not col.key.startswith("attributes/"):
        return None
    metric = col.key.split("/", 2)[2]
    if metric == "age_within":
        metric = "age_within_10" if tolerance == 10 else ""
    value = ceiling.get(metric)
    return None if value is None else {"value": float(value), "ci": None}


def differences(
    groups: Sequence[Group], columns: Sequence[Column], settings: EvalSettings
) -> dict[str, dict[str, Any]]:
    """{"<ref> − <other>": {column key: paired bootstrap}} of the first SCLDM group minus
    every other group; {} without an SCLDM model or another method."""
    ref = next((g for g in groups if g.method == REFERENCE), None)
    if ref is None:
        return {}
    out = {}
    for g in groups:
        if g is ref:
            continue
        out[f"{ref.label} − {g.label}"] = {
            c.key: paired_bootstrap(
                ref.speakers(c.key),
                g.speakers(c.key),
                resamples=settings.bootstrap,
                seed=settings.seed,
            )
            for c in columns
            if c.paired
        }
    return out


def _excludes_zero(d: Mapping[str, Any]) -> bool:
    lo, hi = d["ci"]
    return bool(np.isfinite(lo) and np.isfinite(hi) and (lo > ZERO or hi < -ZERO))


# --- Writing -----------------------------------------------------------------------------------


def table_lines(rows: Sequence[Row], columns: Sequence[Column], *, first: str = "") -> list[str]:
    head = ["params", "train min"] if first == "" else []
    lines = [
        "| " + " | ".join([first, *head, *(c.header for c in columns)]) + " |",
        "|---" * (1 + len(head) + len(columns)) + "|",
    ]
    for r in rows:
        lead = []
        if not first:
            minutes = "n/a" if r.train_minutes is None else f"{r.train_minutes:.1f}"
            lead = [_params(r.parameters), minutes if r.kind in ("model", "mean") else ""]
        cells = [cell_text(r.cells.get(c.key), c) for c in columns]
        label = f"**{r.label}**" if r.kind == "mean" else r.label
        lines.append("| " + " | ".join([label, *lead, *cells]) + " |")
    return lines


def difference_lines(
    diffs: Mapping[str, Mapping[str, Any]], columns: Sequence[Column]
) -> list[str]:
    cols = [c for c in columns if c.paired]
    lines = [
        "| | " + " | ".join(c.header for c in cols) + " |",
        "|---" * (1 + len(cols)) + "|",
    ]
    for label, d in diffs.items():
        cells = []
        for c in cols:
            v = d.get(c.key)
            if v is None or not np.isfinite(v["value"]):
                cells.append("n/a")
                continue
            text = fmt(v, c.digits, c.scale)
            if _excludes_zero(v) and float(text.split()[0]) == 0:  # too small for the digits
                lo, hi = (x * c.scale for x in v["ci"])
                text = f"{v['value'] * c.scale:.2g} [{lo:.2g}, {hi:.2g}]"
            cells.append(f"**{text}** *" if _excludes_zero(v) else text)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def _csv_rows(rows: Sequence[Row], columns: Sequence[Column]) -> list[dict[str, Any]]:
    """One CSV row per table row: value, low and high of each column, scaled as shown."""
    out = []
    for r in rows:
        minutes = None if r.train_minutes is None else round(r.train_minutes, 2)
        entry = asdict(r) | {"row": r.label, "train_minutes": minutes}
        del entry["label"], entry["cells"]
        for c in columns:
            cell = r.cells.get(c.key) or {"value": None}
            lo, hi = cell.get("ci") or (None, None)
            for suffix, v in (("", cell["value"]), ("_low", lo), ("_high", hi)):
                entry[c.short + suffix] = None if v is None else v * c.scale
        out.append(entry)
    return out


def _difference_rows(diffs: Mapping[str, Any], columns: Sequence[Column]) -> list[dict]:
    rows = []
    for label, d in diffs.items():
        for c in (c for c in columns if c.key in d):
            v, (lo, hi) = d[c.key], d[c.key]["ci"]
            scaled = {"value": v["value"] * c.scale, "low": lo * c.scale, "high": hi * c.scale}
            rows.append({"difference": label, "column": c.short, **scaled})
            rows[-1] |= {"speakers": v["speakers"], "excludes_0": _excludes_zero(v)}
    return rows


def comparison_grid(
    groups: Sequence[Group], data: Path, out: Path, settings: EvalSettings, size: int, speakers: int
) -> Path:
    """Rows: the first clip of each of the first `speakers` speakers; columns: its true face,
    then the first face of each method (its first seed); shown at no less than 96 px, so the
    captions fit."""
    clips = plan_clips(data, settings.split, max_clips=settings.max_clips, seed=settings.seed)
    size = max(size, GRID_MIN_SIZE)
    images, captions = [], []
    for c in first_clips(clips, speakers):
        images.append(load_face_tensor(c.face, size))
        captions.append(true_caption(c))
        for g in groups:
            images.append(load_face_tensor(image_path(out / g.models[0].name, c, 0), size))
            captions.append(g.label)
    return save_image(make_grid(images, ncols=1 + len(groups), captions=captions), out / "grid.png")


def write_comparison(
    models: Sequence[Model],
    data: Path,
    out: Path,
    *,
    settings: EvalSettings,
    minutes: Mapping[str, float | None],
    oracle: Path | None = None,
    grid_speakers: int = 8,
) -> Path:
    """Write OUT/table.md, table.csv, differences.csv, grid.png and compare.json; returns
    table.md."""
    metrics = {m.name: json.loads((out / m.name / "metrics.json").read_text()) for m in models}
    per_speaker = {
        m.name: json.loads((out / m.name / "per_speaker.json").read_text())["values"]
        for m in models
    }
    first = metrics[models[0].name]
    nets, ests = list(first["features"]), list(first["attributes"])
    net, est = (nets or [None])[0], (ests or [None])[0]
    ceilings: dict[str, Any] = {}
    if oracle is not None and (oracle / "ceilings.json").is_file() and est == "synthvox":
        ceilings = json.loads((oracle / "ceilings.json").read_text()).get("voice_only_ceiling", {})
    groups = _groups(models, per_speaker)
    columns = main_columns(net, est, settings.age_tolerance)
    face_cols = face_only_columns(first, est)
    extra = [(n, feature_columns(n, prefix=f"{n}:")) for n in nets[1:]]
    extra += [(e, attribute_columns(e, settings.age_tolerance, prefix=f"{e}:")) for e in ests[1:]]
    every = [*columns, *face_cols, *(c for _, cols in extra for c in cols)]
    rows = build_rows(groups, metrics, minutes, every, ceilings, settings)
    diffs = differences(groups, columns, settings)
    size = int(first.get("scoring", {}).get("image_size") or 0) or None
    grid = comparison_grid(groups, data, out, settings, size or 64, grid_speakers)

    counts = first["counts"]
    lines = [
        "# SCLDM and the baselines",
        "",
        f"`{data}`, split `{settings.split}`: {counts['clips']} clips of {counts['speakers']} "
        f"speakers, {settings.num_images} face(s) per clip (seed {settings.seed}), every face "
        f"scored at {size} px. Features: `{net}`; attributes: `{est}`. Every cell is "
        "`value [95 % CI]`: the mean over speakers with a bootstrap over speakers (a mean over "
        "seeds averages each speaker's values over the seeds first). Distances on "
        "L2-normalised features against the clip's true face; R@K: speech→face retrieval by "
        f"speaker in pools of {first['features'][net]['model']['pool_size'] if net else '?'}; "
        "diversity: the mean pairwise cos ×100 between a clip's faces (n/a with one face a "
        "clip); two-sample acc: a linear classifier on pixels telling generated faces from "
        "true ones (0.5 = indistinguishable; the floor row: true faces; a mean-over-seeds row: "
        "the mean of the seeds', without an interval). Train min: first to last line of each "
        "training session in the runs' log.txt, summed over a model's runs (n/a: run unknown). "
        "The voice-only ceiling (from the oracle's labels, exact) is the best a model can do "
        "from the voice alone.",
        "",
        *table_lines(rows, columns),
        "",
    ]
    if diffs:
        n = next(iter(next(iter(diffs.values())).values()))["speakers"]
        lines += [
            f"## Differences: {REFERENCE} minus each method",
            "",
            f"Paired bootstrap over the same {n} speakers (each resample draws speakers and takes "
            "both models' values of them). **Bold** with * : the 95 % interval excludes 0. For "
            "↓ columns a negative difference favours SCLDM.",
            "",
            *difference_lines(diffs, columns),
            "",
        ]
    if face_cols:
        lines += [
            "## Face-only attributes",
            "",
            f"What `{est}` reads from the faces that no voice carries: a model that follows the "
            "voice and nothing else sits near chance here, and only the floor (another photo "
            "of the speaker) should be high. † linked to gender only (hair length, beard).",
            "",
            *table_lines(rows, face_cols, first="face-only"),
            "",
        ]
    for name, cols in extra:
        lines += [f"## `{name}`", "", *table_lines(rows, cols, first=name), ""]
    lines += ["## Methods", ""]
    for m in models:
        method = metrics[m.name].get("method", {})
        runs = ", ".join(f"`{r}`" for r in m.runs) or "unknown"
        lines.append(f"- **{m.name}**: {method.get('title', m.method)}; `{m.path}`; runs {runs}.")
        lines += [f"  - deviation: {d}" for d in method.get("deviations", [])]
    lines += ["", f"![true face | one face per method]({grid.name})", ""]
    write_csv(out / "table.csv", _csv_rows(rows, columns))
    fields = ["difference", "column", "value", "low", "high", "speakers", "excludes_0"]
    write_csv(out / "differences.csv", _difference_rows(diffs, columns), fieldnames=fields)
    write_json(
        out / "compare.json",
        {
            "data": str(data),
            "settings": asdict(settings),
            "image_size": size,
            "features": net,
            "attributes": est,
            "models": [
                asdict(m)
                | {"train_minutes": minutes[m.name], "method_info": metrics[m.name]["method"]}
                for m in models
            ],
            "columns": [asdict(c) for c in every],
            "rows": [asdict(r) for r in rows],
            "differences": diffs,
            "ceilings": ceilings,
        },
    )
    return write_text(out / "table.md", "\n".join(lines))
