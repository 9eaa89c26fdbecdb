"""What `scldm compare`'s table holds, computed from the evaluations' metrics.json and
per_speaker.json: its columns (the paper's Table 2/3 layout, the face-only attributes, further
feature networks and estimators), its rows (each model; for a method trained with several
seeds, each seed and the mean over seeds, per speaker then bootstrapped over speakers like every
other number; the true-face floor, chance and, for the SynthVox oracle's attributes, the
voice-only ceiling, exact from the labels: no interval) and the paired differences of SCLDM and
each other method. The floor and chance depend on the clips only, so they are read from the
first model's evaluation (every model's are the same). `compare_report` writes them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from scldm.data.synthvox.attributes import FACE_ONLY, GENDER_LINKED_FACE
from scldm.evaluation.clips import EvalSettings
from scldm.evaluation.metrics import bootstrap_ci, paired_bootstrap
from scldm.experiments.compare import Model

REFERENCE = "scldm"  # differences are this method minus each other one
ZERO = 1e-9  # an interval end within this of 0 does not exclude 0 (float noise of equal values)


# --- Columns -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    key: str  # "features/NET/METRIC", "attributes/EST/METRIC" or "realism/two_sample[_detail]"
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
    return [
        *cols,
        Column("realism/two_sample", "two-sample acc ↓", "two_sample", 3),
        Column("realism/two_sample_detail", "two-sample acc, detail ↓", "two_sample_detail", 3),
    ]


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
    if key.startswith("realism/"):  # a two-sample test: its accuracy
        test = (metrics.get("realism") or {}).get(key.removeprefix("realism/"), {}).get(cond)
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


def group_models(models: Sequence[Model], per_speaker: Mapping[str, Any]) -> list[Group]:
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


def excludes_zero(d: Mapping[str, Any]) -> bool:
    lo, hi = d["ci"]
    return bool(np.isfinite(lo) and np.isfinite(hi) and (lo > ZERO or hi < -ZERO))
