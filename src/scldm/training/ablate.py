"""`scldm ablate`: the paper's ablations in one resumable command — Table 4 (base / +CP /
+CP+PN) and Fig. 6 (λ_train × λ_infer), scored by the SynthVox oracle (DESIGN.md §5).

Runs, each in its own folder of OUT (a finished one is reused when the command is rerun, a
half-finished training run continues from its newest checkpoint):

- `stage1-noclip/`: stage 1 with the CLIP loss weight `loss/contrastive` = 0 and the speech
  encoder's learning rate 0: the face autoencoder trains on reconstruction alone, the speech
  encoder keeps its seeded random weights (its BatchNorm running statistics still follow the
  training audio, as in any forward pass in train mode).
- `stage1/`: stage 1 as configured (contrastive pre-training), and its face prior `stage1/prior/`.
- `ldm-base/`: stage 2 on `stage1-noclip` with λ_train = λ_infer = 0 → row **base**.
- `ldm-train<λ>/`: stage 2 on `stage1` with λ_train = λ; λ = 0 is row **+CP**, the preset's
  `lambda_train` is row **+CP+PN**, and every λ of the sweep is one of these runs.
- `<ldm run>/eval/infer<λ>/`: `scldm.evaluation.evaluate.evaluate` of that pipeline at λ_infer = λ
  (metrics.json, report.md, images/).

Every stage-2 run starts from the same seed and every evaluation uses the same clips and seed,
so runs differ only in what the ablation changes. Results: OUT/table4.md and .csv,
lambda_sweep.csv and .png, grids.png and report.md.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from scldm.config import (
    DiffusionStageConfig,
    EncoderStageConfig,
    config_to_dict,
    load_config,
    resolve_preset,
)
from scldm.data.manifest import MANIFEST_NAME
from scldm.errors import InputError
from scldm.evaluation.evaluate import (
    EvalSettings,
    PipelineGenerator,
    evaluate,
    fmt,
    image_path,
    plan_clips,
)
from scldm.faces import load_face_tensor, make_grid, save_image
from scldm.training import diffusion as stage2
from scldm.training import encoders as stage1
from scldm.training import latents

log = logging.getLogger("scldm.ablate")

CLIP_KEY = "loss/contrastive"  # the CLIP loss's key in EncoderStageConfig.loss_weights
ORACLE = "synthvox"
# (csv column, label, where, metric key, digits, scale): the paper's Table 4 columns
COLUMNS = (
    ("cos_x100", "oracle cos ×100 ↓", "features", "cos/l2norm/clip", 2, 1.0),
    ("R@1_pct", "R@1 (%)", "features", "R@1", 1, 100.0),
    ("gender_acc_pct", "gender acc (%)", "attributes", "gender_acc", 1, 100.0),
    ("age_within10_pct", "age within ±10 y (%)", "attributes", "age_within", 1, 100.0),
    ("age_mae", "age MAE (years) ↓", "attributes", "age_mae", 1, 1.0),
)
SWEEP_PANELS = ("cos_x100", "gender_acc_pct", "age_within10_pct")


def lam_name(lam: float) -> str:
    """λ as it appears in folder names and tables: 0, 0.01, 0.1, 1e-05 (exact: two λ with one
    name are one λ)."""
    short = f"{float(lam):g}"
    return short if float(short) == float(lam) else repr(float(lam))


def _unique(values: Sequence[float]) -> list[float]:
    out: list[float] = []
    for v in values:
        if lam_name(v) not in {lam_name(o) for o in out}:
            out.append(float(v))
    return out


# --- Configs -----------------------------------------------------------------------------------


def split_overrides(overrides: Sequence[str]) -> tuple[list[str], list[str]]:
    """Route `--set pretrain.KEY=V` to stage 1 and `--set train.KEY=V` to stage 2, prefix
    removed (`train.train.max_steps=600` is stage 2's `train.max_steps`)."""
    pre, tra = [], []
    for text in overrides:
        head, dot, rest = text.partition(".")
        if head == "pretrain" and dot:
            pre.append(rest)
        elif head == "train" and dot:
            tra.append(rest)
        else:
            raise InputError(
                None,
                f"--set {text}: say which stage it is for, e.g. --set pretrain.train.max_steps=400 "
                "(stage 1) or --set train.train.max_steps=600 (stage 2)",
            )
    return pre, tra


def stage_configs(
    preset: str, data: Path, overrides: Sequence[str]
) -> tuple[EncoderStageConfig, DiffusionStageConfig]:
    """Both stages' configs from one preset name and the routed overrides (`data.root` = data)."""
    if Path(preset).suffix in (".yaml", ".yml"):
        raise InputError(
            preset, "ablate takes a preset name (tiny, small, base) for both stages, not a file"
        )
    for stage in ("pretrain", "train"):
        resolve_preset(stage, preset)  # an unknown name: the error lists the known ones
    pre, tra = split_overrides(overrides)
    cfgs = []
    for cls, stage, ovr, prefix in (
        (EncoderStageConfig, "pretrain", pre, "pretrain."),
        (DiffusionStageConfig, "train", tra, "train."),
    ):
        try:
            cfg = load_config(cls, preset, ovr, stage=stage)
        except InputError as e:
            raise InputError(e.path, f"{e.problem} (the {prefix} overrides of ablate)") from None
        cfgs.append(_with(cfg, data={"root": str(data)}))
    return cfgs[0], cfgs[1]


def _with(cfg: Any, **changes: Any) -> Any:
    """`dataclasses.replace`, where a mapping for a dataclass field replaces inside it."""
    out = {}
    for key, value in changes.items():
        current = getattr(cfg, key)
        if dataclasses.is_dataclass(current) and isinstance(value, Mapping):
            value = dataclasses.replace(current, **value)
        out[key] = value
    return dataclasses.replace(cfg, **out)


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, Mapping):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out |= _flat(v, f"{prefix}{k}.")
        return out
    return {prefix[:-1]: tree}


