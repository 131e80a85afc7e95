"""A sharded dataset streamed by 2 gloo processes through `accelerate launch`: each process its own part, every
sample once per epoch (with DataLoader workers too), a run killed mid-epoch resumed bit for bit, and a run
resumed on 1 process instead of 2 visiting every remaining sample of the epoch exactly once."""

import pytest
import torch
from safetensors.torch import load_file

from formats import damage_tar_sample
from helpers import RECIPES, deterministic, exit_codes, launch_two, read_metrics, run_subprocess

pytestmark = pytest.mark.multiproc

# 1,294 training digits in shards of 200: 647 a process, 21 steps of 32 each
ARGS = ["--recipe", RECIPES / "quickstart.yaml", "data.name=shards", "train.epochs=2", "log.trackers=[]",
        "train.checkpoint_every_steps=5", "data.num_workers=0"]  # fmt: skip


@pytest.fixture(scope="module")
def reference(tmp_path_factory, digit_shards):
    run_dir = tmp_path_factory.mktemp("ref") / "run"
    result = launch_two([*ARGS, f"data.path={digit_shards}"], run_dir)
    assert result.code == 0, result.err[-3000:]
    return run_dir


def train_reads(folder) -> dict[int, list[int]]:
    """{rank: training sample ids in the order that process read them} from HW3_TRACE_SAMPLES's files."""
    return {
        rank: [
            int(line.split()[1]) for line in (folder / f"rank{rank}.txt").read_text().splitlines() if "train-" in line
        ]
        for rank in (0, 1)
        if (folder / f"rank{rank}.txt").exists()
    }


def test_two_processes_read_their_own_shards_every_sample_once_per_epoch(digit_shards, tmp_path):
    trace = tmp_path / "trace"
    trace.mkdir()
    result = launch_two([*ARGS, f"data.path={digit_shards}", "data.num_workers=2", "data.shuffle_shards=1"],
                        tmp_path / "run", HW3_TRACE_SAMPLES=str(trace))  # fmt: skip
    assert result.code == 0, result.err[-3000:]
    reads = train_reads(trace)
    assert [len(reads[r]) for r in (0, 1)] == [2 * 647, 2 * 647]
    for epoch in range(2):
        parts = [set(reads[r][epoch * 647 : (epoch + 1) * 647]) for r in (0, 1)]
        assert parts[0].isdisjoint(parts[1]) and parts[0] | parts[1] == set(range(1294))
    shard_of = lambda i: i // 200  # noqa: E731 - the processes share at most the shards of one window: here one
    assert len({shard_of(i) for i in reads[0][:647]} & {shard_of(i) for i in reads[1][:647]}) <= 1


def test_killed_mid_epoch_then_the_same_command_ends_bit_for_bit(digit_shards, reference, tmp_path):
    args = [*ARGS, f"data.path={digit_shards}"]
    killed = launch_two(args, tmp_path / "run", HW3_CRASH_AT="train_step:30")  # epoch 1, after its step-25 save
    assert killed.code != 0
    resumed = launch_two(args, tmp_path / "run")
    assert resumed.code == 0, resumed.err[-3000:]
    assert "resuming from" in resumed.out and "epoch0001-batch000004" in resumed.out
    assert deterministic(read_metrics(tmp_path / "run")) == deterministic(read_metrics(reference))
    final = "checkpoints/epoch0001-batch000021/model.safetensors"
    mine, theirs = load_file(str(tmp_path / "run" / final)), load_file(str(reference / final))
    assert all(torch.equal(mine[k], theirs[k]) for k in theirs)


def test_resumed_on_one_process_instead_of_two_every_remaining_sample_once(digit_shards, tmp_path):
    args = [*ARGS, f"data.path={digit_shards}"]
    before, after = tmp_path / "before", tmp_path / "after"
    before.mkdir(), after.mkdir()
    killed = launch_two(args, tmp_path / "run", HW3_CRASH_AT="train_step:8", HW3_TRACE_SAMPLES=str(before))
    assert killed.code != 0  # its newest checkpoint: epoch 0, batch 5 (160 samples a process)
    resumed = run_subprocess([*args, f"output_dir={tmp_path / 'run'}"], tmp_path, HW3_TRACE_SAMPLES=str(after))
    assert resumed.code == 0, resumed.err[-3000:]
    assert "2 -> 1 processes in the middle of epoch 0: its 974 samples not yet seen are cut again for 1" in resumed.out
    seen = set(train_reads(before)[0][:160]) | set(train_reads(before)[1][:160])
    rest = train_reads(after)[0]
    assert len(rest) == 974 + 1294 and seen.isdisjoint(rest[:974]) and seen | set(rest[:974]) == set(range(1294))
    assert sorted(rest[974:]) == list(range(1294))  # the next epoch, whole, on one process
    assert [row["epoch"] for row in read_metrics(tmp_path / "run")] == [0, 1]


def test_unreadable_samples_are_counted_over_both_processes_against_the_limit(digit_shards, tmp_path):
    """One damaged sample in each of the 7 training shards: each process meets only those of its own part, fewer
    than data.max_bad_samples=6, but the run has met 7, so it stops in one line."""
    import shutil

    shards = tmp_path / "damaged"
    shutil.copytree(digit_shards, shards)
    for shard in sorted(shards.glob("train-*.tar")):
        damage_tar_sample(shard, 7)
    result = launch_two([*ARGS, f"data.path={shards}", "train.epochs=1", "data.max_bad_samples=6"], tmp_path / "run")
    assert result.code == 1 and set(exit_codes(result.err).values()) == {2}, result.err[-3000:]
    skipped = [line for line in result.err.splitlines() if line.startswith("warning: skipping an unreadable")]
    assert 0 < len(skipped) <= 7
    (line,) = [line for line in result.err.splitlines() if line.startswith("error: ")]
    assert line.startswith("error: data.max_bad_samples: 7 unreadable samples (over 6;")
