"""A worker that notices its launcher is gone.

torchrun starts each worker in its own session, so `kill -9` of `accelerate launch` (or of its whole process
group) leaves the workers training on in the background, holding the run dir. Under a launcher hw3 asks the
kernel for a SIGTERM when its parent dies (Linux `prctl(PR_SET_PDEATHSIG)`): the launch then stops at the next step
boundary with a checkpoint, as for any SIGTERM, and says the launcher is gone. Only the standard library here.
"""

from __future__ import annotations

import ctypes
import os
import signal
from typing import Optional

PR_SET_PDEATHSIG = 1
LAUNCHER_ENV = ("LOCAL_RANK", "TORCHELASTIC_RUN_ID", "ACCELERATE_MIXED_PRECISION")  # set by torchrun / accelerate


class Launcher:
    def __init__(self):
        self.pid: Optional[int] = None  # the launcher's pid, when this process was started by one

    def follow(self) -> None:
        """Under `accelerate launch` or torchrun: SIGTERM this process when its launcher dies."""
        if not any(key in os.environ for key in LAUNCHER_ENV):
            return
        self.pid = os.getppid()
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))
        except (OSError, AttributeError):  # not Linux: a launcher killed with -9 leaves this process running
            return
        if os.getppid() != self.pid:  # it died before the kernel was asked
            os.kill(os.getpid(), signal.SIGTERM)

    def gone(self) -> bool:
        return self.pid is not None and os.getppid() != self.pid


LAUNCHER = Launcher()
