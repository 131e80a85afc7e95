"""python -m hw3.sweep: a 2 x 2 grid x 2 seeds on the digits, its statistics against the runs' own summary.json,
a half-finished sweep resumed, commands for a cluster scheduler, and one-line errors before any run starts."""

import json
import shlex
import shutil
import statistics
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from hw3.cli.report import main as report_main
from hw3.cli.sweep import main as sweep_main
from hw3.runs.checkpoints import list_checkpoints

from helpers import RECIPES, ROOT, child_env, read_summary

QUICK = str(RECIPES / "quickstart.yaml")
GRID = ["--grid", "optim.name=sgd,adamw", "--grid", "optim.lr=0.003,0.03"]
COMMON = ["model.name=simple_mlp", "train.epochs=2", "log.trackers=[]"]
COMBINATIONS = [
    "optim.name-sgd_optim.lr-0.003",
    "optim.name-sgd_optim.lr-0.03",
    "optim.name-adamw_optim.lr-0.003",
    "optim.name-adamw_optim.lr-0.03",
]


def sweep(out, *extra, parallel=2):
    return sweep_main(
        ["--recipe", QUICK, *GRID, "--seeds", "2", "--out", str(out), "--parallel", str(parallel), *extra]
    )


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "optim"
    assert sweep(out, *COMMON) == 0
    return out


def test_every_combination_and_seed_is_an_ordinary_run(swept):
    names = sorted(p.name for p in swept.iterdir() if (p / "summary.json").is_file())
    assert names == sorted(f"{c}-s{s}" for c in COMBINATIONS for s in (0, 1))
    for name in names:
        config = (swept / name / "config.yaml").read_text()
        assert f"seed: {name[-1]}" in config and "name: simple_mlp" in config
    assert read_summary(swept / "optim.name-adamw_optim.lr-0.03-s1")["optimizer_steps"] == 2 * 21


def test_the_statistics_are_those_of_the_runs_summaries(swept):
    sweep_json = json.loads((swept / "sweep.json").read_text())
    assert sweep_json["monitor"] == "val_acc" and sweep_json["seeds"] == 2
    entries = {e["combination"]: e for e in sweep_json["combinations"]}
    assert set(entries) == set(COMBINATIONS)
    for combination, entry in entries.items():
        summaries = [read_summary(swept / f"{combination}-s{s}") for s in (0, 1)]
        assert entry["n"] == 2 and entry["params"]["optim.name"] in combination
        for metric in ("best_val_acc", "test_acc", "best_val_loss", "passes", "train_time_s"):
            values = [s[metric] for s in summaries]
            assert entry[f"{metric}_mean"] == pytest.approx(statistics.fmean(values), abs=1e-12)
            assert entry[f"{metric}_std"] == pytest.approx(statistics.stdev(values), abs=1e-12)
            assert (entry[f"{metric}_min"], entry[f"{metric}_max"]) == (min(values), max(values))
        assert entry["wall_time_s_mean"] == pytest.approx(statistics.fmean(s["wall_time_s"] for s in summaries))
    means = [e["best_val_acc_mean"] for e in sweep_json["combinations"]]
    assert means == sorted(means, reverse=True)  # sorted by the monitored metric, best first


def test_the_markdown_and_the_plot(swept):
    table = (swept / "sweep.md").read_text()
    best = json.loads((swept / "sweep.json").read_text())["combinations"][0]
    row = next(line for line in table.splitlines() if line.startswith(f"| {best['combination']} |"))
    assert f"{best['test_acc_mean']:.2%} ± {best['test_acc_std'] * 100:.2f}" in row and "| 2 |" in row
    assert f"| {best['passes_mean']:.2f} | " in row  # both seeds spent 2 passes over the data: no ± 0.00
    for plot in ("sweep_val_acc.png", "sweep_cost.png"):
        image = np.asarray(Image.open(swept / plot).convert("L"), dtype=np.float64)
        assert min(image.shape) >= 400 and image.std() > 10


