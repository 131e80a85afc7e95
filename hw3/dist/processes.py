"""Several processes that fail together: they agree on errors and values, and save what each owns.

- `agree`: every process learns whether any of them failed (one collective), so all raise the same error at the
  same point and the main process alone prints it, instead of one process exiting while the others wait for it
  in the next collective.
- `main_first`: the main process does something first (downloads, decoding a folder into the cache), then the
  others, with the main process's error shared (accelerate's main_process_first skips its barrier on an
  exception and leaves the others waiting).
- `init_restartable_process_group`: the process group, with keys that an elastic restart does not collide with.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Callable, Optional, TypeVar

import torch

from hw3.errors import LaunchError, PeerLost, RunDirBusy, UserError, WriteFailed

T = TypeVar("T")
KINDS = {kind.__name__: kind for kind in (RunDirBusy, UserError, PeerLost, WriteFailed, LaunchError)}


def process_group_kwargs(timeout_minutes: float):
    """accelerate's handler that gives the process group hw3's collective timeout (torch's default: 30 min)."""
    from accelerate.utils import InitProcessGroupKwargs

    return InitProcessGroupKwargs(timeout=timedelta(minutes=timeout_minutes))


def init_restartable_process_group(timeout_minutes: float) -> None:
    """Start the process group before accelerate does, with its keys under the elastic restart attempt.

    Under torchrun (`accelerate launch`), the workers meet in the agent's TCP store, which lives as long as the
    launcher: after `--max_restarts` restarts the workers, the new ones find the dead ones' gloo/NCCL addresses
    still there under the same keys, connect to them and fail ("connectFullMesh failed ... Connection refused";
    torch 2.14 with c10d or static rendezvous, every time here). A prefix per attempt gives each restart clean
    keys. accelerate then uses this group as it is."""
    if "TORCHELASTIC_RESTART_COUNT" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) < 2:
        return
    import torch.distributed as dist
    from torch.distributed.rendezvous import _create_c10d_store

    if dist.is_initialized():
        return
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    timeout = timedelta(minutes=timeout_minutes)
    store = _create_c10d_store(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), rank, world, timeout)
    store = dist.PrefixStore(f"hw3/attempt_{os.environ['TORCHELASTIC_RESTART_COUNT']}/", store)
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=timeout)


def agree(accelerator, value: Optional[T]) -> Optional[T]:
    """The first process's `value`, by rank, when any process has one (an error message, say); None when none
    has. A collective when there are several processes, so every process must call it at the same point."""
    if accelerator.num_processes == 1:
        return value
    from accelerate.utils import gather_object

    return next((v for v in gather_object([value]) if v is not None), None)


def raise_agreed(accelerator, error: Optional[LaunchError]) -> None:
    """Raise `error`, or the error another process has, on every process (the main process alone prints it)."""
    kind = next((k.__name__ for k in type(error).__mro__ if k.__name__ in KINDS), None) if error else None
    found = agree(accelerator, (kind, str(error)) if error is not None else None)
    if found is None:
        return
    agreed = KINDS[found[0]](found[1])
    agreed.quiet = not accelerator.is_main_process
    raise agreed


def main_first(accelerator, build: Callable[[], T]) -> T:
    """`build()` on the main process, then on the others (which find its downloads and caches); a LaunchError on
    any process stops them all at the same point."""
    result, error = None, None
    for turn in (True, False):
        if accelerator.is_main_process == turn:
            try:
                result = build()
            except LaunchError as e:
                error = e
        raise_agreed(accelerator, error)
    return result


def gather_states(accelerator, state: dict) -> list[dict]:
    """Every process's own `state`, in rank order (what each process accumulates alone: the epoch's sums)."""
    from accelerate.utils import gather_object  # (one process: [state] as it is)

    return gather_object([state])
