"""SIGTERM and SIGINT, handled one way for the whole launch.

The door (hw3.cli) installs one handler before anything heavy is imported. While nothing worth keeping is in
flight (imports, reading the recipe, building the run, the final test) a signal stops the launch at once: the
handler raises Stopped, a BaseException, so that no `except Exception` swallows it. Everywhere else (training,
validation, saves, the summary, and the whole way out of a launch) it is only recorded: the loop acts on it at the
next step boundary, after a checkpoint, and the door decides what the launch says. A launch that is ending
records signals too, so a second SIGTERM from torchrun never turns a clean exit into a traceback.

A signal that was ignored when the launch started (`nohup`, or SIGINT in a background job of a non-interactive
shell) stays ignored for the whole launch: hw3 never installs a handler for it. Only the standard library here.
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
        self.deferring = 0  # > 0: a signal is recorded, not raised
        self.outer = 0  # inside immediate(): the deferral it suspends
        self.pending = 0  # the first signal received since install(), 0 if none

    def install(self) -> None:
        for s in HANDLED:
            current = signal.getsignal(s)
            if current is not signal.SIG_IGN and s not in self.previous:
                self.previous[s] = current
                signal.signal(s, self.handle)

    def handle(self, signum: int, frame) -> None:
        self.pending = self.pending or signum
        if not self.deferring:
            self.deferring = self.outer  # leaving an immediate stretch: the deferral around it holds again at once
            raise Stopped(signum)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """Record signals instead of raising, inside this block."""
        self.deferring += 1
        try:
            yield
        finally:
            self.deferring -= 1

    @contextlib.contextmanager
    def immediate(self) -> Iterator[None]:
        """Inside a deferred block, a stretch where a signal stops the launch at once (nothing is in flight)."""
        saved, self.deferring, self.outer = self.deferring, 0, self.deferring
        try:
            if self.pending:  # it came just before: act on it now
                raise Stopped(self.pending)
            yield
        finally:
            self.deferring, self.outer = saved, 0

    def hold(self) -> None:
        """Record signals from now on, for good: the launch is on its way out."""
        self.deferring += 1

    def restore(self) -> int:
        """Put the handlers found at install() back (a signal meanwhile is only recorded); returns the signal
        received, if any, so a caller that runs hw3 as a library can hand it on (hand_back)."""
        self.hold()
        for s, handler in self.previous.items():
            signal.signal(s, handler)
        received = self.pending  # (one that came while the handlers were put back included)
        self.previous, self.pending, self.deferring, self.outer = {}, 0, 0, 0
        return received

    @staticmethod
    def hand_back(received: int, previous) -> None:
        """After hw3 ran inside another program (a test suite, a notebook): a Ctrl-C it acted on is passed on to
        that program's own SIGINT handler (Python's raises KeyboardInterrupt), so Ctrl-C stops the caller too."""
        if received == signal.SIGINT and callable(previous):
            previous(signal.SIGINT, None)


SIGNALS = Signals()
