"""The report of `scldm evaluate` beside its metrics.json: report.md with the paper's Table 2
layout per feature network and one table per attribute estimator (every cell `value [95 % CI]`
for model, floor and chance), the realism and reconstruction tables, metrics.png (the headline
metrics as bars), samples.png (true face | generated faces) and reconstructions.png (true face |
reconstruction).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from scldm.evaluation.clips import Clip, EvalSettings, first_clips, true_caption
from scldm.evaluation.evaluate import CONDITIONS, DISTANCES, Faces
from scldm.evaluation.fidelity import REALISM_CONDITIONS, RECONSTRUCTION_CONDITIONS
from scldm.faces import make_grid, save_image
from scldm.io import save_figure, write_text


def fmt(m: Mapping[str, Any] | None, digits: int = 2, scale: float = 1.0) -> str:
    """'value [low, high]' of a summarised metric; n/a when missing."""
    if not m or not np.isfinite(m["value"]):
        return "n/a"
    v, (lo, hi) = m["value"] * scale, (x * scale for x in m["ci"])
    return f"{v:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def feature_table(name: str, res: Mapping[str, Any]) -> str:
    """The paper's Table 2 layout for one feature network: L1, L2, cosine on L2-normalised
    features against the clip's face, then retrieval, then the diversity of a clip's faces."""
    lines = [
        f"| {name} | L1 ↓ | L2 ↓ | cos ×100 ↓ | cos ×100 to speaker mean ↓ | R@1 | R@5 | R@10 "
        "| diversity |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for cond in CONDITIONS:
        m = res.get(cond)
        if m is None:
            lines.append(f"| {cond} |" + " n/a |" * 8)
            continue
        cells = [fmt(m[f"{d}/l2norm/clip"]) for d in DISTANCES]
        cells.append(fmt(m["cos/l2norm/speaker"]))
        cells += [fmt(m[f"R@{k}"], 1, 100) for k in (1, 5, 10)]
        cells.append(fmt(m.get("diversity")))
        lines.append(f"| {cond} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def method_lines(method: Mapping[str, Any] | None) -> list[str]:
    """The method's title and its deviations from the published method, as report lines."""
    if not method or not method.get("title"):
        return []
    lines = [f"Method: **{method['title']}**."]
    if method.get("deviations"):
        lines += ["", "Deviations from the published method:", ""]
        lines += [f"- {d}" for d in method["deviations"]]
    return [*lines, ""]