def _check_same_config(run: Path, cfg: Any) -> None:
    """A run folder that already holds another config is refused, never silently reused."""
    path = run / "config.yaml"
    if not path.is_file():
        return
    old = _flat(config_to_dict(load_config(type(cfg), path)))
    new = _flat(config_to_dict(cfg))
    diff = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    if diff:
        changes = ", ".join(f"{k}: {old.get(k)!r} → {new.get(k)!r}" for k in diff[:6])
        raise InputError(
            run, f"holds a run with other settings ({changes}); use a new --out or remove it"
        )


# --- The plan ----------------------------------------------------------------------------------


@dataclass
class Step:
    label: str
    done: Callable[[], bool]
    run: Callable[[], None]


@dataclass(frozen=True)
class EvalKey:
    run: str  # the stage-2 run folder's name
    lam_infer: float

    def folder(self, out: Path) -> Path:
        return out / self.run / "eval" / f"infer{lam_name(self.lam_infer)}"


@dataclass
class Ablation:
    """What `ablate` ran: row → evaluation, the sweep's grid, and where everything is."""

    out: Path
    rows: dict[str, EvalKey]
    lambdas: list[float]
    sweep: dict[tuple[str, str], EvalKey]  # (λ_train, λ_infer) names → evaluation
    stage1: EncoderStageConfig
    stage2: DiffusionStageConfig
    settings: EvalSettings
    oracle: Path

    def metrics(self, key: EvalKey) -> dict[str, Any]:
        return json.loads((key.folder(self.out) / "metrics.json").read_text())


def _stage1_done(cfg: EncoderStageConfig) -> bool:
    run = Path(cfg.train.output_dir)
    _check_same_config(run, cfg)
    try:
        latents.export_dir(run)
    except InputError:
        return False
    return (run / "metrics.json").is_file()


def _stage2_done(cfg: DiffusionStageConfig) -> bool:
    run = Path(cfg.train.output_dir)
    _check_same_config(run, cfg)
    pipe = run / "pipeline"
    return (pipe / "model_index.json").is_file() and (pipe / "prior" / "scldm_meta.json").is_file()


