"""Hyper-parameter search with Optuna: each trial an ordinary hw3 run, bad trials pruned early. The command is
hw3.cli.search.

A space maps recipe keys to distributions: {uniform: [a, b]}, {log_uniform: [a, b]}, {int: [a, b], step: s},
{choice: [v, ...]}, checked up front with the recipe's own rules. Trial n is a run in DIR/trial-NNNN/ (made by
`python -m hw3.cli`, or by --launcher, e.g. a 2-process `accelerate launch`), reporting its monitored validation
metric to the study after every epoch (hw3.engine.trial); the study's pruner may stop it there (`stopped_reason:
pruned`, its best weights kept). The study lives in DIR/study.journal (Optuna's JournalStorage: several worker
processes, or machines sharing the folder, write it safely; SQLite does not take parallel writers), or in any
Optuna storage URL (--storage postgresql://...), which several searches, on several machines, share: each asks
the study for its next trial. The same command again continues the study; a trial its killed search left
running is resumed from its checkpoint. DIR/search.json and search.md hold the results (best trial, every trial,
the parameters' importance) with search_history.png.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

from hw3.config import parse_yaml
from hw3.config.names import did_you_mean
from hw3.dist.peers import Peer
from hw3.engine.recipe import load_recipe
from hw3.engine.trial import make_pruner
from hw3.errors import UserError
from hw3.experiments.launch import last_logged_line, run_logged, slot_environments, train_command
from hw3.reports.search import PLAN, SURPLUS, default_storage, write_search_report
from hw3.runs.layout import SUMMARY
from hw3.runs.lock import lock_is_free
from hw3.runs.metrics import Monitor
from hw3.storage.study import open_storage

KINDS = ("uniform", "log_uniform", "int", "choice")
SAMPLERS, PRUNERS = ("tpe", "random", "grid", "cmaes"), ("none", "median", "asha", "hyperband")


def read_space(args: argparse.Namespace) -> dict[str, dict]:
    """The space of --space and --param together, each entry {KIND: [..]} (+ step for int)."""
    space: dict = {}
    if args.space is not None:
        if not args.space.is_file():
            raise UserError(f"--space: {args.space} not found")
        loaded = parse_yaml(args.space.read_text(), str(args.space)) or {}
        if not isinstance(loaded, dict):
            raise UserError(f"--space: {args.space} must map recipe keys to distributions")
        space.update(loaded)
    for item in args.param:
        key, sep, text = item.partition("=")
        if not sep:
            raise UserError(f"--param '{item}': write KEY={{uniform: [A, B]}} (or log_uniform, int, choice)")
        if key.strip() in space:
            raise UserError(f"--param: '{key.strip()}' is given twice")
        space[key.strip()] = parse_yaml(text, f"--param {key.strip()}")
    if not space:
        raise UserError("give the search space: --space SPACE.yaml or --param KEY=DIST")
    return space


SET_BY_THE_SEARCH = ("output_dir", "early_stop.monitor")  # each trial's own run dir, and --metric


def check_space(space: dict, recipe: str, overrides: Sequence[str]) -> dict:
    """Optuna distributions for the space; every bound and choice checked to load as a recipe (the recipe's own
    rules refuse what they would refuse in a recipe). Raises UserError naming the key."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    given = {item.partition("=")[0].strip() for item in overrides}
    clash = sorted(given & set(SET_BY_THE_SEARCH))
    if clash:
        raise UserError(f"{clash[0]}: the search sets it for every trial (the run dir, --metric); leave it out")
    distributions = {}
    for key, spec in space.items():
        if key in given or key in SET_BY_THE_SEARCH:
            raise UserError(f"{key}: searched and also set ({'as an override' if key in given else 'by the search'})")
        kind = next(iter(spec), None) if isinstance(spec, dict) else None
        if kind not in KINDS or set(spec) - {kind, "step"}:
            hint = did_you_mean(kind, KINDS) if kind else ""
            raise UserError(
                f"{key}: a distribution is {{uniform | log_uniform | int | choice: [...]}}{hint}, got {spec!r}"
            )
        step = spec.get("step", 1)
        if kind != "int" and "step" in spec or not isinstance(step, int) or isinstance(step, bool) or step < 1:
            raise UserError(f"{key}: step is a whole number >= 1, and only for an int range; got {spec!r}")
        values = spec[kind] if isinstance(spec[kind], list) else [spec[kind]]
        if kind == "choice":
            if not values:
                raise UserError(f"{key}: choice of nothing")
            distributions[key] = CategoricalDistribution(values)
        else:
            if len(values) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                raise UserError(f"{key}: {kind} wants [low, high], got {values!r}")
            low, high = values
            if not low < high or (kind == "log_uniform" and low <= 0):
                raise UserError(
                    f"{key}: empty range [{low}, {high}]" + (" (log: low must be > 0)" if low <= 0 < high else "")
                )
            if kind == "int":
                distributions[key] = IntDistribution(int(low), int(high), step=step)
            else:
                distributions[key] = FloatDistribution(float(low), float(high), log=kind == "log_uniform")
        for value in values:
            load_recipe(recipe, [*overrides, f"{key}={value}"])  # one line if the recipe would refuse it
    return distributions


