"""`python train.py --recipe PATH [key=value ...]` (also `python -m hw3.cli`): read the recipe, train it.

Every failure hw3 knows is one line `error: ...` and an exit code (hw3.errors has the table); SIGINT and SIGTERM
end a launch with one line and exit 128 + the signal number at any moment (hw3.dist.signals, hw3.engine.session).
Under a multi-process launch the main process says it, once; the others exit with the same code silently (an
error only one of them hit is said by that one, prefixed with its process number).

As the program (train.py), the signal handlers are installed before anything heavy is imported and are never
taken down: a signal while the launch is on its way out is recorded, not a traceback. As a library (`main()`,
called by a test suite or a notebook) they are put back when the launch ends, and a Ctrl-C the launch acted on
is handed on to the caller, so Ctrl-C stops the caller too.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from typing import NoReturn, Optional, Sequence

from hw3.cli import Parser, one_line
from hw3.dist.launcher import LAUNCHER
from hw3.dist.signals import SIGNALS, Stopped, name
from hw3.errors import LaunchError, PeerLost, UserError


def parse_train_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = Parser(
        prog="train.py",
        description="Train an image classifier from a YAML recipe.",
        epilog="Overrides use dotted keys: optim.lr=0.05 train.epochs=3 'log.trackers=[tensorboard]'",
    )
    p.add_argument("--recipe", required=True, help="YAML recipe (see recipes/)")
    p.add_argument("--print-config", action="store_true", help="print the resolved recipe as YAML and exit")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="override a recipe value")
    return p.parse_args(argv)


def program() -> NoReturn:
    """train.py: handlers first, then the launch; the exit code is the launch's, whatever arrives meanwhile."""
    SIGNALS.install()
    LAUNCHER.follow()
    code = train(None)
    if code == PeerLost.exit_code:  # tearing down a process group with a peer gone can abort the interpreter
        from hw3.dist.peers import hard_exit

        hard_exit(code)
    sys.exit(code)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The train command as a library call; returns the exit code."""
    SIGNALS.install()
    caller_sigint = SIGNALS.previous.get(signal.SIGINT)
    try:
        return train(argv)
    finally:
        SIGNALS.hand_back(SIGNALS.restore(), caller_sigint)


def train(argv: Optional[Sequence[str]]) -> int:
    rank = int(os.environ.get("RANK", "0"))
    try:
        args = parse_train_args(argv)
        from hw3.engine.recipe import load_recipe

        try:
            cfg = load_recipe(args.recipe, args.overrides)
        except UserError as e:
            e.quiet = rank != 0  # every process read the same recipe: the main one says what is wrong
            raise
        if args.print_config:
            from hw3.engine.resolved import annotated_yaml

            print(annotated_yaml(cfg, args.recipe), end="")
            return 0
        from hw3.engine.session import train_recipe

        command = ["train.py", *(sys.argv[1:] if argv is None else argv)]  # as typed, for the run's records
        return train_recipe(cfg, args.recipe, command)
    except LaunchError as e:
        SIGNALS.hold()
        if not e.quiet or not wait_for_the_main_process():
            who = f"process {rank}: " if rank else ""
            print(f"error: {who}{one_line(str(e))}", file=sys.stderr)
        return e.exit_code
    except Stopped as e:
        SIGNALS.hold()
        if rank == 0:
            print(f"stopped by {name(e.args[0])} during start-up, before the run was set up", file=sys.stderr)
        return 128 + e.args[0]
    finally:
        SIGNALS.hold()  # the launch is over: a signal from now on changes nothing


def wait_for_the_main_process(seconds: float = 10.0) -> bool:
    """A process that leaves an error to the main one must not exit first: torchrun ends every other process the
    moment one exits, and would take the main one down before it said anything. So wait for the launcher to end
    this one (a signal: True); if nobody has after `seconds` (another launcher, or the main process did not
    fail), False: say it here."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if SIGNALS.pending:
            return True
        time.sleep(0.05)
    return False