def test_a_half_finished_sweep_continues_and_skips_what_is_done(swept, tmp_path, capsys):
    out = tmp_path / "optim"
    shutil.copytree(swept, out)
    shutil.rmtree(out / "optim.name-sgd_optim.lr-0.03-s1")  # never started
    interrupted = out / "optim.name-adamw_optim.lr-0.003-s0"  # killed after its first epoch
    (interrupted / "summary.json").unlink()
    shutil.rmtree(list_checkpoints(interrupted)[-1])
    untouched = (out / "optim.name-sgd_optim.lr-0.003-s0" / "summary.json").stat().st_mtime_ns
    capsys.readouterr()
    assert sweep(out, *COMMON) == 0
    assert "8 runs: 6 complete, 2 to run, 2 at a time" in capsys.readouterr().out
    assert (out / "optim.name-sgd_optim.lr-0.003-s0" / "summary.json").stat().st_mtime_ns == untouched
    for name in (
        "optim.name-sgd_optim.lr-0.03-s1",
        "optim.name-adamw_optim.lr-0.003-s0",
    ):  # resumed or redone: the same numbers
        again, before = read_summary(out / name), read_summary(swept / name)
        assert (again["test_acc"], again["best_val_acc"]) == (before["test_acc"], before["best_val_acc"])
    numbers = [entries_without_time(d / "sweep.json") for d in (out, swept)]
    assert numbers[0] == numbers[1]


def entries_without_time(sweep_json):
    """A sweep's statistics but the times, which a rerun does not reproduce."""
    entries = json.loads(sweep_json.read_text())["combinations"]
    return [{k: v for k, v in e.items() if not k.startswith(("wall_time_s", "train_time_s"))} for e in entries]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--grid", "optim.lrr=0.1,0.2"], "unknown key 'optim.lrr' (did you mean 'optim.lr'?)"),
        (["--grid", "train.epochs=two,3"], "train.epochs: expected an integer, got 'two'"),
        (["--grid", "optim.lr=0.1,0.2", "optim.lr=0.5"], "'optim.lr' is given twice: in --grid and as an override"),
        (["--grid", "optim.lr=0.1", "--grid", "optim.lr=0.2"], "--grid: 'optim.lr' is given twice"),
        (["--grid", "seed=1,2"], "'seed' is set by the sweep"),
        (["--grid", "optim.lr"], "--grid 'optim.lr': write KEY=V1,V2"),
    ],
)
def test_grid_mistakes_are_one_line_before_any_run(tmp_path, capsys, args, message):
    code = sweep_main(["--recipe", QUICK, "--seeds", "2", "--out", str(tmp_path / "s"), *args])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: ") and message in err
    assert not (tmp_path / "s").exists()


