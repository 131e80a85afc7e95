"""SIGTERM and SIGINT at every moment of a launch say what happened: the checkpoint kept and the command to go on
(or that the run is complete), with exit 128 + N; the same command then ends where an uninterrupted run did. A
signal ignored when the launch started stays ignored throughout."""

import os
import signal
import subprocess
import sys

import pytest

from helpers import RECIPES, ROOT, at_crash_point, child_env, deterministic, read_metrics, read_summary

QUICK = RECIPES / "quickstart.yaml"
ARGS = ["--recipe", QUICK, "train.epochs=2", "log.trackers=[]", "train.keep_last=10"]
CKPT = "{run}/checkpoints/{name}"

# crash point (hw3.dist.faults) where the signal is sent: (exit code, what the launch says on stderr)
MOMENTS = {
    "start-up, nothing saved yet": ("start_up:1", 143, "stopped by SIGTERM during start-up, before any checkpoint; "
                                    "rerun the same command to start"),
    "mid-epoch": ("train_step:25", 143, f"stopped by SIGTERM at epoch 1 batch 4; checkpoint {CKPT} saved; rerun "
                  "the same command to continue".replace("{name}", "epoch0001-batch000004")),
    "validation": ("validation:1", 143, f"stopped by SIGTERM after epoch 0; checkpoint {CKPT} saved; rerun the same "
                   "command to continue".replace("{name}", "epoch0000-batch000021")),
    "a checkpoint save": ("checkpoint_save:1", 143, f"stopped by SIGTERM after epoch 0; checkpoint {CKPT} saved; "
                          "rerun the same command to continue".replace("{name}", "epoch0000-batch000021")),
    "the end of an epoch": ("after_save:1", 143, f"stopped by SIGTERM after epoch 0; checkpoint {CKPT} saved; "
                            "rerun the same command to continue".replace("{name}", "epoch0000-batch000021")),
    "the final test": ("test:1", 143, "stopped by SIGTERM during the final test; training is complete (checkpoint "
                       f"{CKPT}); rerun the same command to test the best weights and write the summary"
                       .replace("{name}", "epoch0001-batch000021")),
    "the summary": ("summary:1", 0, "SIGTERM arrived as the summary was written; the run is complete"),
}  # fmt: skip


def signal_at(monkeypatch, point: str, nth: int, signum: int) -> None:
    """Send this process `signum` the nth time it reaches crash point `point` (as HW3_CRASH_AT does)."""
    at_crash_point(monkeypatch, point, nth, lambda: os.kill(os.getpid(), signum))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    from hw3.cli.train import main

    run_dir = tmp_path_factory.mktemp("signals") / "reference"
    assert main([str(a) for a in [*ARGS, f"output_dir={run_dir}"]]) == 0
    return run_dir


@pytest.mark.parametrize("moment", MOMENTS)
def test_a_signal_at_any_moment_says_what_was_kept_and_the_rerun_ends_equal(
    train, reference, tmp_path, monkeypatch, moment
):
    point, code, said = MOMENTS[moment]
    run_dir = tmp_path / "run"
    name, nth = point.split(":")
    signal_at(monkeypatch, name, int(nth), signal.SIGTERM)
    stopped = train(*ARGS, f"output_dir={run_dir}")
    assert stopped.code == code, stopped.err
    assert stopped.err.strip().splitlines()[-1] == said.format(run=run_dir)
    monkeypatch.undo()
    again = train(*ARGS, f"output_dir={run_dir}")
    assert again.code == 0, again.err
    if code == 0:
        assert "is complete" in again.out
    assert deterministic(read_metrics(run_dir)) == deterministic(read_metrics(reference))
    assert read_summary(run_dir)["test_acc"] == read_summary(reference)["test_acc"]