def ablate(
    data: str | Path,
    out: str | Path,
    *,
    oracle: str | Path,
    preset: str = "small",
    overrides: Sequence[str] = (),
    lambdas: Sequence[float] = (0.0, 0.01, 0.1),
    max_clips: int | None = None,
    seed: int = 0,
    cpu: bool = False,
    progress: bool = True,
) -> Path:
    """Train, evaluate and tabulate the ablations; returns OUT/report.md. See the module doc."""
    data, out, oracle = Path(data).resolve(), Path(out).resolve(), Path(oracle).resolve()
    if not (data / MANIFEST_NAME).is_file():
        raise InputError(data, "is not a prepared dataset (no manifest.jsonl)")
    if not (oracle / "config.json").is_file():
        raise InputError(
            oracle,
            "is not a SynthVox oracle folder (no config.json); make one with "
            "`scldm synthvox-oracle`",
        )
    lambdas = _unique(lambdas)
    if not lambdas or any(lam < 0 for lam in lambdas):
        raise InputError(None, f"--lambdas needs one or more λ ≥ 0, got {lambdas}")
    if max_clips is not None and max_clips < 2:
        raise InputError(None, "--max-clips must be at least 2")
    enc_cfg, ldm_cfg = stage_configs(preset, data, overrides)
    settings = EvalSettings(split="test", num_images=1, seed=seed, max_clips=max_clips)
    device = "cuda" if torch.cuda.is_available() and not cpu else "cpu"
    out.mkdir(parents=True, exist_ok=True)

    lam_t, lam_i = ldm_cfg.lambda_train, ldm_cfg.sampling.prior_scale
    rows = {
        "base": EvalKey("ldm-base", 0.0),
        "+CP": EvalKey(f"ldm-train{lam_name(0)}", 0.0),
        "+CP+PN": EvalKey(f"ldm-train{lam_name(lam_t)}", lam_i),
    }
    sweep = {
        (lam_name(t), lam_name(i)): EvalKey(f"ldm-train{lam_name(t)}", i)
        for t in lambdas
        for i in lambdas
    }
    result = Ablation(out, rows, lambdas, sweep, enc_cfg, ldm_cfg, settings, oracle)

    steps: list[Step] = []
    s1 = {"noclip": out / "stage1-noclip", "clip": out / "stage1"}
    noclip_cfg = _with(
        enc_cfg,
        loss_weights={**enc_cfg.loss_weights, CLIP_KEY: 0.0},
        speech_lr=0.0,
        train={"output_dir": str(s1["noclip"])},
    )
    clip_cfg = _with(enc_cfg, train={"output_dir": str(s1["clip"])})
    for cfg, what in (
        (noclip_cfg, "without contrastive pre-training (CLIP weight 0)"),
        (clip_cfg, "with contrastive pre-training"),
    ):
        run = Path(cfg.train.output_dir)
        steps.append(
            Step(
                f"stage 1 {what}, {cfg.train.max_steps} steps → {run.name}/",
                lambda cfg=cfg: _stage1_done(cfg),
                lambda cfg=cfg: _train_stage1(cfg, cpu),
            )
        )
    steps.append(
        Step(
            f"face prior of {s1['clip'].name}/ ({ldm_cfg.prior_faces} faces at most)",
            lambda: (s1["clip"] / "prior" / "prior.safetensors").is_file(),
            lambda: _prior(s1["clip"], data, ldm_cfg.prior_faces),
        )
    )
    runs: dict[str, tuple[DiffusionStageConfig, Path]] = {}
    runs["ldm-base"] = (
        _with(ldm_cfg, lambda_train=0.0, sampling={"prior_scale": 0.0}),
        s1["noclip"],
    )
    for t in _unique([0.0, lam_t, *lambdas]):
        saved_infer = lam_i if lam_name(t) == lam_name(lam_t) else t  # the pipeline's default
        runs[f"ldm-train{lam_name(t)}"] = (
            _with(ldm_cfg, lambda_train=t, sampling={"prior_scale": saved_infer}),
            s1["clip"],
        )
    for name, (cfg, enc) in runs.items():
        run = out / name
        cfg = _with(cfg, train={"output_dir": str(run)})
        runs[name] = (cfg, enc)
        steps.append(
            Step(
                f"stage 2 λ_train={lam_name(cfg.lambda_train)} on {enc.name}/, "
                f"{cfg.train.max_steps} steps → {name}/",
                lambda cfg=cfg: _stage2_done(cfg),
                lambda cfg=cfg, enc=enc: _train_stage2(cfg, enc, cpu),
            )
        )
    evals = list(dict.fromkeys([*rows.values(), *sweep.values()]))
    scorers: dict[str, Any] = {}
    for key in evals:
        cfg = runs[key.run][0]
        folder = key.folder(out)
        gen_settings = {**dataclasses.asdict(cfg.sampling), "prior_scale": key.lam_infer}
        gen_settings.pop("scheduler")  # recorded by its class name
        steps.append(
            Step(
                f"evaluate {key.run}/ at λ_infer={lam_name(key.lam_infer)} → "
                f"{folder.relative_to(out)}/",
                lambda folder=folder, g=gen_settings: _eval_done(folder, settings, g),
                lambda key=key, cfg=cfg: _evaluate(
                    key, cfg, result, scorers, device=device, progress=progress
                ),
            )
        )

    for i, step in enumerate(steps, 1):
        head = f"[{i}/{len(steps)}] {step.label}"
        if step.done():
            log.info("%s: done earlier, reused", head)
            continue
        log.info("%s …", head)
        step.run()
    return write_outputs(result)


