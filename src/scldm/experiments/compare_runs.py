"""`scldm compare --train`: the methods × seeds that `scldm.experiments.compare` compares,
trained with their presets where missing.

The runs' layout: `OUT/runs/scldm/seed<K>/{encoders,ldm}` (stage 1 with its face prior, then
stage 2) and `OUT/runs/<baseline>/seed<K>` (`scldm train-baseline`'s run). A run whose
`pipeline/model_index.json` exists is reused (after checking that its config.yaml holds the same
settings), an unfinished one continues from its newest checkpoint. `train_models` returns one
`Model` per run, named `<method>-seed<K>`, with its seed and run folders.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from scldm.config import DiffusionStageConfig, EncoderStageConfig, load_config, resolve_preset
from scldm.errors import InputError
from scldm.experiments.ablate import Step, check_same_config
from scldm.experiments.compare import Model
from scldm.training.baselines import CONFIGS, baseline_trainer

log = logging.getLogger("scldm.compare")


# --- Trainers ----------------------------------------------------------------------------------


def _train_stage1(cfg: EncoderStageConfig, cpu: bool) -> None:
    from scldm.training import encoders

    encoders.train(cfg, resume="latest", cpu=cpu)


def _face_prior(run: Path, data: Path, num_faces: int) -> None:
    """What `scldm prior` does."""
    from scldm.training import latents

    latents.face_prior(latents.load_encoders(run), data, num_faces=num_faces, recompute=True)


def _train_stage2(cfg: DiffusionStageConfig, encoders: Path, cpu: bool) -> None:
    from scldm.training import diffusion

    diffusion.train(cfg, encoders, resume="latest", cpu=cpu)


# --- The plan ----------------------------------------------------------------------------------


def route_overrides(overrides: Sequence[str], methods: Sequence[str]) -> dict[str, list[str]]:
    """`--set METHOD.KEY=VALUE` → {method: [KEY=VALUE]}; SCLDM's keys name their stage:
    `scldm.pretrain.train.max_steps=400`, `scldm.train.train.max_steps=600`."""
    routed: dict[str, list[str]] = {m: [] for m in methods}
    for text in overrides:
        method, dot, rest = text.partition(".")
        if not dot or method not in routed:
            raise InputError(
                None,
                f"--set {text}: start with the method it is for ({', '.join(methods)}), e.g. "
                "--set speech2face.train.max_steps=200 or --set scldm.train.train.max_steps=600",
            )
        if method == "scldm" and rest.partition(".")[0] not in ("pretrain", "train"):
            raise InputError(
                None,
                f"--set {text}: say which SCLDM stage, scldm.pretrain.KEY=V (stage 1) or "
                "scldm.train.KEY=V (stage 2)",
            )
        routed[method].append(rest)
    return routed


def _config(cls: type, preset: str, stage: str, overrides: Sequence[str], what: str) -> Any:
    try:
        return load_config(cls, preset, overrides, stage=stage)
    except InputError as e:
        raise InputError(e.path, f"{e.problem} ({what})") from None


def _pipeline_done(run: Path) -> bool:
    return (run / "pipeline" / "model_index.json").is_file()


def _scldm_steps(
    preset: str, data: Path, run: Path, seed: int, overrides: Sequence[str], cpu: bool
) -> tuple[list[Step], Model]:
    pre = [o.partition(".")[2] for o in overrides if o.startswith("pretrain.")]
    tra = [o.partition(".")[2] for o in overrides if o.startswith("train.")]
    enc_run, ldm_run = run / "encoders", run / "ldm"
    common = [f"data.root={data}", f"train.seed={seed}"]
    enc = _config(
        EncoderStageConfig,
        preset,
        "pretrain",
        [*pre, *common, f"train.output_dir={enc_run}"],
        "scldm.pretrain overrides",
    )
    ldm = _config(
        DiffusionStageConfig,
        preset,
        "train",
        [*tra, *common, f"train.output_dir={ldm_run}"],
        "scldm.train overrides",
    )
    check_same_config(enc_run, enc)
    check_same_config(ldm_run, ldm)
    finished = _pipeline_done(ldm_run)
    exported = enc_run / "export" / "speech_encoder" / "config.json"
    prior = enc_run / "prior" / "prior.safetensors"
    steps = [
        Step(
            f"SCLDM seed {seed}: stage 1, {enc.train.max_steps} steps → {enc_run}",
            lambda: finished or (exported.is_file() and (enc_run / "metrics.json").is_file()),
            lambda: _train_stage1(enc, cpu),
        ),
        Step(
            f"SCLDM seed {seed}: face prior of {enc_run}",
            lambda: finished or prior.is_file(),
            lambda: _face_prior(enc_run, data, ldm.prior_faces),
        ),
        Step(
            f"SCLDM seed {seed}: stage 2, {ldm.train.max_steps} steps → {ldm_run}",
            lambda: _pipeline_done(ldm_run),
            lambda: _train_stage2(ldm, enc_run, cpu),
        ),
    ]
    model = Model(f"scldm-seed{seed}", ldm_run / "pipeline", "scldm", seed, (enc_run, ldm_run))
    return steps, model


def _baseline_steps(
    method: str, preset: str, data: Path, run: Path, seed: int, overrides: Sequence[str], cpu: bool
) -> tuple[list[Step], Model]:
    config_class, train = baseline_trainer(method)
    ovr = [*overrides, f"data.root={data}", f"train.output_dir={run}", f"train.seed={seed}"]
    cfg = _config(config_class, preset, f"baselines/{method}", ovr, f"{method} overrides")
    check_same_config(run, cfg)
    step = Step(
        f"{method} seed {seed}: train-baseline → {run}",
        lambda: _pipeline_done(run),
        lambda: train(cfg, resume="latest", cpu=cpu),
    )
    return [step], Model(f"{method}-seed{seed}", run / "pipeline", method, seed, (run,))


def train_models(
    methods: Sequence[str],
    seeds: Sequence[int],
    *,
    data: str | Path,
    out: str | Path,
    preset: str = "small",
    overrides: Sequence[str] = (),
    cpu: bool = False,
) -> list[Model]:
    """Train what is missing of `methods` × `seeds` under OUT/runs/ (see the module doc) and
    return their models, named `<method>-seed<K>`. Every config is loaded (and a run folder
    with other settings refused) before anything trains."""
    data, out = Path(data).resolve(), Path(out).resolve()
    methods = list(dict.fromkeys(methods))
    unknown = [m for m in methods if m != "scldm" and m not in CONFIGS]
    if unknown or not methods:
        known = ", ".join(["scldm", *CONFIGS])
        raise InputError(None, f"--train {','.join(methods)}: methods to train are {known}")
    if not seeds or len(set(seeds)) != len(seeds):
        raise InputError(None, f"--seeds needs distinct seeds, got {list(seeds)}")
    if Path(preset).suffix in (".yaml", ".yml"):
        raise InputError(preset, "compare --train takes a preset name (tiny, small, base)")
    routed = route_overrides(overrides, methods)
    steps: list[Step] = []
    models: list[Model] = []
    for method in methods:
        stage = "pretrain" if method == "scldm" else f"baselines/{method}"
        resolve_preset(stage, preset)  # an unknown name: the error lists the known ones
        for seed in seeds:
            if method == "scldm":
                run = out / "runs" / "scldm" / f"seed{seed}"
                s, m = _scldm_steps(preset, data, run, seed, routed[method], cpu)
            else:
                run = out / "runs" / method / f"seed{seed}"
                s, m = _baseline_steps(method, preset, data, run, seed, routed[method], cpu)
            steps += s
            models.append(m)
    for i, step in enumerate(steps, 1):
        head = f"[train {i}/{len(steps)}] {step.label}"
        if step.done():
            log.info("%s: done earlier, reused", head)
            continue
        log.info("%s …", head)
        step.run()
    return models