def attribute_table(name: str, res: Mapping[str, Any]) -> str:
    keys = [k for k in (res.get("model") or {}) if k]
    head = [k.replace("_", " ") for k in keys]
    lines = [f"| {name} | " + " | ".join(head) + " |", "|---|" + "---|" * len(keys)]
    for cond in CONDITIONS:
        m = res.get(cond)
        cells = ["n/a" if m is None else fmt(m.get(k), 1 if k == "age_mae" else 3) for k in keys]
        lines.append(f"| {cond} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _kid_cell(m: Mapping[str, Any] | None) -> str:
    if not m:
        return "n/a"
    std = f" ± {m['std']:.2g}" if m["std"] > 0 else ""
    return f"{m['value']:.3g}{std}"


def _accuracy_cell(test: Mapping[str, Any] | None) -> str:
    return "n/a" if test is None else fmt({"value": test["accuracy"], "ci": test["ci"]}, 3)


def realism_table(realism: Mapping[str, Any]) -> str:
    """Two-sample accuracy (on pixels and, where scored, on their fine detail) and KID per
    feature network, for model, reconstruction (when scored) and floor, each set against the
    true faces of the other half of the speakers."""
    conds = [c for c in REALISM_CONDITIONS if c in realism["two_sample"]]
    detail = realism.get("two_sample_detail")  # absent from metrics.json before 2026-12-02
    names = list(realism["kid"])
    lines = [
        "| realism | two-sample accuracy (0.5 = indistinguishable) ↓ | "
        + ("two-sample accuracy, fine detail ↓ | " if detail else "")
        + " | ".join(f"KID ({n}) ↓" for n in names)
        + " |",
        "|---|---|" + ("---|" if detail else "") + "---|" * len(names),
    ]
    for cond in conds:
        cells = [_accuracy_cell(realism["two_sample"][cond])]
        cells += [_accuracy_cell(detail.get(cond))] if detail else []
        cells += [_kid_cell(realism["kid"][n].get(cond)) for n in names]
        lines.append(f"| {cond} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def reconstruction_table(name: str, res: Mapping[str, Any]) -> str:
    """One row per attribute: the estimator on the reconstructions and on the true faces."""
    keys = list(res.get("reconstruction") or {})
    lines = [f"| {name} | reconstruction | true face (floor) |", "|---|---|---|"]
    for k in keys:
        digits = 1 if k == "age_mae" else 3
        cells = [fmt((res.get(c) or {}).get(k), digits) for c in RECONSTRUCTION_CONDITIONS]
        lines.append(f"| {k.replace('_', ' ')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def reconstruction_grid(
    clips: Sequence[Clip], faces: Faces, path: Path, *, speakers: int = 16
) -> Path:
    """true | reconstruction pairs, four pairs a row, for the first face of up to `speakers`
    speakers."""
    row_of = {c: r for r, c in enumerate(faces.clip_of["reconstruction"])}
    images, captions = [], []
    for c in first_clips(clips, speakers):
        images += [faces.images["true"][c.index], faces.images["reconstruction"][row_of[c.index]]]
        captions += ["true", "recon"]
    return save_image(make_grid(images, ncols=8, captions=captions), path)


def _realism_lines(
    result: Mapping[str, Any], clips: Sequence[Clip], faces: Faces, out: Path
) -> list[str]:
    realism = result["realism"]
    lines = [
        "## Realism",
        "",
        f"Each set against the true faces of the other half of the speakers "
        f"({realism['speakers']['s1']} | {realism['speakers']['s2']} speakers, n = "
        f"{realism['n']} faces a set): **model** = generated faces, **reconstruction** = the "
        "face autoencoder's reconstructions of true faces, **floor** = true faces. Two-sample "
        "accuracy: a cross-validated linear classifier on pixels, `value [95 % Wilson CI]`; "
        "on fine detail: the same on each face minus its box blur (edges, eyes, glasses frames "
        "without colours and layout: blurred faces are told apart here). "
        "KID (`mean ± std` over subsets, where there are several): "
        + realism["convention"]["kid"]
        + ".",
        "",
        realism_table(realism),
        "",
    ]
    rec = result.get("reconstruction")
    if rec:
        grid = reconstruction_grid(clips, faces, out / "reconstructions.png")
        lines += [
            "## Reconstruction fidelity",
            "",
            f"{rec['images']} true face images encoded by `{rec['encoder']}` and decoded by the "
            f"pipeline's face decoder. PSNR {fmt(rec['psnr'], 2)} dB.",
            "",
        ]
        for name, res in rec["attributes"].items():
            lines += [reconstruction_table(name, res), ""]
        lines += [f"![reconstructions]({grid.name})", ""]
    return lines


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
    images, captions = [], []
    for c in first_clips(clips, speakers):
        images.append(faces.images["true"][c.index])
        captions.append(true_caption(c))
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
    scoring = result.get("scoring", {})
    lines = [
        "# Evaluation",
        "",
        f"Model `{result['model'].get('path') or result['model']['name']}` on `{result['data']}`, "
        f"split `{settings.split}`: {c['clips']} clips of {c['speakers']} speakers"
        + (
            f" ({c['skipped_clips']} skipped: audio the model cannot use)"
            if c.get("skipped_clips")
            else ""
        )
        + (
            f" ({c['unreadable_faces']} damaged face image(s) left out, with their clips)"
            if c.get("unreadable_faces")
            else ""
        )
        + ", "
        f"{settings.num_images} generated face(s) per clip (seed {settings.seed}). Generation: "
        + ", ".join(f"{k} {v}" for k, v in result["model"].items() if k not in ("name", "path"))
        + f". Scored at {scoring.get('image_size', '?')} px (generated at "
        f"{scoring.get('generated_size', '?')} px, resized with Lanczos).",
        "",
        *method_lines(result.get("method")),
        "Every cell is `value [95 % CI]`: the mean over speakers, with a bootstrap over speakers. "
        "Rows: **model** (generated vs the clip's true face), **floor** (another true image of "
        "the same speaker: what a perfect model scores) and **chance** (a true face of a "
        "randomly paired speaker). Diversity: the mean pairwise cos ×100 between a clip's "
        "generated faces (n/a with one face a clip). Conventions in full are in metrics.json.",
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
    if "realism" in result:
        lines += _realism_lines(result, clips, faces, out)
    if plot is not None:
        lines += [f"![metrics]({plot.name})", ""]
    lines += ["## Samples (true | generated)", "", f"![samples]({grid.name})", ""]
    return write_text(out / "report.md", "\n".join(lines))
