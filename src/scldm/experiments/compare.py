"""`scldm compare`: SCLDM beside the published baselines under one protocol (the paper's
Tables 2–3), every number with its 95 % interval, the true-face floor, chance and the
voice-only ceiling.

The models (`Model`: a name and a pipeline folder) are given with `--model NAME=DIR`
(`parse_model`), trained by `compare_runs.train_models` (`--train`), or both. `compare`
evaluates each with `scldm.evaluation.evaluate.evaluate` into `OUT/<name>/` (the images and an
evaluation with the same settings are reused, so a rerun resumes and an unchanged one evaluates
nothing) and reads each model's training minutes from its runs' logs.

Every model is scored on the same clips, at the same size, with the same seeds, so two models
can be compared speaker by speaker: `compare_report` writes the table, the paired differences
(SCLDM − each method) and the grid.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from scldm.data.manifest import MANIFEST_NAME
from scldm.errors import InputError
from scldm.evaluation.evaluate import EvalSettings, evaluate
from scldm.evaluation.generators import describe, load_generator, unknown_pipeline

log = logging.getLogger("scldm.compare")

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


@dataclass(frozen=True)
class Model:
    """One row of the comparison: `name` (its folder in OUT and its label), the pipeline
    folder, and where it came from (`seed` and `runs` are known for trained ones)."""

    name: str
    path: Path
    method: str = ""  # "scldm" or a baseline's name; "" = read from the folder
    seed: int | None = None  # training seed (compare --train); None: given with --model
    runs: tuple[Path, ...] = ()  # training run folders; () = looked up from the folder


def parse_model(text: str) -> Model:
    """`NAME=DIR` of `--model`."""
    name, eq, path = text.partition("=")
    if not eq or not name or not path:
        raise InputError(None, f"--model {text}: expected NAME=DIR, e.g. scldm=runs/ldm/pipeline")
    if not NAME.match(name) or name == "runs":
        raise InputError(
            None, f"--model {text}: a name is letters, digits and . _ + - (and not 'runs')"
        )
    return Model(name=name, path=Path(path))


# --- Training time -----------------------------------------------------------------------------


# a training session starts with one of these lines in RUN/log.txt (scldm.training.checkpoint)
SESSION_START = ("resumed from ", "starting from step 0")
STEP_LINE = re.compile(r"^step \d+ ")


def _entries(log_file: Path) -> list[tuple[datetime, str]]:
    """(time, message) of each timestamped line of a run's log.txt."""
    out = []
    for line in log_file.read_text(errors="replace").splitlines():
        try:
            out.append((datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f"), line[24:]))
        except ValueError:
            continue  # a continuation line
    return out


def log_seconds(log_file: Path) -> float:
    """Seconds a run trained, from its log.txt: first to last line of each session. A session
    starts with the line saying it resumed (or started); when a run was killed and resumed, the
    downtime is the longest pause between the killed session's last logged step and the resume,
    and is left out."""
    entries = _entries(log_file)
    seconds, start, marked = 0.0, 0, False
    for i, (_, text) in enumerate(entries):
        if not any(m in text for m in SESSION_START):
            continue
        if marked:  # a second session begins: cut the first at its longest final pause
            steps = [j for j in range(start, i) if STEP_LINE.match(entries[j][1])]
            first = steps[-1] if steps else start
            cut = max(range(first, i), key=lambda j: entries[j + 1][0] - entries[j][0])
            seconds += (entries[cut][0] - entries[start][0]).total_seconds()
            start = cut + 1
        marked = True
    if entries:
        seconds += (entries[-1][0] - entries[start][0]).total_seconds()
    return seconds


def train_minutes(runs: Sequence[Path]) -> float | None:
    """Minutes of training of a model's runs (`log_seconds` of each run's log.txt, summed);
    None when no run has a log.txt."""
    logs = [Path(r) / "log.txt" for r in runs if (Path(r) / "log.txt").is_file()]
    return sum(log_seconds(f) for f in logs) / 60 if logs else None


def find_runs(pipeline: Path) -> tuple[Path, ...]:
    """The training runs behind a pipeline folder, as far as it records them: the folder
    above it (RUN/pipeline) and the runs its components' scldm_meta.json name (stage 2's run
    and its stage-1 encoders); those holding a log.txt."""
    found = [pipeline.parent]
    for meta_file in sorted(pipeline.glob("*/scldm_meta.json")):
        try:
            meta = json.loads(meta_file.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if meta.get("run_dir"):
            found.append(Path(meta["run_dir"]))
        if meta.get("encoders"):
            enc = Path(meta["encoders"])
            found.append(enc.parent if enc.name == "export" else enc)
    runs = {p.resolve(): p for p in found if (p / "log.txt").is_file()}
    return tuple(runs.values())


# --- Evaluation --------------------------------------------------------------------------------


def _eval_done(
    folder: Path,
    model: Model,
    data: Path,
    settings: EvalSettings,
    generator_settings: Mapping[str, Any],
    scorers: Mapping[str, Sequence[str]],
) -> bool:
    """An evaluation in `folder` of the same data, settings, model and scorers."""
    files = [folder / n for n in ("metrics.json", "per_speaker.json", "report.md")]
    if not all(f.is_file() for f in files):
        return False
    old = json.loads(files[0].read_text())
    same = old.get("data") == str(data)
    same &= old.get("settings") == json.loads(json.dumps(dataclasses.asdict(settings)))
    same &= old.get("model", {}).get("path") == str(model.path)
    same &= all(old.get("model", {}).get(k) == v for k, v in generator_settings.items())
    return same and all(list(old.get(k, {})) == list(v) for k, v in scorers.items())


def check_models(models: Sequence[Model]) -> list[Model]:
    """Names unique and each folder a pipeline of a known method (read from its
    model_index.json, nothing loaded); fills in each model's method."""
    seen: set[str] = set()
    out = []
    for m in models:
        if m.name in seen:
            raise InputError(None, f"two models are named {m.name!r}; names must be unique")
        seen.add(m.name)
        info = describe(m.path)
        if info["method"] is None:
            raise unknown_pipeline(m.path, info["class"])
        out.append(dataclasses.replace(m, method=m.method or info["method"]))
    return out


def compare(
    models: Sequence[Model],
    data: str | Path,
    out: str | Path,
    *,
    features: Mapping[str, Any],
    attributes: Mapping[str, Any],
    settings: EvalSettings,
    oracle: str | Path | None = None,
    device: str | None = None,
    grid_speakers: int = 8,
    progress: bool = True,
) -> Path:
    """Evaluate every model into OUT/<name>/ (reusing finished evaluations) and write the
    comparison: OUT/table.md, table.csv, differences.csv, grid.png and compare.json. Returns
    OUT/table.md."""
    from scldm.experiments.compare_report import write_comparison  # it reads this module

    data, out = Path(data), Path(out)
    if not (data / MANIFEST_NAME).is_file():
        raise InputError(data, "is not a prepared dataset (no manifest.jsonl)")
    if not models:
        raise InputError(None, "nothing to compare: give --model NAME=DIR or --train METHODS")
    if not features and not attributes:
        raise InputError(None, "compare needs at least one feature network or attribute estimator")
    models = check_models(models)
    out.mkdir(parents=True, exist_ok=True)
    scorers = {"features": list(features), "attributes": list(attributes)}
    for i, model in enumerate(models, 1):
        folder = out / model.name
        head = f"[evaluate {i}/{len(models)}] {model.name} ({model.path}) → {folder}"
        generator = load_generator(model.path, device=device)
        if _eval_done(folder, model, data, settings, generator.settings, scorers):
            log.info("%s: done earlier, reused", head)
            continue
        log.info("%s …", head)
        evaluate(
            generator,
            data,
            folder,
            features=features,
            attributes=attributes,
            settings=settings,
            model_path=str(model.path),
            progress=progress,
        )
    runs = [m.runs or find_runs(m.path) for m in models]
    minutes = {m.name: train_minutes(r) for m, r in zip(models, runs, strict=True)}
    models = [dataclasses.replace(m, runs=tuple(r)) for m, r in zip(models, runs, strict=True)]
    return write_comparison(
        models,
        data,
        out,
        settings=settings,
        minutes=minutes,
        oracle=None if oracle is None else Path(oracle),
        grid_speakers=grid_speakers,
    )
