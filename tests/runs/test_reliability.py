"""Safe loading, secrets, failed saves and fp16 loss-scale collapse."""

import errno
import pickle

import pytest
import torch
from accelerate import Accelerator

from hw3.config import OptimConfig, TrainConfig
from hw3.engine.boundary import NonFinite, look_at_device
from hw3.runs.checkpoints import list_checkpoints
from hw3.storage.manifest import write_manifest

from helpers import RECIPES, read_summary, step, tiny_run

QUICK = RECIPES / "quickstart.yaml"


def test_secrets_from_the_environment_are_never_written(train, tmp_path, monkeypatch):
    secret = "sk-hw3-test-secret-4711"
    monkeypatch.setenv("WANDB_API_KEY", secret)
    monkeypatch.setenv("HF_TOKEN", secret)
    result = train(
        "--recipe", QUICK, "train.epochs=1", "log.trackers=[tensorboard, wandb]", f"output_dir={tmp_path / 'run'}"
    )
    assert result.code == 0, result.err
    files = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert len(files) > 10
    assert not [p for p in files if secret.encode() in p.read_bytes()]
    assert secret not in result.out + result.err


def test_a_failed_save_is_reported_and_keeps_the_previous_checkpoint(train, tmp_path, monkeypatch):
    real, calls = Accelerator.save_state, {"n": 0}

    def flaky(self, output_dir=None, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, output_dir, **kwargs)

    monkeypatch.setattr(Accelerator, "save_state", flaky)
    result = train("--recipe", QUICK, "train.epochs=3", f"output_dir={tmp_path / 'run'}")
    assert result.code == 4, result.err
    assert "error: checkpoint: writing " in result.err and "the disk is full: No space left on device" in result.err
    assert "and best/ are kept; free some space and rerun the same command" in result.err
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["epoch0000-batch000021"]
    monkeypatch.setattr(Accelerator, "save_state", real)
    resumed = train("--recipe", QUICK, "train.epochs=3", f"output_dir={tmp_path / 'run'}")
    assert resumed.code == 0 and read_summary(tmp_path / "run")["epochs_completed"] == 3


class Exploit:
    def __reduce__(self):
        return (open, ("/tmp/hw3-pwned", "w"))


def test_a_tampered_checkpoint_is_refused_without_running_its_code(train, tmp_path):
    import os

    assert train("--recipe", QUICK, "train.epochs=1", f"output_dir={tmp_path / 'run'}").code == 0
    ckpt = list_checkpoints(tmp_path / "run")[-1]
    (ckpt / "optimizer.bin").write_bytes(pickle.dumps({"state": Exploit()}))
    if os.path.exists("/tmp/hw3-pwned"):
        os.remove("/tmp/hw3-pwned")
    args = ["--recipe", QUICK, "train.epochs=2", "train.extend_epochs=true", f"output_dir={tmp_path / 'run'}"]
    result = train(*args)
    assert result.code == 2 and "optimizer.bin has " in result.err  # the manifest no longer matches
    write_manifest(ckpt)  # a forger who also rewrites the manifest still gets no code run
    result = train(*args)
    assert result.code == 2 and "refusing to unpickle" in result.err
    assert not os.path.exists("/tmp/hw3-pwned")


def test_trust_remote_code_is_only_passed_when_the_recipe_asks(monkeypatch, tmp_path):
    import datasets

    from hw3.config import DataConfig
    from hw3.data.sources import DATASETS
    from hw3.errors import UserError

    seen = []

    def fake_load(path, **kwargs):
        seen.append(kwargs)
        raise FileNotFoundError("stop here")

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    for flag in (False, True):
        with pytest.raises(UserError, match="stop here"):
            DATASETS.get("hf")(DataConfig(name="hf", path="someone/dataset", trust_remote_code=flag))
    assert "trust_remote_code" not in seen[0] and seen[1]["trust_remote_code"] is True


def test_fp16_loss_scale_collapse_is_reported(tmp_path):
    """A real GradScaler (on the CPU, without autocast): each non-finite step halves the scale and is skipped on
    the device; the host finds out at its next look, and the message says where the scale went."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    x[0, 0] = float("nan")
    r = tiny_run(model, OptimConfig(name="sgd", lr=0.1), TrainConfig(max_bad_steps=4), scaler_scale=2.0**16)
    r.run_dir = tmp_path
    before = [p.detach().clone() for p in model.parameters()]
    for _ in range(3):
        step(r, (x, y))
    look_at_device(r, None)  # 3 in a row: still under the limit
    step(r, (x, y))
    with pytest.raises(NonFinite, match=r"4 consecutive non-finite steps .*fp16 loss scale fell to 4096"):
        look_at_device(r, None)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_an_error_in_a_save_that_is_not_a_failed_write_is_not_reported_as_one(train, tmp_path, monkeypatch):
    """Only write failures are write failures (exit 4, "free some space"): an out-of-memory error in the middle of
    a save is raised as what it is."""
    import accelerate

    def out_of_memory(self, *args, **kwargs):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(accelerate.Accelerator, "save_state", out_of_memory)
    with pytest.raises(RuntimeError, match="out of memory"):
        train("--recipe", QUICK, "train.epochs=1", "log.trackers=[]", f"output_dir={tmp_path / 'run'}")


def test_a_lost_peer_is_recognised_by_what_torch_raises_not_by_words():
    """A RuntimeError that mentions gloo or a timeout is not a lost peer unless torch raised it for a collective
    (hw3.dist.peers); torch's own DistError always is."""
    import torch.distributed

    from hw3.dist.peers import raised_by_collective

    def raise_it(error):
        try:
            raise error
        except Exception as e:
            return e

    assert not raised_by_collective(raise_it(RuntimeError("gloo: Connection reset by peer; Timed out")))
    assert not raised_by_collective(raise_it(torch.OutOfMemoryError("NCCL out of memory")))
    assert raised_by_collective(raise_it(torch.distributed.DistNetworkError("a peer closed the connection")))
