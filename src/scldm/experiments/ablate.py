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
lambda_sweep.csv and .png, grids.png and report.md (written by `ablate_report`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from scldm.config import (
    DiffusionStageConfig,
    EncoderStageConfig,
    config_to_dict,
    load_config,
    resolve_preset,
)
from scldm.data.manifest import MANIFEST_NAME
from scldm.errors import InputError
from scldm.evaluation.evaluate import EvalSettings, PipelineGenerator, evaluate
from scldm.training import diffusion as stage2
from scldm.training import encoders as stage1
from scldm.training import latents

log = logging.getLogger("scldm.ablate")

CLIP_KEY = "loss/contrastive"  # the CLIP loss's key in EncoderStageConfig.loss_weights
ORACLE = "synthvox"


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


# settings that change how a run reads its data, not one number it produces
RESULT_NEUTRAL = frozenset({"data.num_workers"})


def check_same_config(run: Path, cfg: Any) -> None:
    """A run folder that already holds another config is refused, never silently reused (the
    `RESULT_NEUTRAL` settings may differ)."""
    path = run / "config.yaml"
    if not path.is_file():
        return
    old = _flat(config_to_dict(load_config(type(cfg), path)))
    new = _flat(config_to_dict(cfg))
    keys = (old.keys() | new.keys()) - RESULT_NEUTRAL
    diff = sorted(k for k in keys if old.get(k) != new.get(k))
    if diff:
        changes = ", ".join(f"{k}: {old.get(k)!r} → {new.get(k)!r}" for k in diff[:6])
        raise InputError(
            run, f"holds a run with other settings ({changes}); use a new --out or remove it"
        )


# --- The plan ----------------------------------------------------------------------------------


@dataclass
class Step:
    """One unit of an experiment's plan (a training run, a face prior, an evaluation): what the
    log calls it, whether its outputs exist already, and how to make them."""

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
    check_same_config(run, cfg)
    try:
        latents.export_dir(run)
    except InputError:
        return False
    return (run / "metrics.json").is_file()


def _stage2_done(cfg: DiffusionStageConfig) -> bool:
    run = Path(cfg.train.output_dir)
    check_same_config(run, cfg)
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
    from scldm.experiments.ablate_report import write_outputs  # it reads this module's records

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
