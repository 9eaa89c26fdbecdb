"""What several commands share: the `Command` record of the command table, and the option
groups run (pretrain, train), sampling (generate, evaluate), data and prepare, each with the
helper that reads it back. Standard library only at import time."""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scldm.config import SAMPLER_NAMES
from scldm.data.prepare.options import PrepareOptions
from scldm.errors import InputError

Handler = Callable[[argparse.Namespace], int]


@dataclass(frozen=True)
class Command:
    """One row of a command table: `scldm NAME` (or `scldm prepare NAME`)."""

    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]  # adds the command's options
    run: Handler | None  # None: the command has sub-commands of its own (prepare)
    description: str | None = None


def add_commands(
    parser: argparse.ArgumentParser, table: Sequence[Command], *, dest: str, metavar: str
) -> None:
    """One sub-parser per row of `table`; parsing sets `args.handler` to the row's `run`."""
    sub = parser.add_subparsers(dest=dest, required=True, metavar=metavar)
    for command in table:
        p = sub.add_parser(command.name, help=command.help, description=command.description)
        command.configure(p)
        if command.run is not None:
            p.set_defaults(handler=command.run)


# --- data ------------------------------------------------------------------------------------


def add_data_option(p: argparse.ArgumentParser, help: str = "a prepared dataset folder") -> None:
    p.add_argument("--data", type=Path, required=True, help=help)


def require_dataset(path: Path) -> None:
    if not (path / "manifest.jsonl").is_file():
        raise InputError(path, "is not a prepared dataset (no manifest.jsonl)")


def floats(text: str) -> tuple[float, ...]:
    """`--lambdas 0,0.01,0.1` → (0.0, 0.01, 0.1)."""
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}"
        ) from None


# --- run: the two training stages -------------------------------------------------------------


def add_run_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("run")
    g.add_argument(
        "--config",
        default="small",
        help="preset name (tiny, small, small-real: what `make demo` trains, base) or a YAML "
        "file (default: %(default)s)",
    )
    g.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config value, e.g. --set train.max_steps=200 --set optim.lr=3e-4 "
        "(repeatable; the resolved config is written to RUN/config.yaml)",
    )
    g.add_argument(
        "--resume",
        default=None,
        metavar="latest|PATH",
        help="continue from the run's newest checkpoint (latest) or from a checkpoint folder",
    )
    g.add_argument("--cpu", action="store_true", help="train on the CPU even if a GPU is present")


def stage_config(args: argparse.Namespace, cls: type, stage: str) -> Any:
    """The run's config: the preset or YAML of --config, the --set values, --data and --out."""
    from scldm.config import load_config

    require_dataset(args.data)
    overrides = [*args.overrides, f"data.root={args.data}", f"train.output_dir={args.out}"]
    return load_config(cls, args.config, overrides, stage=stage)


# --- sampling: generate and evaluate ----------------------------------------------------------


def add_sampling_options(p: argparse.ArgumentParser) -> None:
    """Each defaults to the pipeline's own sampling config (saved in its folder by `scldm
    train`). SCLDM only: a baseline's pipeline refuses them."""
    g = p.add_argument_group(
        "sampling (SCLDM only; refused for a baseline's pipeline)",
        "each default: the pipeline's sampling config (model_index.json)",
    )
    g.add_argument("--steps", type=int, default=None, help="sampler steps")
    g.add_argument(
        "--guidance",
        type=float,
        default=None,
        help="classifier-free guidance scale g; 1 = none, one UNet pass per step",
    )
    g.add_argument("--scheduler", choices=SAMPLER_NAMES, default=None, help="sampler")
    g.add_argument(
        "--prior-scale",
        "--lam",
        dest="prior_scale",
        type=float,
        default=None,
        help="λ_infer, the face prior's scale in the shift μ = λ·P (--lam is an alias)",
    )
    g.add_argument(
        "--temperature",
        type=float,
        default=None,
        help="τ ≥ 0, the scale of the starting noise around the face prior: 1 = the model's "
        "own spread, lower = faces that follow the voice more closely and vary less",
    )


def sampling_overrides(args: argparse.Namespace) -> dict[str, float | int]:
    """The sampling options given on the command line (checked before anything loads), as
    keyword arguments of `SpeechToFacePipeline.__call__`."""
    for flag, value in (("--num-images", args.num_images), ("--steps", args.steps)):
        if value is not None and value < 1:
            raise InputError(None, f"{flag} must be at least 1, got {value}")
    scales = (
        ("--guidance", args.guidance),
        ("--prior-scale", args.prior_scale),
        ("--temperature", args.temperature),
    )
    for flag, value in scales:  # NaN or inf would sample an all-black face without a word
        if value is not None and not math.isfinite(value):
            raise InputError(None, f"{flag} must be a finite number, got {value:g}")
    if args.temperature is not None and not args.temperature >= 0:
        raise InputError(None, f"--temperature must be ≥ 0, got {args.temperature:g}")
    given = {
        "num_inference_steps": args.steps,
        "guidance_scale": args.guidance,
        "temperature": args.temperature,
        "prior_scale": args.prior_scale,
    }
    return {k: v for k, v in given.items() if v is not None}


def require_pipeline(path: Path) -> None:
    if not (path / "model_index.json").is_file():
        raise InputError(path, "is not a pipeline folder (no model_index.json)")


def check_model_options(args: argparse.Namespace) -> dict[str, Any]:
    """What --model holds (read from its model_index.json, no weights loaded), after refusing
    the sampling options a baseline's pipeline lacks: `scldm.evaluation.generators.describe`."""
    from scldm.evaluation.generators import check_options

    require_pipeline(args.model)
    return check_options(args.model, sampling_overrides(args), args.scheduler)


def load_model(args: argparse.Namespace):
    """The `FaceGenerator` of --model (SCLDM's pipeline or a baseline's), with the sampling
    options given (the sampler of --scheduler included) for SCLDM."""
    from scldm.evaluation.generators import load_generator

    require_pipeline(args.model)
    return load_generator(args.model, overrides=sampling_overrides(args), scheduler=args.scheduler)


# --- prepare: the corpus preparers' `PrepareOptions` ------------------------------------------

_PREPARE_HELP = {
    "image_size": "face crop side in pixels",
    "seconds": "audio kept from the start of each clip",
    "workers": "parallel worker processes",
    "seed": "seed of the speaker split",
    "overwrite": "redo items already prepared by an earlier run",
}


def add_prepare_options(p: argparse.ArgumentParser) -> None:
    """--out and one option per field of `PrepareOptions`, defaulting to its defaults."""
    p.add_argument(
        "--out", type=Path, required=True, help="folder to write the prepared dataset to"
    )
    for f in dataclasses.fields(PrepareOptions):
        flag = "--" + f.name.replace("_", "-")
        if f.default is False:
            p.add_argument(flag, action="store_true", help=_PREPARE_HELP[f.name])
        else:
            p.add_argument(
                flag,
                type=type(f.default),
                default=f.default,
                help=_PREPARE_HELP[f.name] + " (default: %(default)s)",
            )


def prepare_options(args: argparse.Namespace) -> PrepareOptions:
    return PrepareOptions(
        **{f.name: getattr(args, f.name) for f in dataclasses.fields(PrepareOptions)}
    )