def make_study(args: argparse.Namespace, distributions: dict, epochs: int):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    samplers = {
        "tpe": lambda: optuna.samplers.TPESampler(seed=args.seed),
        "random": lambda: optuna.samplers.RandomSampler(seed=args.seed),
        "grid": lambda: optuna.samplers.GridSampler(grid_space(distributions), seed=args.seed),
        "cmaes": lambda: optuna.samplers.CmaEsSampler(seed=args.seed),
    }
    storage = args.storage or default_storage(args.out)
    try:
        study = optuna.create_study(
            study_name=args.study,
            storage=open_storage(storage),
            direction="maximize" if Monitor(args.metric).maximize else "minimize",
            sampler=samplers[args.sampler](),
            pruner=make_pruner(args.pruner, epochs),
            load_if_exists=True,
        )
    except Exception as e:  # a storage that cannot be reached or opened: one line
        raise UserError(f"--storage {storage}: {type(e).__name__}: {' '.join(str(e).split())[:600]}") from None
    return study, storage


def grid_space(distributions: dict) -> dict:
    grid = {}
    for key, d in distributions.items():
        if hasattr(d, "choices"):
            grid[key] = list(d.choices)
        elif type(d).__name__ == "IntDistribution":
            grid[key] = list(range(d.low, d.high + 1, d.step))
        else:
            raise UserError(f"--sampler grid: {key} is a continuous range; give it as a choice or an int range")
    return grid


class Worker:
    """This search's slots: each takes the next trial (a run this machine's killed search left running, else a new
    one while the study has fewer than --trials), runs it, and tells the study how it ended."""

    def __init__(self, args, study, storage: str, distributions: dict):
        self.args, self.study, self.storage, self.distributions = args, study, storage, distributions
        self.lock, self.out = threading.Lock(), args.out.resolve()
        self.me = f"{socket.gethostname()}:{os.getpid()}:{time.time():.0f}"  # this search process

    def next_trial(self):
        import optuna

        with self.lock:
            for frozen in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
                if self.orphan(frozen.user_attrs):
                    trial = optuna.trial.Trial(self.study, frozen._trial_id)
                    trial.set_user_attr("worker", self.me)  # claimed: resumed from its checkpoint by this slot
                    return trial, True
            if len(self.study.get_trials(deepcopy=False)) >= self.args.trials:
                return None, False
            trial = self.study.ask(self.distributions)
            if trial.number >= self.args.trials:  # another worker asked at the same moment: the storage numbers
                trial.set_user_attr("fail_reason", SURPLUS)  # trials, so exactly --trials get a number below it
                self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
                return None, False
            trial.set_user_attr("run_dir", str(self.out / f"trial-{trial.number:04d}"))
            trial.set_user_attr("host", socket.gethostname())
            trial.set_user_attr("worker", self.me)
            return trial, False

    def orphan(self, attrs: dict) -> bool:
        """A trial a search on this machine started in this DIR and that no live search runs (its search is gone
        and its run-dir lock is free): the same command resumes it from its checkpoint."""
        if attrs.get("host") != socket.gethostname() or Path(attrs.get("run_dir", "/")).parent != self.out:
            return False
        if attrs.get("worker") == self.me:  # one of this search's own slots runs it
            return False
        host, pid, _ = attrs.get("worker", "::").rsplit(":", 2)
        alive = pid.isdigit() and Peer(0, host, int(pid)).alive()
        return not alive and lock_is_free(Path(attrs["run_dir"]))

    def run(self, env: dict) -> None:
        while True:
            trial, resumed = self.next_trial()
            if trial is None:
                return
            started = time.perf_counter()
            code = launch_trial(self.args, trial, self.storage, env)
            said = tell(self.study, trial, code, self.args.metric)
            elapsed = time.perf_counter() - started
            print(f"trial {trial.number}{' (resumed)' if resumed else ''}: {said} ({elapsed:.0f} s)", flush=True)


