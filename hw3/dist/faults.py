"""Fault injection for the crash-and-resume tests. `HW3_CRASH_AT=<point>:<n>[:<signal>][@<rank>]` sends this
process SIGKILL (or the named signal: TERM, INT, STOP; or HANG: sleep, as a stuck process would) the n-th time it
reaches <point>: start_up (the run dir decided, nothing built), train_step (after an optimizer step),
validation, checkpoint_save (all files written, no manifest yet), after_save, test (the final test), summary
(about to write summary.json), shutdown (the launch's last step, after the summary). `@<rank>` limits it to the
process of that rank. With `HW3_CRASH_ONCE=<file>` it fires only if that file does not exist yet (and creates it
first), so an elastic restart of the same command runs through. Unset: nothing."""

import os
import signal
import time
from collections import Counter
from pathlib import Path

_seen: Counter = Counter()


def crash_point(name: str) -> None:
    spec = os.environ.get("HW3_CRASH_AT", "")
    if not spec:
        return
    spec, _, rank = spec.partition("@")
    point, nth, *sig = spec.split(":")
    if point != name or (rank and os.environ.get("RANK", "0") != rank):
        return
    _seen[name] += 1
    if _seen[name] == int(nth):
        once = os.environ.get("HW3_CRASH_ONCE")
        if once:
            if Path(once).exists():
                return
            Path(once).write_text(f"{os.environ['HW3_CRASH_AT']}\n")
        if sig == ["HANG"]:  # alive but not answering (a stuck peer); a plain SIGTERM still ends it
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            time.sleep(3600)
        os.kill(os.getpid(), getattr(signal, f"SIG{sig[0]}") if sig else signal.SIGKILL)
