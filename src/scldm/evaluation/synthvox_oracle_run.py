"""`scldm synthvox-oracle`: train the SynthVox oracle on a prepared set's training faces, score
it on the test split's true faces beside a perfect voice-only model and chance, and write the
oracle folder with metrics.json and report.md. The oracle itself (model, training, metrics) is
`scldm.evaluation.synthvox_oracle`."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scldm.data.manifest import read_manifest
from scldm.errors import InputError
from scldm.evaluation.synthvox_oracle import (
    CLASSES,
    REGRESSION,
    SynthVoxOracle,
    attribute_metrics,
    attribute_table,
    chance_level,
    load_oracle_faces,
    oracle_targets,
    predict_faces,
    speaker_rows,
    train_oracle,
    voice_only_ceiling,
)
from scldm.faces import load_face
from scldm.io import write_text

log = logging.getLogger(__name__)

DEFAULT_STEPS = 1500
TARGETS = {"gender_acc": (">=", 0.99), "age_mae": ("<=", 4.0), "size_r2": (">=", 0.9)}
METRIC_NAMES = {
    "gender_acc": "gender accuracy",
    "age_mae": "age MAE (years)",
    "age_within_10": "age within ±10 y",
    "size_r2": "size R²",
}


@dataclass
class OracleReport:
    """What `run_oracle` trained, measured and wrote."""

    out: Path
    oracle: dict[str, float]  # on the test split's true faces
    ceiling: dict[str, float]  # a perfect voice-only model
    chance: dict[str, float]
    counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def table(self) -> str:
        """The three rows side by side, as a Markdown table."""
        lines = [
            "| metric | oracle on true faces | voice-only ceiling | chance |",
            "|---|---:|---:|---:|",
        ]
        for key in self.oracle:
            name = METRIC_NAMES.get(key, key.removesuffix("_acc").replace("_", " ") + " accuracy")
            mark = ""
            if key in TARGETS:
                op, bound = TARGETS[key]
                ok = self.oracle[key] >= bound if op == ">=" else self.oracle[key] <= bound
                mark = f" ({'meets' if ok else 'MISSES'} target {op} {bound:g})"
            cells = [
                f"{d[key]:.3f}" if key != "age_mae" else f"{d[key]:.2f}"
                for d in (self.oracle, self.ceiling, self.chance)
            ]
            lines.append(f"| {name}{mark} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def summary(self) -> str:
        c = self.counts
        return "\n".join(
            [
                f"SynthVox oracle: {c.get('steps')} steps on {c.get('train_faces')} faces of "
                f"{c.get('train_speakers')} train speakers in {self.seconds:.0f} s; scored on "
                f"{c.get('test_faces')} faces of {c.get('test_speakers')} test speakers",
                self.table(),
                f"saved to {self.out} (SynthVoxOracle.from_pretrained), with metrics.json, "
                "ceilings.json and report.md",
            ]
        )


def _finished(data: Path, out: Path, steps: int, seed: int) -> OracleReport | None:
    """The report of an oracle already trained in `out` on `data` with these steps and seed
    (a rerun of `make demo` reuses it), else None."""
    try:
        metrics = json.loads((out / "metrics.json").read_text())
        ceilings = json.loads((out / "ceilings.json").read_text())
    except (OSError, ValueError):
        return None
    same = (
        (out / "config.json").is_file()
        and Path(metrics.get("data", "")).resolve() == data.resolve()
        and (metrics.get("steps"), metrics.get("seed")) == (steps, seed)
    )
    if not same:
        return None
    counts = ("steps", "train_faces", "train_speakers", "test_faces", "test_speakers")
    return OracleReport(
        out=out,
        oracle=ceilings["oracle_on_true_faces"],
        ceiling=ceilings["voice_only_ceiling"],
        chance=ceilings["chance"],
        counts={k: metrics[k] for k in counts if k in metrics},
        seconds=float(metrics.get("seconds", 0.0)),
    )


def _write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2) + "\n")


def run_oracle(data: Path, out: Path, *, steps: int | None = None, seed: int = 0) -> OracleReport:
    """Train the oracle on `data`'s train faces, score it on its test faces, write it to `out`.

    Writes the model (`save_pretrained`), metrics.json, ceilings.json (oracle / voice-only
    ceiling / chance for every metric) and report.md. Raises `InputError` for a folder that is
    not a prepared SynthVox dataset.
    """
    data, out = Path(data), Path(out)
    rows = read_manifest(data)
    missing = [n for n, _ in CLASSES if n not in rows[0]] + [
        n for n in REGRESSION if n not in rows[0]
    ]
    if missing:
        raise InputError(
            data,
            f"is not a SynthVox dataset (no field {missing[0]!r}); "
            "make one with `scldm prepare synthvox`",
        )
    if steps is not None and steps < 1:
        raise InputError(None, f"--steps must be at least 1, got {steps}")
    train = speaker_rows([r for r in rows if r["split"] == "train"])
    test = speaker_rows([r for r in rows if r["split"] == "test"])
    if not train or not test:
        raise InputError(data, "needs speakers in both the train and the test split")
    if done := _finished(data, out, steps or DEFAULT_STEPS, seed):
        log.info("reusing the oracle in %s (same data, steps and seed); delete it to retrain", out)
        return done
    start = time.perf_counter()
    size = min(64, load_face(data / train[0]["faces"][0]).size[0])  # the oracle reads ≤ 64 px
    train_faces, train_owners = load_oracle_faces(data, train, size)
    test_faces, test_owners = load_oracle_faces(data, test, size)
    model = train_oracle(
        train_faces,
        oracle_targets(SynthVoxOracle(image_size=size), train_owners),
        steps=steps or DEFAULT_STEPS,
        seed=seed,
    )
    pred = predict_faces(model, test_faces)
    names = [*model.class_names, *REGRESSION]
    report = OracleReport(
        out=out,
        oracle=attribute_metrics(pred, attribute_table(test_owners, names)),
        ceiling=voice_only_ceiling(train, test_owners),
        chance=chance_level(train, test_owners),
        counts={
            "steps": steps or DEFAULT_STEPS,
            "train_faces": len(train_faces),
            "train_speakers": len(train),
            "test_faces": len(test_faces),
            "test_speakers": len(test),
        },
        seconds=round(time.perf_counter() - start, 1),  # as metrics.json keeps it
    )
    order = list(report.oracle)
    report.ceiling = {k: report.ceiling[k] for k in order}
    report.chance = {k: report.chance[k] for k in order}
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    _write_json(
        out / "metrics.json",
        {
            "oracle_on_test_faces": report.oracle,
            "data": str(data),
            "seed": seed,
            **report.counts,
            "seconds": round(report.seconds, 1),
        },
    )
    _write_json(
        out / "ceilings.json",
        {
            "oracle_on_true_faces": report.oracle,
            "voice_only_ceiling": report.ceiling,
            "chance": report.chance,
        },
    )
    (out / "report.md").write_text(
        "# SynthVox oracle\n\n"
        + report.summary().split("\n", 1)[0]
        + f" (seed {seed}).\n\n"
        + report.table()
        + "\n\n"
        "*Oracle on true faces*: the oracle's own accuracy on real test faces, the floor of any "
        "evaluation that uses it. *Voice-only ceiling*: a model that recovers gender, age and size "
        "from the voice exactly and predicts every other attribute by its most frequent value for "
        "that gender and age decade. *Chance*: the attributes of a random training speaker.\n"
    )
    return report