def _train_stage1(cfg: EncoderStageConfig, cpu: bool) -> None:
    stage1.train(cfg, resume="latest", cpu=cpu)


def _train_stage2(cfg: DiffusionStageConfig, encoders: Path, cpu: bool) -> None:
    stage2.train(cfg, encoders, resume="latest", cpu=cpu)


def _prior(run: Path, data: Path, num_faces: int) -> None:
    """What `scldm prior` does (stage 2 would otherwise make the same prior itself)."""
    latents.face_prior(latents.load_encoders(run), data, num_faces=num_faces, recompute=True)


def _eval_done(folder: Path, settings: EvalSettings, gen: Mapping[str, Any]) -> bool:
    path = folder / "metrics.json"
    if not (path.is_file() and (folder / "report.md").is_file()):
        return False
    old = json.loads(path.read_text())
    same = old.get("settings") == json.loads(json.dumps(dataclasses.asdict(settings)))
    return same and all(old.get("model", {}).get(k) == v for k, v in gen.items())


def _evaluate(
    key: EvalKey,
    cfg: DiffusionStageConfig,
    result: Ablation,
    scorers: dict[str, Any],
    *,
    device: str,
    progress: bool,
) -> None:
    from scldm.diffusion.pipeline import SpeechToFacePipeline
    from scldm.evaluation.extractors import build_estimator, build_features

    if not scorers:  # the oracle is loaded once, and only when something is scored
        scorers["features"] = {ORACLE: build_features(ORACLE, oracle=result.oracle, device=device)}
        scorers["attributes"] = {ORACLE: build_estimator(ORACLE, oracle=result.oracle)}
    model = result.out / key.run / "pipeline"
    if scorers.get("pipe_path") != model:
        scorers["pipe"] = SpeechToFacePipeline.from_pretrained(model).to(device)
        scorers["pipe_path"] = model
    generator = PipelineGenerator(scorers["pipe"], {"prior_scale": key.lam_infer})
    evaluate(
        generator,
        Path(cfg.data.root),
        key.folder(result.out),
        features=scorers["features"],
        attributes=scorers["attributes"],
        settings=result.settings,
        model_path=str(model),
        progress=progress,
    )


# --- Outputs -----------------------------------------------------------------------------------


def _metric(metrics: Mapping[str, Any], cond: str, where: str, key: str) -> dict | None:
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


def _write_text(path: Path, text: str) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)
    return path


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
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def grids(result: Ablation, path: Path, *, voices: int = 8) -> Path:
    """true face | base | +CP | +CP+PN for the first clip of the first `voices` test speakers,
    read from each row's cached evaluation images."""
    s = result.settings
    clips = plan_clips(Path(result.stage1.data.root), s.split, max_clips=s.max_clips, seed=s.seed)
    firsts, seen = [], set()
    for c in clips:
        if c.speaker not in seen:
            seen.add(c.speaker)
            firsts.append(c)
    firsts = firsts[:voices]
    folders = {name: key.folder(result.out) for name, key in result.rows.items()}
    with Image.open(image_path(folders["base"], firsts[0], 0)) as im:
        size = max(im.size[0], 96)  # the generated faces' size, enlarged to fit the captions
    images, captions = [], []
    for c in firsts:
        tag = " ".join(str(c.labels[k]) for k in ("gender", "age") if c.labels.get(k) is not None)
        images.append(load_face_tensor(c.face, size))
        captions.append(f"true {tag}".strip())
        for name, folder in folders.items():
            images.append(load_face_tensor(image_path(folder, c, 0), size))
            captions.append(name)
    return save_image(make_grid(images, ncols=1 + len(folders), captions=captions), path)


def write_outputs(result: Ablation) -> Path:
    out = result.out
    table, t4_rows = table4(result)
    _write_text(out / "table4.md", table + "\n")
    _write_csv(out / "table4.csv", t4_rows)
    s_rows = sweep_rows(result)
    _write_csv(out / "lambda_sweep.csv", s_rows)
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
    return _write_text(out / "report.md", "\n".join(lines))
