"""The ablation's outputs (OUT/table4.md and .csv, lambda_sweep.csv and .png, grids.png and
report.md), read from the evaluations `scldm.experiments.ablate` ran: Table 4 (base / +CP /
+CP+PN with the true-face floor and chance), the λ_train × λ_infer sweep as tables and a plot,
and a grid of the rows' faces for the same voices.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from PIL import Image

from scldm.evaluation.clips import first_clips, image_path, plan_clips, true_caption
from scldm.evaluation.report import fmt
from scldm.experiments.ablate import CLIP_KEY, ORACLE, Ablation, lam_name
from scldm.experiments.compare_table import metric_cell
from scldm.faces import load_face_tensor, make_grid, save_image
from scldm.io import save_figure, write_csv, write_text

# (csv column, label, where, metric key, digits, scale): the paper's Table 4 columns
COLUMNS = (
    ("cos_x100", "oracle cos ×100 ↓", "features", "cos/l2norm/clip", 2, 1.0),
    ("R@1_pct", "R@1 (%)", "features", "R@1", 1, 100.0),
    ("gender_acc_pct", "gender acc (%)", "attributes", "gender_acc", 1, 100.0),
    ("age_within10_pct", "age within ±10 y (%)", "attributes", "age_within", 1, 100.0),
    ("age_mae", "age MAE (years) ↓", "attributes", "age_mae", 1, 1.0),
    # how well a linear classifier tells the faces from true ones: 0.5 = indistinguishable
    ("two_sample_acc", "two-sample acc ↓", "realism", "two_sample", 3, 1.0),
    # the same on the faces' fine detail (each face minus its blur): blurred faces are found
    ("two_sample_detail_acc", "two-sample acc, detail ↓", "realism", "two_sample_detail", 3, 1.0),
)
SWEEP_PANELS = ("cos_x100", "gender_acc_pct", "age_within10_pct")


# --- Outputs -----------------------------------------------------------------------------------


def _metric(metrics: Mapping[str, Any], cond: str, where: str, key: str) -> dict | None:
    if where == "realism":
        return metric_cell(metrics, f"realism/{key}", cond)
    block = (metrics.get(where) or {}).get(ORACLE) or {}
    return (block.get(cond) or {}).get(key)


def _num(x: float) -> float:
    return float(f"{x:.6g}")


def _row_cells(metrics: Mapping[str, Any], cond: str) -> tuple[list[str], dict[str, Any]]:
    """Markdown cells 'value [CI]' and CSV values (same units) of one condition."""
    cells, values = [], {}
    for col, _, where, key, digits, scale in COLUMNS:
        m = _metric(metrics, cond, where, key)
        cells.append(fmt(m, digits, scale))
        ok = bool(m) and m["value"] == m["value"]  # not NaN
        values[col] = _num(m["value"] * scale) if ok else ""
        values[f"{col}_ci_low"] = _num(m["ci"][0] * scale) if ok else ""
        values[f"{col}_ci_high"] = _num(m["ci"][1] * scale) if ok else ""
    return cells, values


def table4(result: Ablation) -> tuple[str, list[dict[str, Any]]]:
    """Markdown table and CSV rows: base, +CP, +CP+PN, then the true-face floor and chance (the
    same true faces in every evaluation: taken from +CP+PN's)."""
    head = "| | " + " | ".join(c[1] for c in COLUMNS) + " |"
    lines = [head, "|---|" + "---|" * len(COLUMNS)]
    csv_rows = []
    for name, key in result.rows.items():
        cells, values = _row_cells(result.metrics(key), "model")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
        csv_rows.append(
            {"row": name, "run": key.run, "lambda_infer": lam_name(key.lam_infer), **values}
        )
    ref = result.metrics(result.rows["+CP+PN"])
    for cond, name in (("floor", "true-face floor"), ("chance", "chance")):
        cells, values = _row_cells(ref, cond)
        lines.append(f"| *{name}* | " + " | ".join(cells) + " |")
        csv_rows.append({"row": name, "run": "", "lambda_infer": "", **values})
    return "\n".join(lines), csv_rows


def sweep_rows(result: Ablation) -> list[dict[str, Any]]:
    rows = []
    for (t, i), key in result.sweep.items():
        _, values = _row_cells(result.metrics(key), "model")
        rows.append({"lambda_train": t, "lambda_infer": i, "run": key.run, **values})
    return rows


def sweep_table(result: Ablation, rows: list[dict[str, Any]], col: str) -> str:
    """λ_train down, λ_infer across, for one column."""
    names = [lam_name(v) for v in result.lambdas]
    by = {(r["lambda_train"], r["lambda_infer"]): r for r in rows}
    lines = ["| λ_train \\ λ_infer | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for t in names:
        cells = []
        for i in names:
            r = by[(t, i)]
            cells.append("n/a" if r[col] == "" else f"{r[col]:.2f}")
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_sweep(result: Ablation, rows: list[dict[str, Any]], path: Path) -> Path:
    """Metric vs λ_infer, one line per λ_train (95 % CI bars), floor and chance dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [lam_name(v) for v in result.lambdas]
    _, floor = _row_cells(result.metrics(result.rows["+CP+PN"]), "floor")
    _, chance = _row_cells(result.metrics(result.rows["+CP+PN"]), "chance")
    labels = {c[0]: c[1] for c in COLUMNS}
    fig, axes = plt.subplots(1, len(SWEEP_PANELS), figsize=(4.2 * len(SWEEP_PANELS), 3.4))
    by = {(r["lambda_train"], r["lambda_infer"]): r for r in rows}
    for ax, col in zip(axes, SWEEP_PANELS, strict=True):
        for j, t in enumerate(names):
            pts = [(k, by[(t, i)]) for k, i in enumerate(names) if by[(t, i)][col] != ""]
            shift = 0.06 * (j - (len(names) - 1) / 2)  # side by side, so every CI bar shows
            ax.errorbar(
                [k + shift for k, _ in pts],
                [r[col] for _, r in pts],
                yerr=[
                    [r[col] - r[f"{col}_ci_low"] for _, r in pts],
                    [r[f"{col}_ci_high"] - r[col] for _, r in pts],
                ],
                marker="o",
                capsize=3,
                label=f"λ_train = {t}",
            )
        for ref, style, name in ((floor, "--", "true-face floor"), (chance, ":", "chance")):
            if ref[col] != "":
                ax.axhline(ref[col], color="grey", linestyle=style, linewidth=1, label=name)
        ax.set_xticks(range(len(names)), names)
        ax.set_xlabel("λ_infer")
        ax.set_title(labels[col], fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def grids(result: Ablation, path: Path, *, voices: int = 8) -> Path:
    """true face | base | +CP | +CP+PN for the first clip of the first `voices` test speakers,
    read from each row's cached evaluation images."""
    s = result.settings
    clips = plan_clips(Path(result.stage1.data.root), s.split, max_clips=s.max_clips, seed=s.seed)
    firsts = first_clips(clips, voices)
    folders = {name: key.folder(result.out) for name, key in result.rows.items()}
    with Image.open(image_path(folders["base"], firsts[0], 0)) as im:
        size = max(im.size[0], 96)  # the generated faces' size, enlarged to fit the captions
    images, captions = [], []
    for c in firsts:
        images.append(load_face_tensor(c.face, size))
        captions.append(true_caption(c))
        for name, folder in folders.items():
            images.append(load_face_tensor(image_path(folder, c, 0), size))
            captions.append(name)
    return save_image(make_grid(images, ncols=1 + len(folders), captions=captions), path)


def write_outputs(result: Ablation) -> Path:
    out = result.out
    table, t4_rows = table4(result)
    write_text(out / "table4.md", table + "\n")
    write_csv(out / "table4.csv", t4_rows)
    s_rows = sweep_rows(result)
    write_csv(out / "lambda_sweep.csv", s_rows)
    plot_sweep(result, s_rows, out / "lambda_sweep.png")
    grids(result, out / "grids.png")
    return write_report(result, table, s_rows)


def write_report(result: Ablation, table: str, s_rows: list[dict[str, Any]]) -> Path:
    out, enc, ldm, s = result.out, result.stage1, result.stage2, result.settings
    ref = result.metrics(result.rows["+CP+PN"])
    counts, model = ref["counts"], ref["model"]
    pool = ((ref["features"][ORACLE].get("model") or {}).get("pool_size")) or "?"
    lam_t, lam_i = lam_name(ldm.lambda_train), lam_name(ldm.sampling.prior_scale)
    lines = [
        "# SCLDM ablations (paper Table 4 and Fig. 6)",
        "",
        f"Data `{enc.data.root}`; evaluation on split `{s.split}`: {counts['clips']} clips of "
        f"{counts['speakers']} speakers, {s.num_images} generated face per clip, seed {s.seed}, "
        f"{model['scheduler']} with {model['num_inference_steps']} steps and guidance "
        f"{model['guidance_scale']}. Stage 1: {enc.train.max_steps} steps, seed "
        f"{enc.train.seed}; every stage 2: {ldm.train.max_steps} steps, seed {ldm.train.seed}. "
        f"Scored by the SynthVox oracle `{result.oracle}`.",
        "",
        "## The runs",
        "",
        "- **base** (`ldm-base/`): no contrastive pre-training. Stage 1 (`stage1-noclip/`) is "
        f"trained with the CLIP loss weight `loss_weights[{CLIP_KEY!r}]` = 0 and the speech "
        "encoder's learning rate `speech_lr` = 0: the face encoder and decoder still learn "
        "reconstruction, the speech encoder keeps its seeded random weights (its BatchNorm "
        "running statistics follow the training audio). Like every stage-1 model it is frozen "
        "in stage 2, which trains with λ_train = 0 and is evaluated at λ_infer = 0.",
        "- **+CP** (`ldm-train0/`): stage 1 as configured (`stage1/`: CLIP loss weight "
        f"{enc.loss_weights.get(CLIP_KEY, 0.0):g}), stage 2 with λ_train = λ_infer = 0.",
        f"- **+CP+PN** (`ldm-train{lam_t}/`): the same stage 1 and its face prior P "
        f"(`stage1/prior/`, ≤ {ldm.prior_faces} gender-balanced training faces), stage 2 with "
        f"μ = λ·P at λ_train = {lam_t}, evaluated at λ_infer = {lam_i} (the configured "
        "`lambda_train` and `sampling.prior_scale`).",
        "",
        "## Table 4",
        "",
        "Each cell: value [95 % CI], the mean over speakers with a bootstrap over speakers. "
        "cos ×100 = 100·(1 − cos) between the L2-normalised oracle embeddings of the generated "
        "face and the clip's true face (lower is closer). R@1: speech→face retrieval by speaker "
        "(query: the mean embedding of a speaker's generated faces, key: the mean embedding of "
        f"the speaker's true faces), in pools of {pool} speakers (chance: 1 in {pool}). Gender "
        "accuracy, age within ±10 years and age MAE: the oracle's reading of the generated "
        "face against the speaker's labels in the manifest. The **true-face floor** scores "
        "another true image of the same speaker instead of a generated face (what a perfect "
        "model would score; n/a where speakers have one image), **chance** a true face of a "
        "randomly paired other speaker; both are the same in every evaluation.",
        "",
        table,
        "",
        "Numbers in `table4.csv` (same units, CI bounds in their own columns).",
        "",
        "## λ sweep (Fig. 6)",
        "",
        "Stage 2 trained at each λ_train (rows) and sampled at each λ_infer (columns), all "
        "from the same stage 1, seeds and clips. The paper plots the cosine distance; the "
        "oracle's gender and age readings are shown beside it.",
        "",
        "Oracle cos ×100 ↓:",
        "",
        sweep_table(result, s_rows, "cos_x100"),
        "",
        "Gender accuracy (%):",
        "",
        sweep_table(result, s_rows, "gender_acc_pct"),
        "",
        "Age within ±10 years (%):",
        "",
        sweep_table(result, s_rows, "age_within10_pct"),
        "",
        "![λ sweep](lambda_sweep.png)",
        "",
        "Every cell with its CI is in `lambda_sweep.csv`.",
        "",
        "## Samples",
        "",
        "True face | base | +CP | +CP+PN, the first clip of each of the first test speakers "
        "(the same voice and seed in every column):",
        "",
        "![grids](grids.png)",
        "",
        "## Files",
        "",
        *[
            f"- {name}: `{key.folder(out).relative_to(out)}/` (metrics.json, report.md, images/), "
            f"pipeline `{key.run}/pipeline`"
            for name, key in result.rows.items()
        ],
        "- sweep evaluations: `ldm-train<λ_train>/eval/infer<λ_infer>/`",
        "",
    ]
    return write_text(out / "report.md", "\n".join(lines))
