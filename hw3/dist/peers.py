"""Telling a lost peer apart: from a signal, and from any other error.

`Peers` records which process runs where (host, pid) once at start-up. A process that leaves on purpose (an
error it reported, a signal it acted on) writes its exit code into the process group's store first, which
torchrun's agent keeps; so a peer on this machine that is gone without having said so died (kill -9, the OOM
killer, a crash). That is what makes these one line, exit 3, whatever the survivor was doing:

- a collective fails: torch raises it from torch.distributed or from DDP's forward (`raised_by_collective`, by
  where it was raised; an out-of-memory error or any other RuntimeError is not taken for a lost peer);
- torchrun's SIGTERM, which it sends the survivors as soon as one worker dies: with a peer gone unannounced it
  is the lost peer that is reported, not "stopped by SIGTERM"; a SIGTERM that every process got (a preemption)
  finds its peers alive, or gone after announcing.
"""

from __future__ import annotations

import os
import socket
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Optional

EXIT_KEY = "hw3/exit/{rank}"
# Where torch raises what a failed collective raises: the c10d API (gloo/NCCL errors come through it as
# RuntimeError or DistError) and DDP, which reports its last backward's failed all-reduce at the next forward.
COLLECTIVE_FILES = (
    os.sep.join(("torch", "distributed", "")),
    os.sep.join(("torch", "nn", "parallel", "distributed.py")),
)


def raised_by_collective(error: BaseException) -> bool:
    """Did torch raise `error` for a collective (a peer gone, or not answering within the timeout)?"""
    import torch.distributed

    if isinstance(error, getattr(torch.distributed, "DistError", ())):
        return True
    if type(error) is not RuntimeError:
        return False
    torch_frames = [
        f.filename for f in traceback.extract_tb(error.__traceback__) if f"{os.sep}torch{os.sep}" in f.filename
    ]
    return bool(torch_frames) and any(part in torch_frames[-1] for part in COLLECTIVE_FILES)


@dataclass
class Peer:
    rank: int
    host: str
    pid: int

    def alive(self) -> Optional[bool]:
        """True/False for a process on this machine (a zombie, killed and not yet reaped, is dead); None for a
        process on another machine, which cannot be checked from here."""
        if self.host != socket.gethostname():
            return None
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                return f.read().rsplit(")", 1)[-1].split()[0] not in ("Z", "X")
        except OSError:
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return False
            except PermissionError:
                return True
            return True


class Peers:
    """Host and pid of every process, gathered once at start-up (a collective)."""

    def __init__(self, accelerator):
        me = Peer(accelerator.process_index, socket.gethostname(), os.getpid())
        self.rank, self.world = me.rank, accelerator.num_processes
        if self.world > 1:
            from accelerate.utils import gather_object

            self.all = gather_object([me])
        else:
            self.all = [me]

    def announce_exit(self, code: int) -> None:
        """Tell the others this process leaves on purpose (best effort: the store may be gone with the launcher)."""
        if self.world == 1:
            return
        try:
            store().set(EXIT_KEY.format(rank=self.rank), str(code))
        except Exception:  # noqa: BLE001 - nothing to tell, nobody to tell it to
            pass

    def announced(self, peer: Peer) -> bool:
        try:
            return bool(store().check([EXIT_KEY.format(rank=peer.rank)]))
        except Exception:  # noqa: BLE001 - the store went with the launcher: nobody announced anything
            return False

    def lost(self, wait_s: float = 0.0) -> list[Peer]:
        """Peers on this machine that died without announcing an exit, waiting up to `wait_s` for one that is on
        its way out (after a failed collective, the peer that broke it may take a moment to be gone)."""
        deadline = time.monotonic() + wait_s
        while True:
            gone = [p for p in self.all if p.rank != self.rank and p.alive() is False and not self.announced(p)]
            if gone or time.monotonic() >= deadline:
                return gone
            time.sleep(0.1)

    def reporter(self, gone: list[Peer]) -> bool:
        """Does this process say it? The lowest-ranked process of this machine known to be alive does."""
        here = socket.gethostname()
        dead = {p.rank for p in gone}
        alive = [
            p.rank for p in self.all if p.host == here and p.rank not in dead and (p.rank == self.rank or p.alive())
        ]
        return self.rank == min(alive)

    def describe(self, gone: list[Peer]) -> str:
        if not gone:
            return f"a collective between the {self.world} processes failed"
        names = ", ".join(f"process {p.rank} (pid {p.pid})" for p in gone)
        return f"{names} of {self.world} {'is' if len(gone) == 1 else 'are'} gone"


def store():
    """The process group's key-value store (torchrun's agent holds it under `accelerate launch`)."""
    import torch.distributed

    return torch.distributed.distributed_c10d._get_default_store()


def hard_exit(code: int) -> None:
    """Leave now with `code`: after a peer was lost, tearing the process group down can abort the interpreter
    (gloo's SIGABRT on a broken connection), which would replace the exit code with -6."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
