"""`runs/demo/report.md`: what `make demo` made, in one page.

    python -m scldm.evaluation.demo_report runs/demo

Reads the folders the demo's steps wrote (data, oracle, encoders, ldm, eval) and puts together
the sample grid, stage 1's numbers, the face prior's convergence table, the SynthVox
oracle's reading of the generated faces beside the true-face floor and chance, with the
attributes grouped into those the voice carries (linked) and those it cannot (face-only),
and the realism metrics (with the face autoencoder's reconstructions, when evaluated).
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from scldm.data.synthvox.attributes import FACE_ONLY, GENDER_LINKED_FACE, LINKED
from scldm.evaluation.evaluate import CONDITIONS
from scldm.evaluation.fidelity import RECONSTRUCTION_CONDITIONS
from scldm.evaluation.report import fmt, realism_table
from scldm.io import write_bytes, write_text

GROUPS = {
    "linked (voice and face)": [f"{a}_acc" for a in LINKED if a == "gender"]
    + ["age_within", "age_mae"],
    "face-only (not in the voice)": [f"{a}_acc" for a in FACE_ONLY],
    "face, linked to gender only": [f"{a}_acc" for a in GENDER_LINKED_FACE],
}
NAMES = {"age_within": "age within ±10 y", "age_mae": "age MAE (years) ↓"}


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _attribute_rows(res: Mapping[str, Any], ceiling: Mapping[str, float]) -> list[str]:
    lines = [
        "| group | attribute | generated | true-face floor | chance | voice-only ceiling |",
        "|---|---|---|---|---|---|",
    ]
    for group, keys in GROUPS.items():
        for key in keys:
            if not res.get("model") or key not in res["model"]:
                continue
            digits = 1 if key == "age_mae" else 3
            cells = [fmt((res.get(c) or {}).get(key), digits) for c in CONDITIONS]
            best = ceiling.get("age_within_10" if key == "age_within" else key)
            cells.append("" if best is None else f"{best:.{digits}f}")
            name = NAMES.get(key, key.removesuffix("_acc").replace("_", " "))
            lines.append(f"| {group} | {name} | " + " | ".join(cells) + " |")
    return lines


def _reconstruction_rows(res: Mapping[str, Any]) -> list[str]:
    lines = ["| group | attribute | reconstruction | true-face floor |", "|---|---|---|---|"]
    for group, keys in GROUPS.items():
        for key in keys:
            if key not in (res.get("reconstruction") or {}):
                continue
            digits = 1 if key == "age_mae" else 3
            cells = [fmt((res.get(c) or {}).get(key), digits) for c in RECONSTRUCTION_CONDITIONS]
            name = NAMES.get(key, key.removesuffix("_acc").replace("_", " "))
            lines.append(f"| {group} | {name} | " + " | ".join(cells) + " |")
    return lines


def _realism_lines(demo: Path, ev: Mapping[str, Any]) -> list[str]:
    """The realism table and, where the evaluation had the stage-1 face encoder, what the
    oracle reads from the face autoencoder's reconstructions."""
    realism = ev.get("realism")
    if not realism:
        return []
    lines = [
        "## Do the faces look real?",
        "",
        "Each set is compared with the true faces of the other half of the test speakers "
        f"({realism['speakers']['s1']} | {realism['speakers']['s2']} speakers, n = "
        f"{realism['n']} faces a set). Two-sample accuracy: a linear classifier on pixels, "
        "cross-validated, tells the set from true faces (0.5 = indistinguishable, 1.0 = always "
        "told apart; 95 % Wilson interval); on fine detail, the same on each face minus its "
        "blur, which finds blurred faces whatever their colours. KID: kernel distance between "
        "the oracle's features of the two sets (0 = the same distribution; the estimate is "
        "unbiased, so it can fall below 0). The floor compares true faces with true faces: "
        "what faces as real as the data score, and the metrics' own noise at this n.",
        "",
        realism_table(realism),
        "",
    ]
    rec = ev.get("reconstruction")
    attrs = (rec or {}).get("attributes", {}).get("synthvox")
    if attrs:
        lines += [
            "### The face autoencoder's ceiling",
            "",
            f"The {rec['images']} true test faces encoded by stage 1's face encoder and decoded "
            "by the pipeline's face decoder: no generated face can hold more detail than these "
            f"reconstructions (PSNR {fmt(rec['psnr'], 1)} dB). What the oracle reads from them, "
            "beside what it reads from the true faces themselves:",
            "",
            *_reconstruction_rows(attrs),
            "",
        ]
        if (demo / "eval" / "reconstructions.png").is_file():
            picture = (demo / "eval" / "reconstructions.png").read_bytes()
            write_bytes(demo / "reconstructions.png", picture)
            lines += [
                "True face | reconstruction:",
                "",
                "![reconstructions](reconstructions.png)",
                "",
            ]
    return lines


