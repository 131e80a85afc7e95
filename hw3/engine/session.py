"""One launch of a run, top to bottom: decide where to start (fresh, a checkpoint, nothing to do), build, train,
test, write the summary. `train_recipe` is what the train command (hw3.cli.train) calls.

Signals are recorded for the whole launch and acted on at step boundaries (hw3.engine.boundary), except while
nothing is in flight (start-up, the final test), where they stop it at once. Whatever ends a launch, `Launch`
says it in one line and gives the exit code: a signal (what was kept, how to go on), train.max_steps, a lost peer
(which one, the newest checkpoint; told apart from torchrun's SIGTERM by hw3.dist.peers), a failed write.
"""

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

from hw3.config import Config
from hw3.dist.faults import crash_point
from hw3.dist.launcher import LAUNCHER
from hw3.dist.peers import Peers, raised_by_collective
from hw3.dist.signals import SIGNALS, Stopped, name
from hw3.engine.boundary import Interrupted, MaxStepsReached, NonFinite
from hw3.engine.build import Run, batch_size_for, build_run, describe, epoch_layout, make_accelerator, new_wandb_id
from hw3.engine.loop import fit
from hw3.engine.summary import processes_in_sync, summary_of, test_best
from hw3.engine.tracking import device_name
from hw3.errors import LaunchError, PeerLost
from hw3.optim import set_initial_lr
from hw3.optim.schedules import build_schedule
from hw3.runs.checkpoints import list_checkpoints, load_checkpoint
from hw3.runs.layout import default_run_dir
from hw3.runs.lock import RunDirLock
from hw3.runs.start import Start, check_output_dir, decide_start, finish_interrupted_writes, prepare_run_dir


class Launch:
    """Where this launch is (start-up, training, test), so that whatever ends it says the right thing."""

    def __init__(self, accelerator: Accelerator, run_dir: Path):
        self.accelerator, self.run_dir, self.phase = accelerator, run_dir, "start-up"
        self.peers: Optional[Peers] = None  # gathered first thing (a collective)
        self.run: Optional[Run] = None
        self.ending = "an error"  # how it ended, for command.txt
        self.broken = False  # a peer is gone: the process group cannot be torn down
        self.said_complete = False

    def newest(self) -> str:
        found = list_checkpoints(self.run_dir) if self.run_dir.is_dir() else []
        return str(found[-1]) if found else ""

    def lost(self, wait_s: float) -> list:
        return self.peers.lost(wait_s) if self.peers is not None and self.accelerator.num_processes > 1 else []

    def signalled(self, signum: int) -> int:
        """A signal stopped the launch: its line and 128 + N, unless a peer died first and this is torchrun's
        SIGTERM to the survivors (then PeerLost)."""
        launcher_gone = LAUNCHER.gone()  # then the store went with it: no peer can announce its exit
        if not launcher_gone and self.lost(wait_s=0.5):
            raise self.peer_lost(None)
        signal_name, newest, run = name(signum), self.newest(), self.run
        gone = " (its launcher is gone)" if launcher_gone else ""
        if self.phase == "training" and run is not None:
            state = run.state
            where = f"at epoch {state.epoch} batch {state.batch}" if state.batch else f"after epoch {state.epoch - 1}"
            self.say(f"stopped by {signal_name}{gone} {where}; checkpoint {newest} saved; rerun the same command "
                     f"to continue")  # fmt: skip
        elif self.phase == "test":
            self.say(
                f"stopped by {signal_name}{gone} during the final test; training is complete (checkpoint {newest}); "
                f"rerun the same command to test the best weights and write the summary"
            )
        elif newest:
            self.say(
                f"stopped by {signal_name}{gone} during start-up; rerun the same command to continue from {newest}"
            )
        else:
            self.say(f"stopped by {signal_name}{gone} during start-up, before any checkpoint; rerun the same command "
                     f"to start")  # fmt: skip
        self.ending = f"stopped by {signal_name} during {self.phase}; exit {128 + signum}"
        return 128 + signum

    def peer_lost(self, error: Optional[BaseException]) -> PeerLost:
        gone = self.lost(wait_s=3.0)
        newest = self.newest() or "none yet (the run starts over)"
        what = self.peers.describe(gone) if self.peers else "a collective between the processes failed"
        cause = ""
        if error is not None:
            reason = re.sub(r"\[[^\]]*\.(?:cc|cpp|h):\d+\] ", "", " ".join(str(error).split())).split(". ")[0][:160]
            cause = f" ({type(error).__name__}: {reason})"
        lost = PeerLost(
            f"{what} during {self.phase}{cause}; the newest checkpoint is {newest}; rerun the same command to resume"
        )
        lost.quiet = self.peers is not None and not self.peers.reporter(gone)
        self.ending, self.broken = f"{what}; exit {lost.exit_code}", True
        return lost

    def say(self, line: str) -> None:
        if self.accelerator.is_main_process:
            print(line, file=sys.stderr, flush=True)


