"""SIGTERM and SIGINT, handled one way for the whole launch.

The CLI installs one handler at start-up. Outside the training loop a signal stops the launch at once (Stopped,
a BaseException so that no `except Exception` swallows it); the session then says what was kept and how to go
on. Inside `deferred()` (training, validation, checkpoint saves, the summary) it is only recorded: the loop acts
on it at the next step boundary, after a checkpoint, so nothing is left half-written.

A signal that was ignored when the launch started (`nohup`, or SIGINT in a background job of a
non-interactive shell) stays ignored for the whole launch: hw3 never installs a handler for it.
"""

from __future__ import annotations

import contextlib
import signal
from typing import Iterator

HANDLED = (signal.SIGINT, signal.SIGTERM)


class Stopped(BaseException):
    """SIGINT/SIGTERM outside a deferred section; args[0] is the signal number."""


def name(signum: int) -> str:
    return signal.Signals(signum).name


class Signals:
    def __init__(self):
        self.previous: dict = {}
        self.deferring = 0
        self.pending = 0  # the first signal received inside a deferred section, 0 if none

    def install(self) -> None:
        for s in HANDLED:
            current = signal.getsignal(s)
            if current is not signal.SIG_IGN and s not in self.previous:
                self.previous[s] = current
                signal.signal(s, self.handle)

    def restore(self) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)
        self.previous, self.pending, self.deferring = {}, 0, 0

    def handle(self, signum: int, frame) -> None:
        if self.deferring:
            self.pending = self.pending or signum
        else:
            raise Stopped(signum)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """Record signals instead of raising, inside this block."""
        self.deferring += 1
        try:
            yield
        finally:
            self.deferring -= 1


SIGNALS = Signals()
