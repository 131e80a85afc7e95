"""One launch of a run, top to bottom: decide where to start (fresh or a checkpoint), build, train, test, write
the summary. `train_recipe` is what `train.py` calls."""

from __future__ import annotations

import contextlib
import datetime
import signal
import sys
from dataclasses import replace
from pathlib import Path
from typing import Optional, Sequence

from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import broadcast_object_list, set_seed

from hw3.build import Run, build_run, describe, epoch_starts, make_accelerator, new_wandb_id
from hw3.checkpoint import load_checkpoint
from hw3.config import Config
from hw3.errors import UserError
from hw3.loop import Interrupted, NonFinite, fit
from hw3.optim.schedules import build_schedule
from hw3.rundir import RunDirLock, Start, check_output_dir, decide_start, prepare_run_dir
from hw3.summary import processes_in_sync, summary_of, test_best
from hw3.tracking import device_name


def train_recipe(cfg: Config, recipe: Optional[str], command: Sequence[str] = ()) -> int:
    """Train the recipe; returns the exit code (0 done, 1 stopped on non-finite steps, 128+N on signal N).
    `command` is the command line as typed, for command.txt and summary.json."""
    stem = Path(recipe).stem if recipe else "default"
    run_dir = Path(cfg.output_dir or (Path("runs") / "smoke" / stem if cfg.smoke else Path("runs") / stem))
    check_output_dir(run_dir)
    accelerator = make_accelerator(cfg, run_dir)
    lock, started = None, False
    try:
        lock, start = decide_on_main(accelerator, cfg, run_dir)
        if start.done:
            accelerator.print(start.done)
            return 0
        set_seed(cfg.seed)
        run = build_run(cfg, accelerator, run_dir)
        started = True
        start_run(run, start, list(command))
        with signals_to(run):
            return train_and_test(run)
    except Interrupted as e:
        return 128 + e.args[0]
    finally:
        if lock is not None:
            lock.release(keep=started)
        accelerator.end_training()
        # accelerate keeps its state in process-wide singletons; clear them so one process can run another
        # recipe afterwards (tests, notebooks) with different settings.
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


def decide_on_main(accelerator: Accelerator, cfg: Config, run_dir: Path) -> tuple[Optional[RunDirLock], Start]:
    """The main process locks the run dir and decides where to start; every process gets the decision (or the
    same error). Nothing else is written yet: a recipe that fails to build leaves no trace."""
    lock, answer = None, [None, None]  # Start, error message
    if accelerator.is_main_process:
        try:
            lock = RunDirLock(run_dir)
            answer = [decide_start(cfg, run_dir), None]
        except UserError as e:
            answer = [None, str(e)]
            if lock is not None:
                lock.release(keep=False)
                lock = None
    if accelerator.num_processes > 1:
        broadcast_object_list(answer)
    if answer[1]:
        raise UserError(answer[1])
    return lock, answer[0]


def start_run(run: Run, start: Start, command: list[str]) -> None:
    """Create (or empty) the run dir, restore the checkpoint if there is one, start the trackers."""
    accelerator = run.accelerator
    if accelerator.is_main_process:
        prepare_run_dir(run.run_dir, start.wipe)
    accelerator.wait_for_everyone()
    if start.resume_from is not None:
        load_checkpoint(accelerator, start.resume_from, run.components(), run.ema)
        if run.state.stopped == "max_steps":  # a limit of that command, not of the run
            run.state.stopped = None
        accelerator.print(f"resuming from {start.resume_from} (epoch {run.state.epoch}, batch {run.state.batch})")
        if start.old_epochs is not None:
            accelerator.print(epochs_notice(run, start.old_epochs))
    run.state.wandb_id = run.state.wandb_id or new_wandb_id(run.cfg)
    run.state.launches.append(launch_record(accelerator, command))
    run.state.epochs = run.cfg.train.epochs
    run.tracker.start(run.cfg, run.state.history, run.state.wandb_id, start.resume_from, command)
    accelerator.print(describe(run))


def epochs_notice(run: Run, old_epochs: int) -> str:
    """What train.extend_epochs does to the lr where the run resumes."""
    cfg, step = run.cfg, run.state.step
    old = build_schedule(cfg.sched, cfg.optim.lr, epoch_starts(replace(cfg.train, epochs=old_epochs), run.data))
    old.load_state_dict(run.schedule.state_dict())
    before, after = cfg.optim.lr * old.factor(step), cfg.optim.lr * run.schedule.factor(step)
    return (
        f"train.epochs {old_epochs} -> {cfg.train.epochs} (train.extend_epochs): the {cfg.sched.name} schedule is "
        f"laid out again over {cfg.train.epochs} epochs; the lr where the run resumes (step {step}) goes from "
        f"{before:.3g} to {after:.3g}"
    )


def launch_record(accelerator: Accelerator, command: list[str]) -> dict:
    """Who ran this launch, on what: kept for every launch of the run (summary.json's `launches`)."""
    return dict(
        started=datetime.datetime.now().isoformat(timespec="seconds"),
        argv=command,
        processes=accelerator.num_processes,
        device=device_name(accelerator),
        mixed_precision=accelerator.mixed_precision,
    )


@contextlib.contextmanager
def signals_to(run: Run):
    """SIGTERM/SIGINT set a flag; the loop saves a checkpoint at the next step boundary and exits."""

    def handler(signum, frame):
        run.signal = signum

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def train_and_test(run: Run) -> int:
    code = 0
    try:
        fit(run)
    except NonFinite as e:
        run.state.stopped = "non_finite"
        run.state.skipped_steps += int(run.sums.skipped.item())  # the unfinished epoch's
        if run.accelerator.is_main_process:  # every process stops; one says why
            print(f"error: {e}", file=sys.stderr)
        code = 1
    accelerator = run.accelerator
    extra = {"processes_in_sync": processes_in_sync(accelerator, run.net)} if accelerator.num_processes > 1 else {}
    if (run.state.stopped == "max_steps" and not run.cfg.smoke) or not run.state.history:
        run.tracker.summary({**summary_of(run, {}), **extra})
        return code
    test = test_best(run)
    run.tracker.summary({**summary_of(run, test), **extra})
    if test:
        accelerator.print(
            f"test: acc {test['test_acc']:.2%}, loss {test['test_loss']:.4f} "
            f"(best weights, epoch {run.best.epoch}, {run.best.source})"
        )
    return code
