"""The command table, the parser built from it, and `main` (the console script's entry)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from scldm import __version__
from scldm.cli import compare, generate, prepare, serve, train
from scldm.cli.options import Command, add_commands
from scldm.errors import CheckpointNotSaved, InputError, Preempted, TrainingDiverged

COMMANDS: tuple[Command, ...] = (
    prepare.PREPARE,
    train.ORACLE,
    train.PRETRAIN,
    train.PRIOR,
    train.TRAIN,
    train.TRAIN_BASELINE,
    generate.GENERATE,
    generate.EVALUATE,
    train.ABLATE,
    compare.COMPARE,
    serve.APP,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scldm",
        description="Speech-to-face generation: prepare data, train SCLDM, generate and "
        "evaluate faces.",
        epilog="`scldm COMMAND --help` describes a command; docs/ holds the guides and results.",
    )
    parser.add_argument("--version", action="version", version=f"scldm {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    add_commands(parser, COMMANDS, dest="command", metavar="COMMAND")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `scldm` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    if not args.verbose:  # accelerate narrates every file it saves at INFO
        logging.getLogger("accelerate").setLevel(logging.WARNING)
    try:
        return args.handler(args)
    except InputError as e:
        print(f"scldm: error: {e}", file=sys.stderr)
        return 2
    except (TrainingDiverged, CheckpointNotSaved) as e:
        print(f"scldm: error: {e}", file=sys.stderr)
        return 1
    except Preempted as e:
        print(f"scldm: {e}", file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        print("scldm: interrupted", file=sys.stderr)
        return 130
