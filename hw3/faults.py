"""Crash injection for the crash-and-resume tests: `HW3_CRASH_AT=<point>:<n>` SIGKILLs this process the n-th
time it reaches <point> (train_step, validation, checkpoint_save, after_save). Unset, it does nothing."""
import os
import signal
from collections import Counter

_SPEC = os.environ.get("HW3_CRASH_AT", "")
_seen: Counter = Counter()


def crash_point(name: str) -> None:
    if not _SPEC:
        return
    point, _, nth = _SPEC.partition(":")
    if point == name:
        _seen[name] += 1
        if _seen[name] == int(nth or 1):
            os.kill(os.getpid(), signal.SIGKILL)
