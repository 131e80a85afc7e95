"""What happens between two optimizer steps, each a named call of the loop (hw3.engine.loop):

- `after_step`: the progress bar, the crash point of the fault tests, and what the launch's first step tells
  (its start-up time; for Muon, which tensors it trains).
- `look_at_device`: the host's one read of the device every `log.log_every` steps and at the epoch's last step:
  train.max_bad_steps, the processes agreeing on a signal and on a timed checkpoint, data.max_bad_samples, the
  running loss.
- `reason_to_stop`: a signal the processes agreed on, or train.max_steps (a limit of this launch).
- `checkpoint_due` and `checkpoint`: the mid-epoch checkpoints of train.checkpoint_every_steps / _minutes.
"""

from __future__ import annotations

import sys
import time
from typing import Optional

import psutil
import torch

from hw3.dist.faults import crash_point
from hw3.dist.signals import SIGNALS
from hw3.engine.build import Run
from hw3.engine.evaluation import say_unreadable
from hw3.errors import UserError
from hw3.optim import routing_table
from hw3.runs.checkpoints import list_checkpoints, save_checkpoint
from hw3.runs.state import at_max_steps


class Interrupted(Exception):
    """SIGTERM/SIGINT arrived (args[0]: the signal number); a checkpoint was saved at the last step boundary."""


class MaxStepsReached(Exception):
    """train.max_steps: this launch stopped after the run's N-th optimizer step, with a checkpoint there."""


class NonFinite(Exception):
    """Too many consecutive non-finite steps; the last good checkpoint is untouched."""


def after_step(run: Run, bar, batches: int) -> None:
    """Bookkeeping after a step: the first one of this launch records its start-up time (and, for Muon, the
    routing of every tensor, decided at that step); the fault tests' crash point; the progress bar."""
    launch = run.state.launches[-1] if run.state.launches else None
    if launch is not None and "startup_s" not in launch:
        launch["startup_s"] = round(time.time() - psutil.Process().create_time(), 2)
        if (run.cfg.optim.base if run.sam else run.cfg.optim.name) == "muon":
            run.tracker.write("optimizer_routing.md", routing_table(run.net, run.optimizer))
    crash_point("train_step")
    run.sums.unreadable += say_unreadable(run.data, "train")  # skipped, counted, said by the process that met it
    if bar is not None:
        bar.update(batches)


def look_at_device(run: Run, bar) -> None:
    """The host's one read of the device per log.log_every steps (and at the end of an epoch): stop after too many
    non-finite steps in a row, agree across processes on whether a signal arrived and whether a timed checkpoint
    is due, show the running loss."""
    accelerator, sums, limit = run.accelerator, run.sums, run.cfg.train.max_bad_steps
    minutes = run.cfg.train.checkpoint_every_minutes
    due = minutes is not None and accelerator.is_main_process and time.monotonic() - run.last_checkpoint >= 60 * minutes
    mine = torch.stack(  # what this process has seen since the last look
        [
            run.bad_steps.longest.double(),
            torch.full_like(sums.loss, float(SIGNALS.pending)),
            torch.full_like(sums.loss, float(due)),
            torch.full_like(sums.loss, float(sums.unreadable)),
        ]
    )
    # one collective: every process's row; the flags are agreed by their max, unreadable samples summed
    rows = (accelerator.gather(mine) if accelerator.num_processes > 1 else mine).view(-1, len(mine))
    agreed = torch.cat([rows[:, :3].amax(0), rows[:, 3].sum()[None], sums.loss[None]])
    longest, signal, due, unreadable, loss = agreed.tolist()
    run.agreed_signal, run.checkpoint_due = int(signal), bool(due)
    run.compile_guard.look(run)
    if longest >= limit:
        checkpoints = list_checkpoints(run.run_dir)
        scale = f" (the fp16 loss scale fell to {run.scaler.get_scale():g}; try bf16)" if run.scaler else ""
        raise NonFinite(
            f"{int(longest)} consecutive non-finite steps (loss or gradient) by epoch {run.state.epoch}, step "
            f"{run.state.step} (train.max_bad_steps={limit}){scale}; last good checkpoint: "
            f"{checkpoints[-1] if checkpoints else 'none'}"
        )
    too_many_unreadable(run, run.state.unreadable_samples + int(unreadable))
    if bar is not None:
        bar.set_postfix(loss=f"{loss / max(sums.count, 1):.4f}")


def too_many_unreadable(run: Run, total: int) -> None:
    """data.max_bad_samples: the unreadable samples of the run so far, over every process, against the limit."""
    limit = run.cfg.data.max_bad_samples
    if total > limit:
        error = UserError(
            f"data.max_bad_samples: {total} unreadable samples (over {limit}; the warnings above name each shard "
            f"and key): repair or leave out those shards, or raise data.max_bad_samples; the newest checkpoint is kept"
        )
        error.quiet = not run.accelerator.is_main_process  # every process reaches the same verdict
        raise error


def interrupted(run: Run, agree: bool = False) -> bool:
    """Has SIGTERM/SIGINT arrived? With one process: the handler's record, at every step. With several, they must
    stop at the same step: the record they last agreed on (in look_at_device, or here with `agree`, a collective)."""
    if run.accelerator.num_processes == 1:
        run.agreed_signal = SIGNALS.pending
    elif agree:
        flag = torch.tensor([float(SIGNALS.pending)], device=run.accelerator.device)
        run.agreed_signal = int(run.accelerator.reduce(flag, "max").item())
    return run.agreed_signal != 0


def reason_to_stop(run: Run) -> Optional[Exception]:
    """Why this launch stops after this step, if it does: a signal, or train.max_steps."""
    if interrupted(run):
        return Interrupted(run.agreed_signal)
    if at_max_steps(run.cfg.train, run.state.step):
        return MaxStepsReached(run.cfg.train.max_steps)
    return None


def checkpoint_due(run: Run) -> bool:
    """A mid-epoch checkpoint after this step? train.checkpoint_every_steps counts optimizer steps (the same on
    every process); train.checkpoint_every_minutes is the main process's clock, agreed at the host's looks."""
    every = run.cfg.train.checkpoint_every_steps
    return run.checkpoint_due or (every is not None and run.state.step % every == 0)


def checkpoint(run: Run, position: tuple[int, int]) -> None:
    """The full training state at `position` (epoch, batches of it trained), with the time trained since the last
    one in wall_time_s (a launch stopped mid-epoch counts too); restarts the interval's clock."""
    run.state.wall_time_s += time.monotonic() - run.last_checkpoint
    save_checkpoint(
        run.accelerator, run.run_dir, position, run.components(), run.own(), run.tensors(), run.cfg.train.keep_last
    )
    run.last_checkpoint = time.monotonic()
    run.checkpoint_due = False


def progress_bar(run: Run, steps: int, epoch: int):
    show = run.cfg.log.progress if run.cfg.log.progress is not None else sys.stdout.isatty()
    if not (show and run.accelerator.is_local_main_process):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=steps, initial=run.state.batch, desc=f"epoch {epoch}", leave=False, dynamic_ncols=True)