def test_commands_for_a_cluster_and_a_report_of_what_finished(tmp_path, capsys):
    out = tmp_path / "smoke"
    args = ["--recipe", QUICK, "--grid", "optim.name=sgd,sam", "--seeds", "2", "--out", str(out), "smoke=true"]
    assert sweep_main([*args, "--print-commands"]) == 0
    commands = capsys.readouterr().out.strip().splitlines()
    assert len(commands) == 4 and not any(p.is_dir() for p in out.iterdir())
    assert commands[0] == shlex.join(
        [
            "python",
            "-m",
            "hw3.cli",
            "--recipe",
            QUICK,
            "smoke=true",
            "optim.name=sgd",
            "seed=0",
            f"output_dir={out}/optim.name-sgd-s0",
        ]
    )
    one = shlex.split(commands[3])  # as a scheduler would run it
    done = subprocess.run([sys.executable, *one[1:]], cwd=ROOT, env=child_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert report_main([str(out), "--out", str(out.parent / "reports" / "smoke.md")]) == 0
    assert (out.parent / "reports" / "smoke_val_acc.png").is_file()  # --out is where the table and plot go
    assert "optim.name-sam" in (out.parent / "reports" / "smoke.md").read_text()
    assert report_main([str(out)]) == 0
    entries = {e["combination"]: e for e in json.loads((out / "sweep.json").read_text())["combinations"]}
    assert (entries["optim.name-sam"]["n"], entries["optim.name-sgd"]["n"]) == (1, 0)
    assert entries["optim.name-sam"]["runs"] == [
        "optim.name-sam-s1"
    ] and "| optim.name-sgd | sgd | 0 | - | - | - | - |" in (capsys.readouterr().out)


def test_parallel_runs_get_a_gpu_each_or_a_share_of_the_cpu(monkeypatch):
    import os

    import torch

    from hw3.errors import UserError
    from hw3.experiments.launch import slot_environments

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert [env["OMP_NUM_THREADS"] for env in slot_environments(3)] == ["2", "2", "2"]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")
    assert [env["CUDA_VISIBLE_DEVICES"] for env in slot_environments(2)] == ["4", "6"]
    with pytest.raises(UserError, match="--parallel 3: one run per GPU, and this machine has 2"):
        slot_environments(3)


def test_two_sweeps_on_one_dir_share_the_work_and_a_third_finds_it_done(tmp_path, capsys):
    """Two real sweeps started 0.3 s apart on one --out: every run is trained once (the run-dir lock claims it),
    none is reported failed, both print the whole table, and the logs are appended, never truncated."""
    out = tmp_path / "shared"
    args = ["--recipe", QUICK, "--grid", "optim.name=sgd,adamw", "--seeds", "2", "--out", str(out), "--parallel", "1"]
    args += ["optim.lr=0.01", "train.epochs=2", "model.name=simple_mlp", "log.trackers=[]"]
    cmd = [sys.executable, "-m", "hw3.sweep", *args]
    first = subprocess.Popen(
        cmd, cwd=ROOT, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    time.sleep(0.3)
    second = subprocess.Popen(
        cmd, cwd=ROOT, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    outputs = [p.communicate(timeout=600)[0] for p in (first, second)]
    assert [first.returncode, second.returncode] == [0, 0], outputs
    for output in outputs:
        assert "failed" not in output
        assert output.count("| 2 |") == 2  # both combinations with both seeds, in each sweep's table
    runs = sorted(p for p in out.iterdir() if (p / "summary.json").is_file())
    assert len(runs) == 4
    for run_dir in runs:
        assert (run_dir / "command.txt").read_text().count("argv: ") == 1  # trained once, by one of the sweeps
        log = (out / "logs" / f"{run_dir.name}.log").read_bytes()
        assert b"\0" not in log and log.count(b" sweep pid ") == 1  # launched once: no refused launch either
    assert sweep_main(args) == 0
    assert "4 runs: 4 complete, 0 to run, 1 at a time" in capsys.readouterr().out


def test_strategies_are_named_bundles_of_overrides(tmp_path, capsys):
    out = tmp_path / "strategies"
    args = ["--recipe", QUICK, "--seeds", "1", "--out", str(out), "--grid", "data.label_noise=0,0.2", "smoke=true"]
    strategies = ["--strategy", "sgd=optim.name=sgd", "--strategy", "sam-5=optim.name=sam optim.sam_every=5"]
    assert sweep_main([*args, *strategies, "--print-commands"]) == 0
    commands = [shlex.split(c) for c in capsys.readouterr().out.strip().splitlines()]
    assert [c[-1] for c in commands] == [
        f"output_dir={out}/{name}-s0"
        for name in (
            "sgd_data.label_noise-0",
            "sgd_data.label_noise-0.2",
            "sam-5_data.label_noise-0",
            "sam-5_data.label_noise-0.2",
        )
    ]
    assert commands[3][5:-2] == ["smoke=true", "optim.name=sam", "optim.sam_every=5", "data.label_noise=0.2"]
    plan = json.loads((out / "sweep_plan.json").read_text())
    assert plan["grid"] == {"strategy": ["sgd", "sam-5"], "data.label_noise": ["0", "0.2"]}
    for bad, message in (
        ("sam=optim.name", "'optim.name' is not KEY=V, or sets a key given elsewhere"),
        ("sam=data.label_noise=0.1", "'data.label_noise=0.1' is not KEY=V, or sets a key given elsewhere"),
        ("=optim.name=sam", "--strategy '=optim.name=sam': write NAME=KEY=V"),
    ):
        assert sweep_main([*args, "--strategy", bad, "--print-commands"]) == 2
        assert message in capsys.readouterr().err
