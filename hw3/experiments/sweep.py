"""Compare strategies with statistics: every combination of a grid of recipe values, times N seeds, each one an
ordinary hw3 run, summarized as mean ± std per combination (hw3.reports.sweep). The command is hw3.cli.sweep.

Run `<combination>-s<seed>` lives in DIR/<combination>-s<seed>/ and is made by `python -m hw3.cli` (what train.py
runs), so it resumes, evaluates and reports like any run. The same command again continues what is unfinished
and skips what is complete. `--print-commands` prints one shell command per run instead of running them (for a
SLURM array, GNU parallel, a Kubernetes job); `python -m hw3.report DIR` then summarizes whatever has finished.
Each grid value is parsed as YAML like any override; commas inside [...] or {...} do not split values.
"""

from __future__ import annotations

import itertools
import json
import re
import shlex
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

from hw3.engine.recipe import load_recipe
from hw3.errors import RunDirBusy, UserError
from hw3.experiments.launch import last_logged_line, run_logged, slot_environments, train_command
from hw3.reports.sweep import PLAN
from hw3.runs.layout import SUMMARY
from hw3.runs.lock import INHERITED_LOCK, RunDirLock, lock_is_free
from hw3.runs.start import decide_start

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
            load_recipe(recipe, items)  # a grid or override error: one line, before any run
            runs.append(PlannedRun(name, combination, params, seed, items))
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise UserError(f"--grid: two combinations get the same folder name ({names[0]}...); use distinct values")
    return runs


def completed(recipe: str, run: PlannedRun, held: bool = False) -> bool:
    """Would this run say "complete"? (The same decision as `train.py` makes; a changed recipe raises.) A run that
    another launch holds is not complete yet; `held`: this sweep holds its lock itself."""
    cfg = load_recipe(recipe, run.overrides)
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
    return run_logged(train_command(recipe, run.overrides), out / "logs" / f"{run.name}.log", env, "sweep", [held.fd])


def outcome(out: Path, run: PlannedRun, code: int) -> str:
    if code != 0:
        return f"failed (exit {code}): {last_logged_line(out / 'logs' / f'{run.name}.log') or 'no output'}"
    summary = json.loads((out / run.name / SUMMARY).read_text())
    test = f", test acc {summary['test_acc']:.2%}" if summary.get("test_acc") is not None else ""
    return f"done, best val acc {summary['best_val_acc']:.2%}{test}"


def sweep(recipe: str, grid_items, strategy_items, seeds: int, out: Path, parallel: int, overrides, print_only: bool):
    """Plan the sweep into `out` (sweep_plan.json), then run what is unfinished (or only print the commands);
    returns (how many runs failed, the commands when `print_only`)."""
    grid = parse_grid(grid_items, overrides)
    strategies = parse_strategies(strategy_items, grid, overrides)
    runs = plan(recipe, grid, seeds, out, overrides, strategies)
    out.mkdir(parents=True, exist_ok=True)
    record = dict(recipe=recipe, grid=dimensions(grid, strategies), strategies=strategies, seeds=seeds,
                  runs=[asdict(r) for r in runs])  # fmt: skip
    (out / PLAN).write_text(json.dumps(record, indent=1))
    if print_only:
        return 0, [shlex.join(["python", *train_command(recipe, run.overrides)[1:]]) for run in runs]
    return run_all(recipe, runs, out, parallel), []
