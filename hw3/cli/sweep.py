"""Compare strategies with statistics: every combination of a grid of recipe values, times N seeds, each one an
ordinary hw3 run, summarized as mean ± std per combination.

    python -m hw3.sweep --recipe RECIPE [--grid KEY=V1,V2[,...] ...] [--strategy 'NAME=K=V K=V' ...] --seeds N
        --out DIR [--parallel K] [--print-commands] [key=value ...]

The same command again continues what is unfinished and skips what is complete (hw3.experiments.sweep);
`--print-commands` prints one shell command per run instead of running them (for a SLURM array, GNU parallel, a
Kubernetes job); `python -m hw3.report DIR` then summarizes whatever has finished.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from hw3.cli import Parser, add_run_set_arguments, at_least_one, program, run_command


def parse_sweep_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = Parser(prog="python -m hw3.sweep", description=__doc__.split("\n\n")[0])
    add_run_set_arguments(p, "the sweep dir")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2", help="values to try for one key")
    p.add_argument("--strategy", action="append", default=[], metavar="'NAME=K=V K=V'", help="a bundle of overrides")
    p.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 for every combination")
    p.add_argument("--print-commands", action="store_true", help="print one command per run instead of running")
    args = p.parse_args(argv)
    at_least_one(seeds=args.seeds, parallel=args.parallel)
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    def body() -> int:
        from hw3.experiments.sweep import sweep
        from hw3.reports.sweep import write_sweep_report

        args = parse_sweep_args(argv)
        failed, commands = sweep(
            args.recipe, args.grid, args.strategy, args.seeds, args.out, args.parallel, args.overrides,
            args.print_commands,
        )  # fmt: skip
        if args.print_commands:
            print("\n".join(commands))
            return 0
        table, _ = write_sweep_report(args.out)
        print(table, end="")
        if failed:
            print(f"{failed} run(s) failed; their logs are in {args.out / 'logs'}", file=sys.stderr)
        return 1 if failed else 0

    return run_command(body)


if __name__ == "__main__":
    program(main)
