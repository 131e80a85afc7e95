"""What a run spends, counted: forward/backward passes and training time in metrics.jsonl and summary.json; a
budget of passes that gives every strategy the same compute; SAM variants resumed bit for bit (LookSAM's stored
vector, the interval's phase); symmetric label noise, seeded, on the training split only."""

import pytest
import torch
from safetensors.torch import load_file

from helpers import RECIPES, Killed, deterministic, kill_at, read_metrics, read_summary

QUICK = RECIPES / "quickstart.yaml"
BASE = ["--recipe", QUICK, "log.trackers=[]", "train.checkpoint_every_minutes=null"]
STEPS = [64] * 20 + [14]  # the quickstart's 1,294 training digits at 64: 21 steps per epoch


def expected_passes(epochs: int, full) -> float:
    """Passes over the training split when step s (from 0) costs 2 if full(s) else 1."""
    spent = sum(n * (2 if full(e * len(STEPS) + b) else 1) for e in range(epochs) for b, n in enumerate(STEPS))
    return spent / sum(STEPS)


@pytest.mark.parametrize(
    "overrides, full",
    [
        (["optim.name=sgd"], lambda s: False),
        (["optim.name=sam"], lambda s: True),
        (["optim.name=sam", "optim.sam_every=3"], lambda s: s % 3 == 0),
        (["optim.name=sam", "optim.sam_variant=looksam", "optim.sam_every=5"], lambda s: s % 5 == 0),
        (["optim.name=sam", "optim.sam_variant=momentum"], lambda s: False),
    ],
    ids=["sgd", "sam", "sam every 3", "looksam 5", "momentum sam"],
)
def test_passes_and_training_time_are_counted(train, tmp_path, overrides, full):
    assert train(*BASE, *overrides, "train.epochs=2", f"output_dir={tmp_path}").code == 0
    rows, summary = read_metrics(tmp_path), read_summary(tmp_path)
    assert [r["passes"] for r in rows] == pytest.approx([expected_passes(1, full), expected_passes(2, full)], abs=1e-12)
    assert summary["passes"] == rows[-1]["passes"]
    assert rows[-1]["train_time_s"] == pytest.approx(sum(r["epoch_time_s"] for r in rows))
    assert summary["train_time_s"] == rows[-1]["train_time_s"] and 0 < summary["train_time_s"] <= summary["wall_time_s"]


@pytest.mark.parametrize(
    "overrides, epochs",
    [
        (["optim.name=sgd"], 6),
        (["optim.name=sam"], 3),
        (["optim.name=sam", "optim.sam_every=2"], 4),
        (["optim.name=sam", "optim.sam_variant=looksam", "optim.sam_every=5"], 5),
        (["optim.name=sam", "optim.sam_variant=momentum"], 6),
    ],
    ids=["sgd", "sam", "sam every 2", "looksam 5", "momentum sam"],
)
def test_a_budget_of_passes_sets_the_epochs(overrides, epochs):
    from hw3.config import load_config

    assert load_config(None, [*overrides, "train.budget_passes=6"]).train.epochs == epochs


VARIANTS = {
    "sam every 3": ["optim.name=sam", "optim.sam_every=3"],
    "looksam 5": ["optim.name=sam", "optim.sam_variant=looksam", "optim.sam_every=5"],
    "momentum sam": ["optim.name=sam", "optim.sam_variant=momentum"],
    "m-sharpness 2": ["optim.name=sam", "optim.sam_batch_splits=2"],
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_variant_killed_mid_epoch_resumes_bit_for_bit(train, tmp_path, monkeypatch, variant):
    """Checkpoint at step 28 (every 7 steps), killed at 33: the resumed steps 28-32 are LookSAM's reuse steps
    (its vector comes from the checkpoint) and the interval's phase continues from the step counter."""
    args = [*BASE, *VARIANTS[variant], "train.epochs=2", "train.ema_decay=0.9"]
    assert train(*args, f"output_dir={tmp_path / 'whole'}").code == 0
    kill_at(monkeypatch, "train_step", 33)
    with pytest.raises(Killed):
        train(*args, "train.checkpoint_every_steps=7", f"output_dir={tmp_path / 'run'}")
    resumed = train(*args, "train.checkpoint_every_steps=7", f"output_dir={tmp_path / 'run'}")
    assert resumed.code == 0 and "epoch0001-batch000007" in resumed.out  # step 28 = epoch 1, batch 7
    assert deterministic(read_metrics(tmp_path / "run")) == deterministic(read_metrics(tmp_path / "whole"))
    assert [r["passes"] for r in read_metrics(tmp_path / "run")] == [
        r["passes"] for r in read_metrics(tmp_path / "whole")
    ]
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = (
            load_file(str(d / "checkpoints/epoch0001-batch000021" / name))
            for d in (tmp_path / "run", tmp_path / "whole")
        )
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_label_noise_flips_a_seeded_share_of_the_training_labels_only(tmp_path):
    from hw3.config import DataConfig
    from hw3.data.sources import load_source

    clean = load_source(DataConfig(name="digits"))
    noisy = load_source(DataConfig(name="digits", label_noise=0.4))
    again = load_source(DataConfig(name="digits", label_noise=0.4))
    flipped = noisy.train.labels != clean.train.labels
    assert int(flipped.sum()) == noisy.noisy_labels == round(0.4 * 1294) == 518  # each one moved to another class
    assert torch.equal(noisy.train.labels, again.train.labels)  # seeded
    assert torch.equal(noisy.val.labels, clean.val.labels) and torch.equal(noisy.test.labels, clean.test.labels)
    assert torch.equal(noisy.train.images, clean.train.images)
    moved_to = torch.bincount(noisy.train.labels[flipped], minlength=10)
    assert moved_to.min() > 0.5 * moved_to.float().mean()  # spread over the other classes, not one


def test_the_summary_records_the_label_noise(train, tmp_path):
    assert train(*BASE, "data.label_noise=0.2", "train.epochs=1", f"output_dir={tmp_path}").code == 0
    summary = read_summary(tmp_path)
    assert (summary["label_noise"], summary["noisy_labels"]) == (0.2, 259)
