"""One launch of a run, top to bottom: decide where to start (fresh or a checkpoint), build, train, test, write
the summary. `train_recipe` is what `train.py` calls."""

from __future__ import annotations

import contextlib
import signal
import sys
from pathlib import Path
from typing import Optional

from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import broadcast_object_list, set_seed

from hw3.build import Run, build_run, describe, make_accelerator, new_wandb_id
from hw3.checkpoint import decide_start, load_checkpoint, prepare_run_dir
from hw3.config import Config, TrainConfig
from hw3.errors import UserError
from hw3.loop import Interrupted, NonFinite, fit
from hw3.summary import processes_in_sync, summary_of, test_best


def train_recipe(cfg: Config, recipe: Optional[str]) -> int:
    """Train the recipe; returns the exit code (0 done, 1 stopped on non-finite steps, 128+N on signal N)."""
    stem = Path(recipe).stem if recipe else "default"
    run_dir = Path(cfg.output_dir or (Path("runs") / "smoke" / stem if cfg.smoke else Path("runs") / stem))
    accelerator = make_accelerator(cfg, run_dir)
    try:
        resume_from, wipe = decide_on_main(accelerator, cfg.train, run_dir)
        set_seed(cfg.seed)
        run = build_run(cfg, accelerator, run_dir)
        start_run(run, resume_from, wipe)
        with signals_to(run):
            return train_and_test(run)
    except Interrupted as e:
        return 128 + e.args[0]
    finally:
        accelerator.end_training()
        # accelerate keeps its state in process-wide singletons; clear them so one process can run another
        # recipe afterwards (tests, notebooks) with different settings.
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


def decide_on_main(accelerator: Accelerator, cfg: TrainConfig, run_dir: Path) -> tuple[Optional[Path], bool]:
    """The main process decides: (checkpoint to resume from, wipe the old run first). Every process gets the
    answer (or the same error). Nothing is written yet: a recipe that fails to build leaves no trace."""
    answer: list = [None, False, None]  # checkpoint or None, wipe, error message or None
    if accelerator.is_main_process:
        try:
            resume_from, wipe = decide_start(cfg, run_dir)
            answer = [str(resume_from) if resume_from else None, wipe, None]
        except UserError as e:
            answer = [None, False, str(e)]
    if accelerator.num_processes > 1:
        broadcast_object_list(answer)
    if answer[2]:
        raise UserError(answer[2])
    return (Path(answer[0]) if answer[0] else None), answer[1]


def start_run(run: Run, resume_from: Optional[Path], wipe: bool) -> None:
    """Create (or empty) the run dir, restore the checkpoint if there is one, start the trackers."""
    accelerator = run.accelerator
    if accelerator.is_main_process:
        prepare_run_dir(run.run_dir, wipe)
    accelerator.wait_for_everyone()
    if resume_from is not None:
        load_checkpoint(accelerator, resume_from, run.components(), run.ema)
        if run.state.stopped == "max_steps":  # a limit of that command, not of the run
            run.state.stopped = None
        accelerator.print(f"resuming from {resume_from} (epoch {run.state.epoch}, batch {run.state.batch})")
    run.state.wandb_id = run.state.wandb_id or new_wandb_id(run.cfg)
    run.tracker.start(run.cfg, run.state.history, run.state.wandb_id, resume_from)
    accelerator.print(describe(run))


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
