"""Fault injection for the crash-and-resume tests. `HW3_CRASH_AT=<point>:<n>[:<signal>]` sends this process
SIGKILL (or the named signal, e.g. TERM) the n-th time it reaches <point>: train_step (after an optimizer step),
validation, checkpoint_save (all files written, not yet renamed into place), after_save. Unset: nothing."""

import os
import signal
from collections import Counter

_SPEC = os.environ.get("HW3_CRASH_AT", "")
_seen: Counter = Counter()


def crash_point(name: str) -> None:
    if not _SPEC:
        return
    point, nth, *sig = _SPEC.split(":")
    if point == name:
        _seen[name] += 1
        if _seen[name] == int(nth):
            os.kill(os.getpid(), getattr(signal, f"SIG{sig[0]}") if sig else signal.SIGKILL)
