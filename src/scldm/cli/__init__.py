"""The `scldm` command: a table of small commands (`app.COMMANDS`), each of which parses its
options and calls one library function.

Modules: `app` (the table, the parser and `main`), `options` (the option groups several commands
share: run, sampling, data, prepare), `prepare`, `train` (synthvox-oracle, pretrain, prior, train,
train-baseline, ablate), `generate` (generate, evaluate) and `compare`. Nothing heavy is imported
until a command runs, so `scldm --help` and `scldm COMMAND --help` answer at once.
"""

from scldm.cli.app import COMMANDS, build_parser, main

__all__ = ["COMMANDS", "build_parser", "main"]
