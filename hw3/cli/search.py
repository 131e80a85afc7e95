"""Hyper-parameter search with Optuna: each trial an ordinary hw3 run, bad trials pruned early.

    python -m hw3.search --recipe R (--space SPACE.yaml | --param 'KEY={DIST: [A, B]}' ...) --trials N --out DIR
        [--metric val_acc|val_loss] [--sampler tpe|random|grid|cmaes] [--pruner none|median|asha|hyperband]
        [--storage URL] [--study NAME] [--parallel K] [--seed S] [--launcher 'accelerate launch ...'] [key=value ...]

The same command again continues the study (hw3.experiments.search); DIR/search.json and search.md hold the
results (hw3.reports.search).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence

from hw3.cli import Parser, add_run_set_arguments, at_least_one, program, run_command


def parse_search_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    from hw3.experiments.search import PRUNERS, SAMPLERS
    from hw3.runs.metrics import MONITORS

    p = Parser(prog="python -m hw3.search", description=__doc__.split("\n\n")[0])
    add_run_set_arguments(p, "the search dir")
    p.add_argument("--space", type=Path, help="YAML: recipe key -> distribution")
    p.add_argument("--param", action="append", default=[], metavar="KEY=DIST", help="one more key of the space")
    p.add_argument("--trials", type=int, required=True, help="trials in the study, all workers together")
    p.add_argument("--metric", default="val_acc", choices=MONITORS)
    p.add_argument("--sampler", default="tpe", choices=SAMPLERS)
    p.add_argument("--pruner", default="asha", choices=PRUNERS)
    p.add_argument("--storage", help="an Optuna storage URL; default: DIR/study.journal")
    p.add_argument("--study", default="hw3", help="the study's name in the storage")
    p.add_argument("--seed", type=int, default=0, help="the sampler's seed")
    p.add_argument("--launcher", default="", help="a command to start each trial with, e.g. 'accelerate launch ...'")
    args = p.parse_args(argv)
    at_least_one(trials=args.trials, parallel=args.parallel)
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    def body() -> int:
        from hw3.experiments.search import search

        print(search(parse_search_args(argv)), end="")
        return 0

    return run_command(body)


if __name__ == "__main__":
    program(main)
