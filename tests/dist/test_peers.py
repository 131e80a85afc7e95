"""A lost peer, told apart: whichever of two gloo processes is killed (kill -9), at start-up, in training, in
validation or in a save, the survivor says so in one line (which process, the newest checkpoint) and exits 3,
every time; workers whose launcher is killed end within seconds (and the same command resumes); an error every
process meets is said once."""

import os
import re
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress

import pytest

from hw3.runs.lock import lock_is_free

from helpers import RECIPES, ROOT, accelerate_bin, child_env, exit_codes, launch_two, read_metrics

pytestmark = pytest.mark.multiproc

CONFIG = ROOT / "accelerate_configs" / "cpu_ddp.yaml"
# One epoch of 21 steps per process (1,294 digits, 32 a process), a checkpoint every 5 steps.
ARGS = ["--recipe", RECIPES / "quickstart.yaml", "train.epochs=1", "train.checkpoint_every_steps=5", "log.trackers=[]"]
# where the peer is killed (HW3_CRASH_AT): (the phase the survivor names, the newest checkpoint then, by the
# rank killed)
MOMENTS = {
    "start_up:1": ("start-up", ["none yet (the run starts over)"] * 2),
    "train_step:8": ("training", ["{run}/checkpoints/epoch0000-batch000005"] * 2),
    "validation:1": ("training", ["{run}/checkpoints/epoch0000-batch000020"] * 2),
    # the second save, all files written: the main process publishes it unless it is the one killed
    "checkpoint_save:2": (
        "training",
        ["{run}/checkpoints/epoch0000-batch000005", "{run}/checkpoints/epoch0000-batch000010"],
    ),
}
# each of the two processes killed at each moment, and two more: 10 launches
KILLS = [(moment, rank) for moment in MOMENTS for rank in (0, 1)] + [("train_step:8", 1), ("start_up:1", 0)]


def kill_and_read(tmp_path, moment: str, killed: int, n: int):
    run_dir = tmp_path / f"kill{n}" / "run"
    run_dir.parent.mkdir()
    return run_dir, launch_two(ARGS, run_dir, HW3_CRASH_AT=f"{moment}@{killed}")


def test_a_lost_peer_is_one_line_and_exit_3_whoever_is_killed_whenever(tmp_path):
    with ThreadPoolExecutor(max_workers=2) as pool:
        launches = list(pool.map(lambda k: kill_and_read(tmp_path, *k[1], k[0]), enumerate(KILLS)))
    for (moment, killed), (run_dir, result) in zip(KILLS, launches, strict=True):
        survivor = 1 - killed
        phase, newest = MOMENTS[moment][0], MOMENTS[moment][1][killed]
        codes = exit_codes(result.err)
        assert codes == {killed: -9, survivor: 3}, f"{moment}@{killed}: {codes}\n{result.err[-3000:]}"
        errors = [line for line in result.err.splitlines() if line.startswith("error: ")]
        who = "process 1: " if survivor == 1 else ""
        assert len(errors) == 1, f"{moment}@{killed}: {result.err[-3000:]}"
        assert re.fullmatch(
            rf"error: {who}process {killed} \(pid \d+\) of 2 is gone during {phase}( \(.*\))?; the newest checkpoint "
            rf"is {re.escape(newest.format(run=run_dir))}; rerun the same command to resume",
            errors[0],
        ), f"{moment}@{killed}: {errors[0]}"
        assert "stopped by" not in result.err and f'File "{ROOT / "hw3"}' not in result.err  # no hw3 traceback


def test_workers_end_when_their_launcher_is_killed_and_the_same_command_resumes(tmp_path):
    """kill -9 of `accelerate launch`'s whole process group: torchrun put each worker in a session of its own, so
    they would train on; they get SIGTERM from the kernel instead (its parent died), checkpoint and end, which
    frees the run dir. The same command then resumes and finishes the run."""
    run_dir = tmp_path / "run"
    args = ["--recipe", RECIPES / "quickstart.yaml", "train.epochs=30", "log.trackers=[]"]
    cmd = [accelerate_bin(), "launch", "--config_file", CONFIG, ROOT / "train.py", *args, f"output_dir={run_dir}"]
    launcher = subprocess.Popen(
        [str(c) for c in cmd], cwd=tmp_path, env=child_env(), start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while not (run_dir / "checkpoints" / "epoch0000-batch000021").is_dir():  # training, past its first epoch
        assert launcher.poll() is None and time.monotonic() < deadline, launcher.communicate()[1][-3000:]
        time.sleep(0.05)
    os.killpg(launcher.pid, signal.SIGKILL)
    launcher.wait()
    killed_at = time.monotonic()
    while not lock_is_free(run_dir):  # the workers are gone once the kernel dropped their lock
        assert time.monotonic() - killed_at < 60, "the workers outlived their launcher by a minute"
        time.sleep(0.1)
    epochs_then = len(read_metrics(run_dir))
    assert epochs_then < 30
    resumed = launch_two(args, run_dir)
    assert resumed.code == 0, resumed.err[-3000:]
    assert "resuming from" in resumed.out
    assert len(read_metrics(run_dir)) == 30


def full_tmpfs(mount, free_kib: int):
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    with open(mount / "ballast", "wb", buffering=0) as f, suppress(OSError):
        while True:
            f.write(b"\0" * 4096)
    os.truncate(mount / "ballast", os.path.getsize(mount / "ballast") - free_kib * 1024)
    return mount


def test_a_full_disk_under_two_processes_is_said_once(tmp_path):
    disk = full_tmpfs(tmp_path / "disk", free_kib=64)  # room for the records, not for the best weights
    try:
        result = launch_two(ARGS, disk / "run")
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
    errors = [line for line in result.err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "failed (the disk is full: " in errors[0], result.err[-3000:]
    assert not errors[0].startswith("error: process 1")  # the main process said it
    assert set(exit_codes(result.err).values()) <= {4}, result.err[-3000:]