def test_sigint_during_start_up_of_a_resume_names_the_checkpoint_and_stops_the_caller(
    train, tmp_path, monkeypatch, capsys
):
    """In-process (a test suite, a notebook), the launch says what it kept, then hands the Ctrl-C on to the
    caller's own handler: Python's raises KeyboardInterrupt, so Ctrl-C stops the caller too."""
    from hw3.cli.train import main

    run_dir = tmp_path / "run"
    assert train("--recipe", QUICK, "train.epochs=1", "log.trackers=[]", f"output_dir={run_dir}").code == 0
    signal_at(monkeypatch, "start_up", 1, signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        main([str(a) for a in [*ARGS, "train.extend_epochs=true", f"output_dir={run_dir}"]])
    assert capsys.readouterr().err.strip() == (
        f"stopped by SIGINT during start-up; rerun the same command to continue from "
        f"{run_dir / 'checkpoints' / 'epoch0000-batch000021'}"
    )
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the caller's handler is back


def test_an_ignored_sigint_stays_ignored_through_training(tmp_path):
    """`nohup` or a background job of a non-interactive shell starts the launch with SIGINT ignored: hw3 never
    installs a handler for it, so a SIGINT in the middle of training changes nothing."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *map(str, ARGS), f"output_dir={tmp_path / 'run'}"],
        cwd=tmp_path,
        env=child_env(HW3_CRASH_AT="train_step:5:INT"),
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert read_summary(tmp_path / "run")["epochs_completed"] == 2 and "stopped" not in done.stderr


def test_a_signal_while_the_handlers_are_put_back_is_recorded_not_raised(monkeypatch):
    """torchrun's SIGTERM can land while a launch puts the caller's handlers back: it is recorded (and said by
    the exit code), never a `Stopped` traceback."""
    from hw3.dist.signals import Signals

    signals = Signals()
    signals.install()
    real = signal.signal
    calls = []

    def signal_that_is_interrupted(signum, handler):
        calls.append(signum)
        if len(calls) == 1:
            signals.handle(signal.SIGTERM, None)  # as the kernel would deliver it here
        return real(signum, handler)

    monkeypatch.setattr(signal, "signal", signal_that_is_interrupted)
    assert signals.restore() == signal.SIGTERM  # recorded, handed to the caller
    monkeypatch.undo()
    assert (
        signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    )


def caught_signals(pid: int) -> int:
    """The mask of signals process `pid` has a handler for (/proc/<pid>/status, SigCgt)."""
    with open(f"/proc/{pid}/status") as f:
        return int(next(line.split()[1] for line in f if line.startswith("SigCgt:")), 16)


def test_sigint_while_train_py_is_still_importing_is_one_line(tmp_path):
    """Ctrl-C a moment after `python train.py` starts, while torch, accelerate and timm are being imported: one
    line and 130, not a KeyboardInterrupt traceback from an import."""
    child = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *map(str, ARGS), f"output_dir={tmp_path / 'run'}"],
        cwd=tmp_path,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    while not caught_signals(child.pid) & (1 << (signal.SIGTERM - 1)):  # hw3's handlers are in: imports begin
        assert child.poll() is None, child.communicate()
    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=300)
    assert child.returncode == 130, err
    assert err.strip() == "stopped by SIGINT during start-up, before the run was set up"
    assert not (tmp_path / "run").exists()


def test_a_signal_after_the_summary_says_the_run_is_complete(tmp_path):
    """A signal as the launch shuts down, after the summary was written: the run is complete, exit 0, said once."""
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *map(str, ARGS), f"output_dir={run_dir}"],
        env=child_env(HW3_CRASH_AT="shutdown:1:TERM"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == ["SIGTERM arrived as the launch ended; the run is complete"]
    assert read_summary(run_dir)["epochs_completed"] == 2


CTRL_C_SUITE = """
import signal, sys, time
from pathlib import Path

def test_a_long_training_in_process():
    from hw3.cli.train import main
    Path({started!r}).write_text("started")
    main(["--recipe", {recipe!r}, "train.epochs=1000", "log.trackers=[]", "output_dir={run}"])

def test_never_reached():
    Path({reached!r}).write_text("the suite went on after Ctrl-C")
"""


def test_ctrl_c_stops_a_test_suite_that_runs_hw3_in_process(tmp_path):
    """A test suite (or a notebook) that runs a training in its own process: Ctrl-C stops the training at the
    next step boundary, with its checkpoint, and then stops the suite, as Ctrl-C does."""
    started, reached = tmp_path / "started", tmp_path / "reached"  # (written by the suite's two tests)
    suite = tmp_path / "test_suite.py"
    run = tmp_path / "run"
    suite.write_text(CTRL_C_SUITE.format(started=str(started), reached=str(reached), recipe=str(QUICK), run=run))
    child = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", str(suite)],
        cwd=tmp_path,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    while not (run / "checkpoints" / "epoch0000-batch000021").is_dir():  # training, past its first epoch
        assert child.poll() is None, child.communicate()[0][-3000:]
    child.send_signal(signal.SIGINT)
    out, _ = child.communicate(timeout=300)
    assert child.returncode == 2, out[-3000:]  # pytest: interrupted
    assert "KeyboardInterrupt" in out and "stopped by SIGINT " in out and "checkpoint" in out
    assert not reached.exists()


def test_a_signal_that_ends_an_immediate_stretch_puts_the_deferral_back_before_anything_else_runs():
    """A signal raised out of SIGNALS.immediate() (start-up) must leave signals deferred for the shutdown that
    follows, even when it lands as the stretch is being left: the handler itself restores the deferral."""
    from hw3.dist.signals import Signals, Stopped

    signals = Signals()
    with signals.deferred():
        with pytest.raises(Stopped):
            with signals.immediate():
                try:
                    signals.handle(signal.SIGTERM, None)
                except Stopped:
                    assert signals.deferring == 1  # already, before immediate()'s own clean-up
                    raise
        signals.handle(signal.SIGINT, None)  # recorded, not raised
    assert signals.pending == signal.SIGTERM and signals.deferring == 0
