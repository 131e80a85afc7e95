"""Compare strategies with statistics: every combination of a grid of recipe values, times N seeds, each one an
ordinary hw3 run, summarized as mean ± std per combination.

    python -m hw3.sweep --recipe RECIPE [--grid KEY=V1,V2[,...] ...] [--strategy 'NAME=K=V K=V' ...] --seeds N
        --out DIR [--parallel K] [--print-commands] [key=value ...]

Run `<combination>-s<seed>` lives in DIR/<combination>-s<seed>/ and is made by `python -m hw3.cli` (what train.py
runs), so it resumes, evaluates and reports like any run. The same command again continues what is unfinished
and skips what is complete. `--print-commands` prints one shell command per run instead of running them (for a
SLURM array, GNU parallel, a Kubernetes job); `python -m hw3.report DIR` then summarizes whatever has finished.
Each grid value is parsed as YAML like any override; commas inside [...] or {...} do not split values.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

from hw3.cli import Parser, one_line
from hw3.errors import RunDirBusy, UserError
from hw3.rundir import INHERITED_LOCK, RunDirLock

PLAN_FILE = "sweep_plan.json"
SET_BY_THE_SWEEP = ("seed", "output_dir")
POLL_S = 2.0  # how often a sweep waiting for runs held elsewhere looks again


@dataclass
class PlannedRun:
    name: str  # its folder in the sweep dir: "<combination>-s<seed>"
    combination: str  # the readable name of its grid values
    params: dict  # grid key -> value, as given on the command line
    seed: int
    overrides: list  # every key=value it is launched with


def split_values(text: str) -> list[str]:
    """ "a,b,[1, 2],{x: 1, y: 2}" -> ["a", "b", "[1, 2]", "{x: 1, y: 2}"]: commas at the top level only."""
    values, depth, current, quote = [], 0, "", None
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            values.append(current.strip())
            current = ""
            continue
        current += ch
    values.append(current.strip())
    return values


def parse_grid(items: Sequence[str], overrides: Sequence[str]) -> dict[str, list[str]]:
    grid: dict[str, list[str]] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        values = split_values(text) if sep else []
        if not key or not sep or not all(values):
            raise UserError(f"--grid '{item}': write KEY=V1,V2[,...], e.g. optim.lr=0.01,0.1")
        if key in grid:
            raise UserError(f"--grid: '{key}' is given twice")
        grid[key] = values
    for item in overrides:
        key = item.partition("=")[0].strip()
        if key in grid:
            raise UserError(f"'{key}' is given twice: in --grid and as an override ({item})")
    for key in [*grid, *(item.partition("=")[0].strip() for item in overrides)]:
        if key in SET_BY_THE_SWEEP:
            raise UserError(f"'{key}' is set by the sweep (--seeds, --out); leave it out of --grid and the overrides")
    keys = [item.partition("=")[0].strip() for item in overrides]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise UserError(f"override '{twice[0]}' is given twice")
    return grid


def parse_strategies(items: Sequence[str], grid: dict, overrides: Sequence[str]) -> dict[str, list[str]]:
    """--strategy 'NAME=KEY=V KEY=V ...' -> {NAME: [KEY=V, ...]}: named bundles of overrides compared as one
    more grid dimension (SGD against SAM at its budget, say), each checked like any override."""
    strategies: dict[str, list[str]] = {}
    taken = {*grid, *(item.partition("=")[0].strip() for item in overrides), *SET_BY_THE_SWEEP}
    for item in items:
        name, sep, text = item.partition("=")
        settings = shlex.split(text) if sep else []
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.+_-]*", name.strip()) or not settings:
            raise UserError(
                f"--strategy '{item}': write NAME=KEY=V [KEY=V ...], e.g. 'sam=optim.name=sam optim.rho=0.1'"
            )
        if name in strategies:
            raise UserError(f"--strategy: '{name}' is given twice")
        for setting in settings:
            key = setting.partition("=")[0].strip()
            if "=" not in setting or key in taken:
                raise UserError(f"--strategy {name}: '{setting}' is not KEY=V, or sets a key given elsewhere")
        strategies[name] = settings
    return strategies


def combination_name(params: dict) -> str:
    """optim.name=sam, optim.lr=0.1 -> "optim.name-sam_optim.lr-0.1" (safe as a folder name); a strategy goes
    by its name alone."""
    parts = [
        value if key == "strategy" else f"{key}-{re.sub(r'[^A-Za-z0-9.+-]+', '_', value).strip('_') or 'null'}"
        for key, value in params.items()
    ]
    return "_".join(parts) or "recipe"


def dimensions(grid: dict, strategies: dict) -> dict[str, list]:
    """What a sweep varies, as its table's columns: the strategy (when there are strategies), then the grid's keys."""
    return {"strategy": list(strategies), **grid} if strategies else grid


def plan(
    recipe: str, grid: dict, seeds: int, out: Path, overrides: Sequence[str], strategies: Optional[dict] = None
) -> list[PlannedRun]:
    """Every run of the sweep (strategies x grid x seeds), each checked to load as a recipe before anything starts."""
    from hw3.config import load_config

    strategies = strategies or {}
    dims = dimensions(grid, strategies)
    runs = []
    for values in itertools.product(*dims.values()):
        params = dict(zip(dims, values, strict=True))
        combination = combination_name(params)
        settings = [
            *strategies.get(params.get("strategy"), []),
            *(f"{k}={v}" for k, v in params.items() if k != "strategy"),
        ]
        for seed in range(seeds):
            name = f"{combination}-s{seed}"
            items = [*overrides, *settings, f"seed={seed}", f"output_dir={out / name}"]
            load_config(recipe, items)  # a grid or override error: one line, before any run
            runs.append(PlannedRun(name, combination, params, seed, items))
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise UserError(f"--grid: two combinations get the same folder name ({names[0]}...); use distinct values")
    return runs


def command(recipe: str, run: PlannedRun) -> list[str]:
    return [sys.executable, "-m", "hw3.cli", "--recipe", recipe, *run.overrides]


def completed(recipe: str, run: PlannedRun, held: bool = False) -> bool:
    """Would this run say "complete"? (The same decision as `train.py` makes; a changed recipe raises.) A run that
    another launch holds is not complete yet; `held`: this sweep holds its lock itself."""
    from hw3.config import load_config
    from hw3.rundir import decide_start, lock_is_free

    cfg = load_config(recipe, run.overrides)
    run_dir = Path(cfg.output_dir)
    if not run_dir.is_dir() or not (held or lock_is_free(run_dir)):
        return False
    return decide_start(cfg, run_dir).done is not None


class Claims:
    """The runs still to do, handed out one at a time to this sweep's slots. A slot claims a run by taking its
    run-dir lock (the lock every launch takes) and hands the locked descriptor to the run it starts, so two sweeps
    on one DIR never train one run twice. A run whose lock another launch holds (another sweep, a cluster job)
    is running elsewhere: neither launched nor failed; when only such runs are left, the slots wait for them and
    take over any that stops unfinished."""

    def __init__(self, recipe: str, runs: list[PlannedRun], out: Path):
        self.recipe, self.pending, self.out, self.lock = recipe, list(runs), out, threading.Lock()
        self.failed: list[str] = []
        self.waiting_said = False

    def next(self) -> Optional[tuple[PlannedRun, RunDirLock]]:
        while True:
            with self.lock:
                for run in list(self.pending):
                    try:
                        held = RunDirLock(self.out / run.name)
                    except RunDirBusy:
                        continue  # running elsewhere
                    self.pending.remove(run)
                    if not completed(self.recipe, run, held=True):
                        return run, held
                    held.release()
                if not self.pending:
                    return None
                if not self.waiting_said:
                    self.waiting_said = True
                    names = ", ".join(r.name for r in self.pending)
                    print(f"waiting for {len(self.pending)} run(s) running in another launch: {names}", flush=True)
            time.sleep(POLL_S)

    def finished(self, run: PlannedRun, code: int) -> None:
        if code != 0:
            with self.lock:
                self.failed.append(run.name)


def run_all(recipe: str, runs: list[PlannedRun], out: Path, parallel: int) -> int:
    """Launch the runs that are not complete, `parallel` at a time; returns how many failed."""
    todo = [run for run in runs if not completed(recipe, run)]  # a run dir with another recipe stops it here
    print(f"{len(runs)} runs: {len(runs) - len(todo)} complete, {len(todo)} to run, {parallel} at a time", flush=True)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    claims = Claims(recipe, todo, out)

    def slot(env: dict) -> None:
        while (claimed := claims.next()) is not None:
            run, held = claimed
            started = time.perf_counter()
            try:
                code = launch(recipe, run, out, env, held)
            finally:
                held.release()
            claims.finished(run, code)
            print(f"{run.name}: {outcome(out, run, code)} ({time.perf_counter() - started:.0f} s)", flush=True)

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        list(pool.map(slot, slot_environments(parallel)))
    return len(claims.failed)


def launch(recipe: str, run: PlannedRun, out: Path, env: dict, held: RunDirLock) -> int:
    """One run as `python -m hw3.cli`, handed the run-dir lock this sweep holds for it."""
    env = {**env, INHERITED_LOCK: str(held.fd)}
    return run_logged(command(recipe, run), out / "logs" / f"{run.name}.log", env, "sweep", [held.fd])


def run_logged(cmd: list[str], log_path: Path, env: dict, who: str, pass_fds: Sequence[int] = ()) -> int:
    """Run `cmd`, its output appended to `log_path` under a header for this launch (hw3.sweep's and hw3.search's
    runs); returns its exit status."""
    with open(log_path, "a") as log:
        log.write(f"\n# {datetime.datetime.now().isoformat(timespec='seconds')} {who} pid {os.getpid()}: ")
        log.write(shlex.join(cmd) + "\n")
        log.flush()
        return subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, pass_fds=pass_fds).returncode


def last_logged_line(log_path: Path) -> Optional[str]:
    """The last line the newest launch in `log_path` printed (its error, when it failed)."""
    text = log_path.read_text(errors="replace")
    lines = [line for line in text.split("\n# ")[-1].splitlines()[1:] if line.strip()]  # this launch's part
    return lines[-1] if lines else None


def outcome(out: Path, run: PlannedRun, code: int) -> str:
    if code != 0:
        return f"failed (exit {code}): {last_logged_line(out / 'logs' / f'{run.name}.log') or 'no output'}"
    summary = json.loads((out / run.name / "summary.json").read_text())
    test = f", test acc {summary['test_acc']:.2%}" if summary.get("test_acc") is not None else ""
    return f"done, best val acc {summary['best_val_acc']:.2%}{test}"


def slot_environments(parallel: int) -> list[dict]:
    """One environment per concurrent run: its own GPU when there are GPUs, a share of the CPU threads otherwise."""
    import torch

    base = dict(os.environ)
    gpus = torch.cuda.device_count()
    if gpus:
        if parallel > gpus:
            raise UserError(f"--parallel {parallel}: one run per GPU, and this machine has {gpus}")
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", ",".join(map(str, range(gpus)))).split(",")
        return [{**base, "CUDA_VISIBLE_DEVICES": visible[i]} for i in range(parallel)]
    threads = str(max(1, (os.cpu_count() or 1) // parallel))
    return [{**base, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads} for _ in range(parallel)]


def parse_sweep_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = Parser(prog="python -m hw3.sweep", description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", required=True, help="YAML recipe (see recipes/)")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2", help="values to try for one key")
    p.add_argument(
        "--strategy", action="append", default=[], metavar="'NAME=K=V K=V'", help="a named bundle of overrides"
    )
    p.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 for every combination")
    p.add_argument("--out", type=Path, required=True, help="the sweep dir")
    p.add_argument("--parallel", type=int, default=1, help="runs at a time on this machine")
    p.add_argument("--print-commands", action="store_true", help="print one command per run instead of running")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="applied to every run")
    args = p.parse_args(argv)
    if args.seeds < 1 or args.parallel < 1:
        raise UserError("--seeds and --parallel: at least 1")
    return args


def sweep_main(argv: Optional[Sequence[str]] = None) -> int:
    from hw3.sweep_report import write_sweep_report

    try:
        args = parse_sweep_args(argv)
        grid = parse_grid(args.grid, args.overrides)
        strategies = parse_strategies(args.strategy, grid, args.overrides)
        runs = plan(args.recipe, grid, args.seeds, args.out, args.overrides, strategies)
        args.out.mkdir(parents=True, exist_ok=True)
        plan_record = dict(
            recipe=args.recipe,
            grid=dimensions(grid, strategies),
            strategies=strategies,
            seeds=args.seeds,
            runs=[asdict(r) for r in runs],
        )
        (args.out / PLAN_FILE).write_text(json.dumps(plan_record, indent=1))
        if args.print_commands:
            print("\n".join(shlex.join(["python", *command(args.recipe, run)[1:]]) for run in runs))
            return 0
        failed = run_all(args.recipe, runs, args.out, args.parallel)
        table, _ = write_sweep_report(args.out)
    except UserError as e:
        print(f"error: {one_line(str(e))}", file=sys.stderr)
        return 2
    print(table, end="")
    if failed:
        print(f"{failed} run(s) failed; their logs are in {args.out / 'logs'}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(sweep_main())