def train_recipe(cfg: Config, recipe: Optional[str], command: Sequence[str] = ()) -> int:
    """Train the recipe; returns the exit code (hw3.errors: 0 done, 1 stopped on non-finite steps, 128+N on signal
    N; LaunchErrors raise). `command` is the command line as typed, for command.txt and summary.json."""
    run_dir = Path(cfg.output_dir) if cfg.output_dir else default_run_dir(recipe, cfg.smoke)
    with SIGNALS.deferred():
        return launch(cfg, run_dir, list(command))


def launch(cfg: Config, run_dir: Path, command: list[str]) -> int:
    check_output_dir(run_dir)
    accelerator = make_accelerator(cfg, run_dir)
    launch, lock, started, code = Launch(accelerator, run_dir), None, False, 1
    try:
        with SIGNALS.immediate():  # nothing is in flight yet: a signal stops the launch at once
            launch.peers = Peers(accelerator)
            lock, start = decide_on_main(accelerator, cfg, run_dir)
            if start.done:
                accelerator.print(start.done)
                launch.ending, code = "nothing to do; exit 0", 0
                return code
            accelerator.print(start.said(run_dir))  # before the data and the model zoo are loaded
            crash_point("start_up")
            set_seed(cfg.seed)
            launch.run = build_run(cfg, accelerator, run_dir)
            start_run(launch.run, start, command)
        started = True  # the run dir now holds this launch's records: kept whatever happens next
        code = train_and_test(launch.run, launch)
        return code
    except (Interrupted, Stopped) as e:
        code = launch.signalled(e.args[0])
        return code
    except MaxStepsReached:
        state = launch.run.state
        accelerator.print(
            f"stopped at train.max_steps={cfg.train.max_steps} (epoch {state.epoch}, batch {state.batch}); "
            f"checkpoint {launch.newest()} saved; rerun without train.max_steps, or with a larger one, to continue"
        )
        launch.ending, code = f"stopped at train.max_steps={cfg.train.max_steps}; exit 0", 0
        return code
    except LaunchError as e:
        code, launch.ending = e.exit_code, f"error: {e}; exit {e.exit_code}"
        raise
    except Exception as e:
        if accelerator.num_processes > 1 and (raised_by_collective(e) or launch.lost(wait_s=0.0)):
            error = launch.peer_lost(e)
            code = error.exit_code
            raise error from None
        raise
    finally:
        end(launch, lock, started, code)


def end(launch: Launch, lock: Optional[RunDirLock], started: bool, code: int) -> None:
    """Release what the launch holds; record how it ended; tell the peers it leaves on purpose."""
    run, accelerator = launch.run, launch.accelerator
    if started and run is not None:
        run.tracker.ended(launch.ending)
    if lock is not None:
        lock.release(keep=started)
    if run is not None:
        run.compile_guard.close()
    if launch.peers is not None:
        launch.peers.announce_exit(code)
    if not launch.broken:  # a process group with a peer gone cannot be torn down (gloo aborts)
        accelerator.end_training()
    # accelerate keeps its state in process-wide singletons; clear them so one process can run another
    # recipe afterwards (tests, notebooks) with different settings.
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    crash_point("shutdown")
    if launch.ending.startswith("complete") and SIGNALS.pending and not launch.said_complete:
        launch.say(f"{name(SIGNALS.pending)} arrived as the launch ended; the run is complete")


