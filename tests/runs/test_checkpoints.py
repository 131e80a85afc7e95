"""Checkpoints under real faults: mid-epoch checkpoints on a step or time interval (resumed bit for bit, counted
by keep_last), checkpoints that verify themselves (every kind of damage is named, and the newest older
checkpoint that verifies is used), and a full disk on a real tmpfs (one line, nothing partial left, everything
earlier intact, and the same command ends equal to an uninterrupted run once there is space again)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hw3.runs.checkpoints import list_checkpoints
from hw3.storage.manifest import verify

from helpers import RECIPES, ROOT, Killed, child_env, deterministic, kill_at, read_metrics, read_summary, run_subprocess

QUICK = RECIPES / "quickstart.yaml"
# Two epochs of 21 steps (1,294 digits at 64); no timed checkpoints unless a test asks for them.
BASE = ["--recipe", QUICK, "train.epochs=2", "log.trackers=[]", "train.checkpoint_every_minutes=null"]


def names(run_dir: Path) -> list[str]:
    return [p.name for p in list_checkpoints(run_dir)]


def same_weights(a: Path, b: Path, name: str = "model.safetensors") -> bool:
    wa, wb = load_file(str(a / name)), load_file(str(b / name))
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_checkpoints_every_n_steps_are_mid_epoch_and_count_in_keep_last(train, tmp_path):
    result = train(*BASE, "train.checkpoint_every_steps=5", "train.keep_last=3", f"output_dir={tmp_path / 'run'}")
    assert result.code == 0, result.err
    # steps 5, 10, 15, 20 of epoch 0, its end (21), then steps 25, 30, 35, 40 (batches 4, 9, 14, 19) and the end
    assert names(tmp_path / "run") == ["epoch0001-batch000014", "epoch0001-batch000019", "epoch0001-batch000021"]
    state = json.loads((tmp_path / "run/checkpoints/epoch0001-batch000019/trainer_state.json").read_text())
    assert (state["train"]["epoch"], state["train"]["batch"], state["train"]["step"]) == (1, 19, 40)


def test_checkpoints_every_n_minutes_are_agreed_at_the_hosts_looks(train, tmp_path):
    run_dir = tmp_path / "run"
    # 1e-6 minutes: due at every look (log.log_every=5); the look at an epoch's last step leaves it to the
    # end-of-epoch checkpoint that follows.
    result = train(
        *BASE, "train.checkpoint_every_minutes=1e-6", "log.log_every=5", "train.keep_last=20", f"output_dir={run_dir}"
    )
    assert result.code == 0, result.err
    assert names(run_dir) == [f"epoch0000-batch{b:06d}" for b in (5, 10, 15, 20, 21)] + [
        f"epoch0001-batch{b:06d}" for b in (4, 9, 14, 19, 21)
    ]


RICH = [*BASE, "train.ema_decay=0.9", "train.mixup=0.2", "data.augment=crop_flip", "data.crop_padding=1"]


def test_a_kill_after_an_interval_checkpoint_resumes_from_it_bit_for_bit(train, tmp_path, monkeypatch):
    reference = tmp_path / "reference"
    assert train(*RICH, f"output_dir={reference}").code == 0
    run_dir = tmp_path / "run"
    args = [*RICH, "train.checkpoint_every_steps=10", f"output_dir={run_dir}"]
    kill_at(monkeypatch, "train_step", 33)  # epoch 1, after the step-30 checkpoint
    with pytest.raises(Killed):
        train(*args)
    assert names(run_dir)[-1] == "epoch0001-batch000009"
    resumed = train(*args)
    assert resumed.code == 0, resumed.err
    assert "resuming from" in resumed.out and "epoch0001-batch000009" in resumed.out
    assert deterministic(read_metrics(run_dir)) == deterministic(read_metrics(reference))
    last = "checkpoints/epoch0001-batch000021"
    assert same_weights(run_dir / last, reference / last) and same_weights(
        run_dir / last, reference / last, "ema.safetensors"
    )
    assert read_summary(run_dir)["test_acc"] == read_summary(reference)["test_acc"]


# ----------------------------------------------------------------------------------------------------------
# Damage: each case breaks the newest checkpoint of a finished 2-epoch run; the rerun says what is wrong, moves
# it aside, resumes from the older one and ends where the undamaged run did.


def overwrite(name):
    def damage(folder: Path) -> None:
        data = bytearray((folder / name).read_bytes())
        middle = len(data) // 2
        data[middle : middle + 400] = bytes(400)
        (folder / name).write_bytes(bytes(data))

    return damage


def truncate(name):
    return lambda folder: (folder / name).write_bytes((folder / name).read_bytes()[:1000])


def delete(name):
    return lambda folder: (folder / name).unlink()


def rename_a_manifest_key(folder: Path) -> None:
    """One letter of the first "bytes" key changed, as `sed -i '0,/"bytes"/s//"bytez"/'` would (valid JSON)."""
    path = folder / "manifest.json"
    path.write_text(path.read_text().replace('"bytes"', '"bytez"', 1))


def shorten_history(folder: Path) -> None:
    path = folder / "trainer_state.json"
    state = json.loads(path.read_text())
    state["train"]["history"] = state["train"]["history"][:1]  # valid JSON, a run one epoch shorter
    path.write_text(json.dumps(state, indent=1))


DAMAGE = {
    "400 bytes overwritten in model.safetensors": (overwrite("model.safetensors"), "model.safetensors is damaged"),
    "400 bytes overwritten in optimizer.bin": (overwrite("optimizer.bin"), "optimizer.bin is damaged"),
    "model.safetensors truncated": (truncate("model.safetensors"), "model.safetensors has 1,000 bytes, "),
    "optimizer.bin truncated": (truncate("optimizer.bin"), "optimizer.bin has 1,000 bytes, "),
    "model.safetensors deleted": (delete("model.safetensors"), "model.safetensors is missing"),
    "an RNG state deleted": (delete("random_states_0.pkl"), "random_states_0.pkl is missing"),
    "trainer_state.json edited": (shorten_history, "trainer_state.json has "),
    "manifest.json deleted": (delete("manifest.json"), "manifest.json is missing (the save never finished)"),
    "a key of manifest.json changed": (rename_a_manifest_key, "manifest.json is damaged"),
}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    from hw3.cli.train import main

    run_dir = tmp_path_factory.mktemp("damage") / "finished"
    assert main([str(a) for a in [*BASE, f"output_dir={run_dir}"]]) == 0
    return run_dir


@pytest.mark.parametrize("case", DAMAGE)
def test_a_damaged_checkpoint_is_named_and_the_older_one_used(train, finished, tmp_path, case):
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    newest, older = run_dir / "checkpoints/epoch0001-batch000021", run_dir / "checkpoints/epoch0000-batch000021"
    damage, expected = DAMAGE[case]
    damage(newest)
    result = train(*BASE, f"output_dir={run_dir}")
    assert result.code == 0, result.err
    warnings = [line for line in result.err.splitlines() if line.startswith("warning: checkpoint")]
    assert len(warnings) == 1 and warnings[0].startswith(f"warning: checkpoint {newest}: {expected}"), result.err
    assert warnings[0].endswith("; moved aside to damaged-epoch0001-batch000021, using an older one")
    assert f"resuming from {older} (epoch 1, batch 0)" in result.out
    assert (run_dir / "checkpoints/damaged-epoch0001-batch000021").is_dir()  # kept for a look
    assert deterministic(read_metrics(run_dir)) == deterministic(read_metrics(finished))
    assert same_weights(newest, finished / "checkpoints/epoch0001-batch000021") and verify(newest) is None


def test_when_no_checkpoint_verifies_the_same_command_starts_the_run_over(train, finished, tmp_path):
    """An unfinished run (no summary yet) whose every checkpoint is damaged: one line, the damaged ones kept
    aside, and the run trained again from epoch 0 to the same end as the undamaged run."""
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    (run_dir / "summary.json").unlink()
    overwrite("model.safetensors")(run_dir / "checkpoints/epoch0001-batch000021")
    delete("optimizer.bin")(run_dir / "checkpoints/epoch0000-batch000021")
    result = train(*BASE, f"output_dir={run_dir}")
    assert result.code == 0, result.err
    assert result.err.strip() == (
        f"warning: no checkpoint in {run_dir / 'checkpoints'} verifies (epoch0001-batch000021: model.safetensors "
        "is damaged (its checksum does not match); epoch0000-batch000021: optimizer.bin is missing); they are moved "
        "aside (damaged-*) and the run starts over from epoch 0"
    )
    aside = sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.name.startswith("damaged-"))
    assert aside == ["damaged-epoch0000-batch000021", "damaged-epoch0001-batch000021"]
    assert deterministic(read_metrics(run_dir)) == deterministic(read_metrics(finished))
    assert read_summary(run_dir)["test_acc"] == read_summary(finished)["test_acc"]


def test_a_finished_run_whose_checkpoints_are_all_damaged_is_still_complete(train, finished, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    for name in names(run_dir):
        delete("optimizer.bin")(run_dir / "checkpoints" / name)
    result = train(*BASE, f"output_dir={run_dir}")
    assert result.code == 0, result.err
    assert f"{run_dir} is complete (2 epochs" in result.out and "nothing to do" in result.out
    assert names(run_dir) == ["epoch0000-batch000021", "epoch0001-batch000021"]  # nothing moved or deleted
    assert read_summary(run_dir) == read_summary(finished)


def test_evaluate_and_load_model_verify_the_weights(finished, tmp_path, capsys):
    import hw3
    from hw3.cli.evaluate import main as evaluate_main
    from hw3.errors import UserError

    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    overwrite("model.safetensors")(run_dir / "best")
    assert evaluate_main([str(run_dir)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {run_dir / 'best'}: model.safetensors is damaged (its checksum does not match); these weights "
        "cannot be trusted"
    )
    with pytest.raises(UserError, match="model.safetensors is damaged"):
        hw3.load_model(str(run_dir))
    truncate("model.safetensors")(run_dir / "checkpoints/epoch0001-batch000021")
    assert evaluate_main([str(run_dir), "--checkpoint", "last"]) == 2
    assert "model.safetensors has 1,000 bytes, " in capsys.readouterr().err


def test_resuming_an_older_checkpoint_sets_the_newer_ones_aside_and_ends_as_the_run_did(train, finished, tmp_path):
    """train.resume=<epoch 0's checkpoint> in the run's own dir: epoch 1 is trained again. Its old checkpoint is
    moved aside (superseded-*), kept, so that the new saves, not the old course of the run, are what the pruning
    keeps and the next launch resumes."""
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    older = run_dir / "checkpoints/epoch0000-batch000021"
    result = train(*BASE, "train.keep_last=1", f"train.resume={older}", f"output_dir={run_dir}")
    assert result.code == 0, result.err
    assert result.err.strip() == (
        f"warning: checkpoint {run_dir / 'checkpoints/epoch0001-batch000021'} is newer than train.resume's; moved "
        "aside to superseded-epoch0001-batch000021"
    )
    assert names(run_dir) == ["epoch0001-batch000021"]  # the new save, which keep_last=1 keeps
    assert same_weights(
        run_dir / "checkpoints/superseded-epoch0001-batch000021", finished / "checkpoints/epoch0001-batch000021"
    )
    assert same_weights(run_dir / "checkpoints/epoch0001-batch000021", finished / "checkpoints/epoch0001-batch000021")
    assert deterministic(read_metrics(run_dir)) == deterministic(read_metrics(finished))


@pytest.mark.parametrize(
    "folder, new",
    [
        ("best", "best.new"),
        ("checkpoints/epoch0001-batch000021", "checkpoints/.tmp-epoch0001-batch000021"),
    ],
)
def test_a_crash_between_the_two_renames_of_a_publish_is_finished_at_the_next_launch(
    train, finished, tmp_path, folder, new
):
    """A folder replaced by another of its name (best/ by better weights, a checkpoint saved again at the same
    position) goes by two renames: the old one aside, the new one in. Killed between them, the next launch
    finishes the swap before deciding anything: the run is still complete, nothing is started over or lost."""
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    final = run_dir / folder
    shutil.copytree(final, run_dir / new)  # the new one, complete ...
    os.replace(final, final.with_name(f".{final.name}.old"))  # ... and the old one aside, no folder of the name
    result = train(*BASE, f"output_dir={run_dir}")
    assert result.code == 0, result.err
    assert result.out.startswith(f"{run_dir} is complete (done: 2 epochs") and "nothing to do" in result.out
    assert verify(final) is None and same_weights(final, finished / folder)
    assert not (run_dir / new).exists() and not final.with_name(f".{final.name}.old").exists()
    assert names(run_dir) == ["epoch0000-batch000021", "epoch0001-batch000021"]


# ----------------------------------------------------------------------------------------------------------
# A full disk, for real: the run dir on a small tmpfs. The run pauses itself (SIGSTOP) right after its first
# checkpoint; the test then fills the file system up to `free` bytes and lets it go on.


@pytest.fixture
def tmpfs(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(mount: Path, free: int) -> Path:
    """A ballast file leaving `free` bytes (page-rounded) on the file system."""
    stat = os.statvfs(mount)
    ballast = mount / "ballast"
    with open(ballast, "wb") as f:
        f.truncate(0)
        f.write(bytes(max(0, stat.f_bavail * stat.f_frsize - free)))
    return ballast


def run_until_full(args, cwd: Path, mount: Path, free: int) -> tuple[subprocess.CompletedProcess, Path]:
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *map(str, args)],
        cwd=cwd,
        env=child_env(HW3_CRASH_AT="after_save:1:STOP"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] != "T":
        assert time.monotonic() < deadline and proc.poll() is None, "the run never reached its first checkpoint"
        time.sleep(0.05)
    ballast = fill(mount, free)
    proc.send_signal(signal.SIGCONT)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(args, proc.returncode, out, err), ballast


DISK_ARGS = ["--recipe", QUICK, "train.epochs=3", "log.trackers=[]", "train.checkpoint_every_minutes=null"]


@pytest.fixture(scope="module")
def on_disk(tmp_path_factory):
    """The uninterrupted run, in a child process like the runs it is compared with (same threads, same sums)."""
    run_dir = tmp_path_factory.mktemp("disk") / "reference"
    result = run_subprocess([*DISK_ARGS, f"output_dir={run_dir}"], cwd=ROOT)
    assert result.code == 0, result.err
    return run_dir


@pytest.mark.parametrize(
    "free, failing",
    [
        (48 << 10, "best weights: writing {run}/best.new/model.safetensors"),
        (200 << 10, "checkpoint: writing {run}/checkpoints/.tmp-epoch0001-batch000021/optimizer.bin"),
    ],
    ids=["best weights", "checkpoint"],
)
def test_a_full_disk_is_one_line_and_the_same_command_resumes_after_space_is_freed(
    tmpfs, on_disk, tmp_path, free, failing
):
    run_dir = tmpfs / "run"
    args = [*DISK_ARGS, f"output_dir={run_dir}"]
    result, ballast = run_until_full(args, tmp_path, tmpfs, free)
    assert result.returncode == 4, result.stderr[-3000:]  # hw3.errors: the run dir could not be written
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {failing.format(run=run_dir)} failed (the disk is full: ")
    assert " MiB free)" in lines[0] and "Traceback" not in result.stderr
    # nothing partial; the first checkpoint and best/ intact
    assert not list((run_dir / "checkpoints").glob(".tmp-*")) and not list(run_dir.glob("best.*"))
    assert names(run_dir) == ["epoch0000-batch000021"] and verify(run_dir / "checkpoints/epoch0000-batch000021") is None
    assert verify(run_dir / "best") is None
    ballast.unlink()
    resumed = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *map(str, args)],
        cwd=tmp_path,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert deterministic(read_metrics(run_dir)) == deterministic(read_metrics(on_disk))
    last = "checkpoints/epoch0002-batch000021"
    assert same_weights(run_dir / last, on_disk / last) and same_weights(run_dir / "best", on_disk / "best")