def launch_trial(args, trial, storage: str, env: dict) -> int:
    """The trial's run, as hw3.sweep launches runs (or through --launcher), its output appended to DIR/logs/."""
    run_dir = Path(trial.user_attrs["run_dir"])
    items = [*args.overrides, *(f"{k}={v}" for k, v in trial.params.items())]
    items += [f"early_stop.monitor={args.metric}", f"output_dir={run_dir}"]
    cmd = train_command(args.recipe, items, args.launcher)
    link = dict(HW3_STUDY_STORAGE=storage, HW3_STUDY_NAME=args.study, HW3_TRIAL_ID=str(trial._trial_id))
    env = {**env, **link, "HW3_STUDY_PRUNER": args.pruner}
    return run_logged(cmd, args.out / "logs" / f"{run_dir.name}.log", env, "search")


def tell(study, trial, code: int, metric: str) -> str:
    """Record how the trial ended: complete or pruned, with the best monitored value its run reached (the one value
    every report shows, hw3.reports.search), or failed with the reason."""
    import optuna

    run_dir = Path(trial.user_attrs["run_dir"])
    summary_file = run_dir / SUMMARY
    summary = json.loads(summary_file.read_text()) if code == 0 and summary_file.is_file() else None
    if summary is None or summary.get(f"best_{metric}") is None:
        reason = last_logged_line(run_dir.parent / "logs" / f"{run_dir.name}.log") or f"exit {code}"
        trial.set_user_attr("fail_reason", reason)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return f"failed (exit {code}): {reason}"
    value = summary[f"best_{metric}"]
    trial.set_user_attr("best_value", value)
    if summary.get("stopped_reason") == "pruned":
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        return f"pruned after {summary['epochs_completed']} epoch(s), best {metric} {value:.4g}"
    study.tell(trial, value)
    return f"complete, best {metric} {value:.4g}"


def check_plan(args: argparse.Namespace, space: dict) -> None:
    """DIR/search_plan.json: the search this DIR holds. The same search again (or a second worker of it) goes
    on; another one (another recipe, space, metric, overrides or study) is refused in one line."""
    plan = dict(
        recipe=args.recipe, space=space, overrides=list(args.overrides), metric=args.metric, study=args.study,
        storage=args.storage, trials=args.trials,
    )  # fmt: skip
    path = args.out / PLAN
    if path.is_file():
        old = json.loads(path.read_text())
        differs = sorted(k for k in plan if k != "trials" and old.get(k) != plan[k])
        if differs:
            raise UserError(
                f"--out: {args.out} holds another search ({', '.join(differs)} differ); use another --out, or the "
                f"command that started it"
            )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "logs").mkdir(exist_ok=True)
    path.write_text(json.dumps(plan, indent=1, default=str))


def search(args: argparse.Namespace) -> str:
    """Run (or continue) the search of `args` (hw3.cli.search's arguments); returns the report's markdown."""
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise UserError("hw3.search needs optuna: pip install -e '.[search]'") from None
    space = read_space(args)
    epochs = load_recipe(args.recipe, list(args.overrides)).train.epochs
    distributions = check_space(space, args.recipe, args.overrides)
    check_plan(args, space)
    study, storage = make_study(args, distributions, epochs)
    worker = Worker(args, study, storage, distributions)
    with ThreadPoolExecutor(max_workers=args.parallel) as pool:  # an error in a slot is raised here
        list(pool.map(worker.run, slot_environments(args.parallel)))
    return write_search_report(args.out, study, args.metric)
