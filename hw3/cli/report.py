"""Compare runs the way the known report did:

    python -m hw3.report RUN_DIR [RUN_DIR ...] [--out report.md]
    python -m hw3.report SWEEP_DIR        (mean ± std per combination, into the sweep dir)
    python -m hw3.report SEARCH_DIR       (the study's trials, into the search dir)

A markdown table, one row per run, with learning curves beside it (hw3.reports.runs); a sweep or search dir is
reported as hw3.sweep / hw3.search report it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from hw3.cli import Parser, program, run_command
from hw3.errors import UserError


def main(argv: Optional[Sequence[str]] = None) -> int:
    def body() -> int:
        from hw3.reports.runs import write_report
        from hw3.reports.search import PLAN as SEARCH_PLAN
        from hw3.reports.search import WRITES, report_search_dir
        from hw3.reports.sweep import PLAN as SWEEP_PLAN
        from hw3.reports.sweep import write_sweep_report

        p = Parser(prog="python -m hw3.report", description=__doc__.split("\n\n")[0])
        p.add_argument("run_dirs", nargs="+", type=Path, help="run dirs, or one sweep or search dir")
        p.add_argument("--out", type=Path, default=None, help="the report (default runs/report.md; a sweep: its dir)")
        args = p.parse_args(argv)
        for plan, kind in ((SEARCH_PLAN, "search"), (SWEEP_PLAN, "sweep")):
            found = [d for d in args.run_dirs if (d / plan).is_file()]
            if found and len(args.run_dirs) > 1:
                raise UserError(f"{found[0]} is a {kind} dir: report it alone")
        folder = args.run_dirs[0]
        if (folder / SEARCH_PLAN).is_file():
            if args.out is not None:
                raise UserError(f"--out: {folder} is a search dir, whose report is written into it")
            print(report_search_dir(folder), end="")
            written = [folder / name for name in WRITES]
        elif (folder / SWEEP_PLAN).is_file():
            table, written = write_sweep_report(folder, args.out)
            print(table, end="")
        else:
            table, written = write_report(args.run_dirs, args.out or Path("runs") / "report.md")
            print(table, end="")
        print("wrote " + ", ".join(map(str, written)))
        return 0

    return run_command(body)


if __name__ == "__main__":
    program(main)
