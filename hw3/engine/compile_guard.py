"""torch.compile without surprises: a compile failure never kills a run, and a model that recompiles (or re-records
its CUDA graphs) every step is reported instead of silently running slower than eager.

torch.compile compiles lazily, at the first step of each batch shape (dynamo traces, inductor generates code,
CUDA-graph modes record). If that raises -- a dynamo graph break it cannot handle, an inductor or compiler
error, a failed capture -- hw3 prints one warning line and runs the same step again eagerly, from the same
state: BatchNorm statistics, RNG states (dropout, mixup) and the epoch's sums are put back, the gradients
cleared, the step's batches (kept, unmixed) fed again. Nothing is skipped and nothing applied twice: the
optimizer had not stepped yet (if it had, the error is not a compile error and is raised as it is).

Afterwards torch reports each compilation and each CUDA-graph recording to a callback (torch._dynamo.callback);
after the warm-up of each shape there should be none. Two or more later ones mean something changes per step (a
shape, a Python value the model reads): hw3 warns once, at the host's next look.
"""

from __future__ import annotations

import random
import sys
import time
from typing import Callable, Optional

import numpy as np
import torch


class CompileGuard:
    def __init__(self, mode: Optional[str], is_main: bool):
        self.mode, self.is_main = mode, is_main
        self.shapes: set[tuple] = set()  # batch shapes (micro-batch sizes of a step) already compiled
        self.timed = False  # the first compiling step's time has been printed
        self.events = self.seen = self.repeats = 0
        self.fresh = False  # a first step of some shape ran since the last look: its compiles are expected
        self.warned = False
        self.callback = None
        if mode is not None:
            from torch._dynamo.callback import callback_handler

            def count(args) -> None:
                self.events += 1

            self.callback = callback_handler.register_start_callback(count)

    def new_shape(self, sizes: list[int]) -> bool:
        """Will torch.compile compile (or record) at a step of these micro-batch sizes?"""
        if self.mode is None or tuple(sizes) in self.shapes:
            return False
        self.shapes.add(tuple(sizes))
        return True

    def first_step(self, run, micro, measure_norm: bool, train_step: Callable) -> None:
        """`train_step` at a step where torch.compile compiles; on failure, the same step again, eagerly."""
        self.fresh = True
        batches = list(micro)  # the originals, for a retry: the attempt gets copies (mixup mixes in place)
        snapshot, step = Snapshot(run), run.state.step
        started = time.perf_counter()
        try:
            train_step(run, iter([(x.clone(), y, w, last) for x, y, w, last in batches]), measure_norm)
        except Exception as e:
            if run.state.step != step:  # the update happened: not a compile error
                raise
            snapshot.restore(run)
            self.fall_back(run, e)
            train_step(run, iter(batches), measure_norm)
            return
        if not self.timed:
            self.timed = True
            self.say(f"torch.compile: the first step took {time.perf_counter() - started:.1f} s")

    def fall_back(self, run, error: Exception) -> None:
        """Eager from now on: the prepared model without torch.compile's wrapper (DDP, if any, stays)."""
        reason = " ".join(str(error).split()).split(" Set TORCHDYNAMO_VERBOSE")[0][:200] or type(error).__name__
        self.say(
            f"warning: torch.compile failed at the first step ({type(error).__name__}: {reason}); training goes on "
            f"eagerly from that same step (train.compile=false skips compiling)",
        )
        run.model = getattr(run.model, "_orig_mod", run.model)
        run.cuda_graphs = False
        self.mode = None
        self.close()

    def look(self, run) -> None:
        """At the host's look: warn once when compilations or recordings keep happening after the warm-up."""
        if self.mode is None:
            return
        new, self.seen = self.events - self.seen, self.events
        if self.fresh:
            self.fresh = False
            return
        self.repeats += new
        if self.repeats >= 2 and not self.warned:
            self.warned = True
            self.say(
                f"warning: torch.compile compiled or recorded CUDA graphs {self.repeats} more times after its "
                f"warm-up (by step {run.state.step}): something changes every step (a shape, or a Python value the "
                f"model reads), and each costs more than a step; TORCH_LOGS=recompiles,cudagraphs says what; "
                f"train.compile=false trains eagerly"
            )

    def say(self, line: str) -> None:
        if self.is_main:
            print(line, file=sys.stderr if line.startswith("warning") else sys.stdout, flush=True)

    def close(self) -> None:
        if self.callback is not None:
            from torch._dynamo.callback import callback_handler

            callback_handler.remove_start_callback(self.callback)
            self.callback = None


class Snapshot:
    """What a failed (compiling) forward/backward may have changed before the optimizer stepped."""

    def __init__(self, run):
        self.buffers = [b.detach().clone() for b in run.net.buffers()]
        self.sums = run.sums.state_dict()
        self.rng = (
            torch.get_rng_state(),
            torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            np.random.get_state(),
            random.getstate(),
        )

    def restore(self, run) -> None:
        with torch.no_grad():
            for buf, saved in zip(run.net.buffers(), self.buffers, strict=True):
                buf.copy_(saved)
        run.net.zero_grad(set_to_none=True)
        run.sums.load_state_dict(self.sums)
        cpu, cuda, numpy_state, python_state = self.rng
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        np.random.set_state(numpy_state)
        random.setstate(python_state)
