"""The outputs of `scldm compare`, from the evaluations it ran and the table `compare_table`
computes from them: the paper's Table 2/3 layout (OUT/table.md and table.csv), the paired
differences of SCLDM and each other method (differences.csv), the face-only attributes,
OUT/grid.png (true face | one face per method for the same voices) and OUT/compare.json
(everything, with the conventions).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from scldm.evaluation.clips import EvalSettings, first_clips, image_path, plan_clips, true_caption
from scldm.evaluation.report import fmt
from scldm.experiments.compare import Model
from scldm.experiments.compare_table import (
    REFERENCE,
    Cell,
    Column,
    Group,
    Row,
    attribute_columns,
    build_rows,
    differences,
    excludes_zero,
    face_only_columns,
    feature_columns,
    group_models,
    main_columns,
)
from scldm.faces import load_face_tensor, make_grid, save_image
from scldm.io import write_csv, write_json, write_text

GRID_MIN_SIZE = 96  # px a face in grid.png


# --- Markdown and CSV --------------------------------------------------------------------------


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
            if excludes_zero(v) and float(text.split()[0]) == 0:  # too small for the digits
                lo, hi = (x * c.scale for x in v["ci"])
                text = f"{v['value'] * c.scale:.2g} [{lo:.2g}, {hi:.2g}]"
            cells.append(f"**{text}** *" if excludes_zero(v) else text)
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
            rows[-1] |= {"speakers": v["speakers"], "excludes_0": excludes_zero(v)}
    return rows


# --- Writing -----------------------------------------------------------------------------------


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
    groups = group_models(models, per_speaker)
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
