"""One launch of a run, top to bottom: decide where to start (fresh or a checkpoint), build, train, test, write
the summary. `train_recipe` is what `train.py` calls.

Whatever stops a launch says so in one line: a signal (what was kept and how to go on, depending on the moment it
came), a lost peer process (which one, the newest checkpoint), a failed write (which file, the free space)."""

from __future__ import annotations

import datetime
import re
import sys
from dataclasses import replace
from pathlib import Path
from typing import Optional, Sequence

from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import broadcast_object_list, set_seed

from hw3.build import Run, build_run, describe, epoch_layout, make_accelerator, new_wandb_id
from hw3.checkpoint import list_checkpoints, load_checkpoint
from hw3.config import Config
from hw3.distributed import Peers, is_collective_failure
from hw3.errors import LaunchError, PeerLost, UserError
from hw3.faults import crash_point
from hw3.loop import Interrupted, NonFinite, fit
from hw3.optim.schedules import build_schedule
from hw3.rundir import RunDirLock, Start, check_output_dir, decide_start, prepare_run_dir
from hw3.signals import SIGNALS, Stopped, name
from hw3.summary import processes_in_sync, summary_of, test_best
from hw3.tracking import device_name


class Launch:
    """Where this launch is (start-up, training, test), so that whatever stops it says the right thing."""

    def __init__(self, accelerator: Accelerator, run_dir: Path):
        self.accelerator, self.run_dir, self.phase = accelerator, run_dir, "start-up"
        self.peers = Peers(accelerator)

    def newest(self) -> str:
        found = list_checkpoints(self.run_dir) if self.run_dir.is_dir() else []
        return str(found[-1]) if found else ""

    def stopped(self, signum: int, run: Optional[Run]) -> str:
        signal_name, newest = name(signum), self.newest()
        if self.phase == "training" and run is not None:
            state = run.state
            where = f"at epoch {state.epoch} batch {state.batch}" if state.batch else f"after epoch {state.epoch - 1}"
            return f"stopped by {signal_name} {where}; checkpoint {newest} saved; rerun the same command to continue"
        if self.phase == "test":
            return (
                f"stopped by {signal_name} during the final test; training is complete (checkpoint {newest}); rerun "
                f"the same command to test the best weights and write the summary"
            )
        if newest:
            return f"stopped by {signal_name} during start-up; rerun the same command to continue from {newest}"
        return f"stopped by {signal_name} during start-up, before any checkpoint; rerun the same command to start"

    def peer_lost(self, error: BaseException) -> PeerLost:
        gone = self.peers.lost()
        reason = re.sub(r"\[[^\]]*\.(?:cc|cpp|h):\d+\] ", "", " ".join(str(error).split())).split(". ")[0][:160]
        newest = self.newest() or "none yet (the run starts over)"
        lost = PeerLost(
            f"{self.peers.describe(gone)} during {self.phase} ({type(error).__name__}: {reason}); the newest "
            f"checkpoint is {newest}; rerun the same command to resume"
        )
        lost.quiet = not self.peers.reporter(gone)
        return lost

    def say(self, line: str) -> None:
        if self.accelerator.is_main_process:
            print(line, file=sys.stderr, flush=True)


def train_recipe(cfg: Config, recipe: Optional[str], command: Sequence[str] = ()) -> int:
    """Train the recipe; returns the exit code (hw3.errors: 0 done, 1 stopped on non-finite steps, 128+N on signal
    N; LaunchErrors raise). `command` is the command line as typed, for command.txt and summary.json."""
    stem = Path(recipe).stem if recipe else "default"
    run_dir = Path(cfg.output_dir or (Path("runs") / "smoke" / stem if cfg.smoke else Path("runs") / stem))
    check_output_dir(run_dir)
    accelerator = make_accelerator(cfg, run_dir)
    lock, started, run = None, False, None
    launch = Launch(accelerator, run_dir)
    try:
        lock, start = decide_on_main(accelerator, cfg, run_dir)
        if start.done:
            accelerator.print(start.done)
            return 0
        crash_point("start_up")
        set_seed(cfg.seed)
        run = build_run(cfg, accelerator, run_dir)
        start_run(run, start, list(command))
        started = True  # the run dir now holds this launch's records: kept whatever happens next
        return train_and_test(run, launch)
    except (Interrupted, Stopped) as e:
        launch.say(launch.stopped(e.args[0], run))
        return 128 + e.args[0]
    except Exception as e:
        if accelerator.num_processes > 1 and not isinstance(e, LaunchError) and is_collective_failure(e):
            raise launch.peer_lost(e) from None
        raise
    finally:
        if lock is not None:
            lock.release(keep=started)
        if run is not None:
            run.compile_guard.close()
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
            answer = [None, (type(e), str(e))]
            if lock is not None:
                lock.release(keep=False)
                lock = None
    if accelerator.num_processes > 1:
        broadcast_object_list(answer)
    if answer[1]:
        error = answer[1][0](answer[1][1])
        error.quiet = not accelerator.is_main_process  # every process has it; the main one says it
        raise error
    return lock, answer[0]


def start_run(run: Run, start: Start, command: list[str]) -> None:
    """Create (or empty) the run dir, restore the checkpoint if there is one, start the trackers."""
    accelerator = run.accelerator
    if accelerator.is_main_process:
        for warning in prepare_run_dir(run.run_dir, start):
            print(warning, file=sys.stderr, flush=True)
    accelerator.wait_for_everyone()
    if start.resume_from is not None:
        load_checkpoint(accelerator, start.resume_from, run.components(), run.own(), run.tensors())
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
    old = build_schedule(cfg.sched, cfg.optim.lr, epoch_layout(replace(cfg.train, epochs=old_epochs), run.data))
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


def train_and_test(run: Run, launch: Launch) -> int:
    code = 0
    launch.phase = "training"
    try:
        with SIGNALS.deferred():  # a signal is acted on at the next step boundary, after a checkpoint
            fit(run)
    except NonFinite as e:
        run.state.stopped = "non_finite"
        run.state.skipped_steps += int(run.sums.skipped.item())  # the unfinished epoch's
        if run.accelerator.is_main_process:  # every process stops; one says why
            print(f"error: {e}", file=sys.stderr)
        code = 1
    accelerator = run.accelerator
    extra = {"processes_in_sync": processes_in_sync(accelerator, run.net)} if accelerator.num_processes > 1 else {}
    test = {}
    if not ((run.state.stopped == "max_steps" and not run.cfg.smoke) or not run.state.history):
        launch.phase = "test"  # a signal here stops the test at once; a rerun tests again
        test = test_best(run)
    with SIGNALS.deferred():  # the summary is the last write: finish it, then say the run is complete
        crash_point("summary")
        run.tracker.summary({**summary_of(run, test), **extra})
    if test:
        accelerator.print(
            f"test: acc {test['test_acc']:.2%}, loss {test['test_loss']:.4f} "
            f"(best weights, epoch {run.best.epoch}, {run.best.source})"
        )
    if SIGNALS.pending:
        launch.say(f"{name(SIGNALS.pending)} arrived as the summary was written; the run is complete")
    return code