def demo_report(demo: Path) -> Path:
    """Write DEMO/report.md (and copy its pictures beside it); returns its path."""
    ev = _read_json(demo / "eval" / "metrics.json")
    if ev is None:
        raise SystemExit(f"{demo / 'eval' / 'metrics.json'}: missing; run `scldm evaluate` first")
    enc = _read_json(demo / "encoders" / "metrics.json") or {}
    oracle = _read_json(demo / "oracle" / "metrics.json") or {}
    ceilings = _read_json(demo / "oracle" / "ceilings.json") or {}
    lines = [
        "# SCLDM demo on SynthVox",
        "",
        f"`make demo` prepared SynthVox in `{demo / 'data'}`, trained its oracle, stage 1 "
        "(contrastive pre-training), the face prior and stage 2 (speech-conditioned latent "
        f"diffusion), then generated faces for the {ev['counts']['clips']} clips of "
        f"{ev['counts']['speakers']} held-out test speakers ("
        + ", ".join(f"{k} {v}" for k, v in ev["model"].items() if k not in ("name", "path"))
        + "). The step counts are cut to fit a laptop: see docs/results.md for full runs.",
        "",
        "## Faces from held-out voices",
        "",
        "True face | generated faces, one row per test voice (the caption is the speaker's "
        "gender and age):",
        "",
    ]
    if (demo / "eval" / "samples.png").is_file():
        write_bytes(demo / "samples.png", (demo / "eval" / "samples.png").read_bytes())
        lines += ["![samples](samples.png)", ""]
    lines += ["## What the SynthVox oracle reads from the generated faces", ""]
    attrs = ev["attributes"].get("synthvox")
    if attrs:
        true_acc = oracle.get("oracle_on_test_faces", {})
        lines += [
            "The oracle (a network trained on true SynthVox faces; on true test faces it scores "
            f"gender {true_acc.get('gender_acc', float('nan')):.3f}, age within ±10 y "
            f"{true_acc.get('age_within_10', float('nan')):.3f}) reads each generated face's "
            "attributes, scored against the speaker's true ones. A good model is near the floor "
            "on the linked attributes and near chance on the face-only ones: the voice carries "
            "no information about them. Cells: value [95 % CI over speakers]. The voice-only "
            "ceiling is the best any model can do from the voice alone: the linked attributes "
            "exactly, the others at their most common value for the speaker's gender and age "
            "(read from the true labels, not through the oracle).",
            "",
            *_attribute_rows(attrs, ceilings.get("voice_only_ceiling", {})),
            "",
        ]
    feats = ev["features"].get("synthvox")
    if feats:
        lines += [
            "Oracle feature distance, 100·(1 − cos) between L2-normalised oracle features of "
            "the generated and the true face (↓), and speech→face retrieval by speaker:",
            "",
            "| | cos ×100 ↓ | R@1 | R@10 |",
            "|---|---|---|---|",
        ]
        for c in CONDITIONS:
            m = feats.get(c)
            cells = (
                ["n/a"] * 3
                if m is None
                else [fmt(m["cos/l2norm/clip"], 1), fmt(m["R@1"], 1, 100), fmt(m["R@10"], 1, 100)]
            )
            lines.append(f"| {c} | " + " | ".join(cells) + " |")
        pool = feats["model"]["pool_size"] if feats.get("model") else "?"
        lines += ["", f"Retrieval pools hold {pool} speakers (chance R@1 = 1/{pool}).", ""]
    lines += _realism_lines(demo, ev)
    if (demo / "eval" / "metrics.png").is_file():
        write_bytes(demo / "metrics.png", (demo / "eval" / "metrics.png").read_bytes())
        lines += ["![metrics](metrics.png)", ""]
    prior_csv = demo / "encoders" / "prior" / "prior_convergence.csv"
    if prior_csv.is_file():
        with prior_csv.open() as f:
            rows = list(csv.DictReader(f))
        lines += [
            "## The face prior (paper Table 1 analogue)",
            "",
            "P is the mean scaled latent of gender-balanced training faces. Distance between P "
            "from the first N faces and P from all of them:",
            "",
            "| faces N | RMS distance | cosine |",
            "|---:|---:|---:|",
            *[f"| {r['n']} | {float(r['rms']):.4f} | {float(r['cosine']):.4f} |" for r in rows],
            "",
        ]
    if enc:
        pool = max(int(enc.get("test/pool_size", 1)), 1)
        lines += [
            "## Stage 1 (test speakers)",
            "",
            f"Speech→face R@1 {100 * enc.get('test/R@1', float('nan')):.1f} % in pools of "
            f"{pool} (chance {100 / pool:.1f} %), "
            f"gender probe {enc.get('probe/gender_accuracy', float('nan')):.3f}, age probe r "
            f"{enc.get('probe/age_r', float('nan')):.2f}, reconstruction PSNR "
            f"{enc.get('test/psnr', float('nan')):.1f} dB.",
            "",
        ]
    lines += [
        "## Files",
        "",
        f"- every number with its conventions: `{demo / 'eval' / 'metrics.json'}`, the full "
        f"evaluation report `{demo / 'eval' / 'report.md'}`",
        f"- the pipeline: `scldm generate any.wav --model {demo / 'ldm' / 'pipeline'} -o out/`",
        "",
    ]
    return write_text(demo / "report.md", "\n".join(lines))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m scldm.evaluation.demo_report DEMO_FOLDER")
    print(demo_report(Path(sys.argv[1])))