def decide_on_main(accelerator: Accelerator, cfg: Config, run_dir: Path) -> tuple[Optional[RunDirLock], Start]:
    """The main process locks the run dir and decides where to start; every process gets the decision (or the
    same error). Nothing else is written yet: a recipe that fails to build leaves no trace."""
    lock, answer = None, [None, None]  # Start, error message
    if accelerator.is_main_process:
        try:
            lock = RunDirLock(run_dir)
            finish_interrupted_writes(run_dir)
            answer = [decide_start(cfg, run_dir), None]
        except LaunchError as e:
            answer = [None, (type(e), str(e))]
        except BaseException:  # a signal: the caller never gets the lock, so it is let go here
            if lock is not None:
                lock.release(keep=False)
            raise
        if answer[1] and lock is not None:
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
        load_checkpoint(accelerator, start.resume_from, run.components(), run.own(), run.tensors(), run.data.streamed)
        set_initial_lr(run.cfg.optim, run.optimizer)  # the checkpoint's copy of it is the recipe's, checked
        continue_epoch(run)
        if start.old_epochs is not None:
            accelerator.print(epochs_notice(run, start.old_epochs))
    run.state.wandb_id = run.state.wandb_id or new_wandb_id(run.cfg)
    run.state.launches.append(launch_record(accelerator, command))
    run.state.epochs = run.cfg.train.epochs
    run.tracker.start(run.cfg, run.state.history, run.state.wandb_id, start.resume_from, command)
    accelerator.print(describe(run))


def continue_epoch(run: Run) -> None:
    """A streamed run resumed by another number of processes in the middle of an epoch goes on with what is left of
    that epoch, cut again for this number (hw3.data.shards.plan)."""
    state, saved_world = run.state, run.state.world_size
    state.world_size = run.accelerator.num_processes
    if run.data.streamed:
        batch = run.data.resume_at(state.epoch, state.batch, batch_size_for(run.cfg.train, state.epoch))
        if batch != state.batch:
            left = sum(b - a for a, b in run.data.regrouped[1])
            run.accelerator.print(
                f"{saved_world} -> {state.world_size} processes in the middle of epoch {state.epoch}: its {left:,} "
                f"samples not yet seen are cut again for {state.world_size} (each once; their order changes)"
            )
            state.batch = batch


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
        fit(run)  # a signal is acted on at the next step boundary, after a checkpoint
    except NonFinite as e:
        run.state.stopped = "non_finite"
        run.state.skipped_steps += int(run.sums.skipped.item())  # the unfinished epoch's
        launch.say(f"error: {e}")  # every process stops; one says why
        code = 1
    accelerator = run.accelerator
    extra = {"processes_in_sync": processes_in_sync(accelerator, run.net)} if accelerator.num_processes > 1 else {}
    test = {}
    if run.state.history:
        launch.phase = "test"
        with SIGNALS.immediate():  # a signal here stops the test at once; a rerun tests again
            test = test_best(run)
    launch.phase = "summary"  # the last write: finish it, then say the run is complete
    crash_point("summary")
    run.tracker.summary({**summary_of(run, test), **extra})
    if test:
        accelerator.print(
            f"test: acc {test['test_acc']:.2%}, loss {test['test_loss']:.4f} "
            f"(best weights, epoch {run.best.epoch}, {run.best.source})"
        )
    if SIGNALS.pending:
        launch.say(f"{name(SIGNALS.pending)} arrived as the summary was written; the run is complete")
        launch.said_complete = True
    launch.ending = "complete; exit 0" if code == 0 else "non-finite steps; exit 1"
    return code
