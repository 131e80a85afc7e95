"""python -m hw3.evaluate and python -m hw3.report on runs the tests make."""

import csv
import json

import numpy as np
import pytest
from PIL import Image

from hw3.cli.evaluate import main as evaluate_main
from hw3.cli.report import main as report_main

from helpers import RECIPES, read_summary

QUICK = RECIPES / "quickstart.yaml"


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    from hw3.cli.train import main

    tmp = tmp_path_factory.mktemp("eval")
    assert main(["--recipe", str(QUICK), "train.epochs=3", f"output_dir={tmp / 'adamw'}"]) == 0
    assert (
        main(
            [
                "--recipe",
                str(QUICK),
                "train.epochs=3",
                "optim.name=sam",
                "optim.lr=0.05",
                "optim.base=sgd",
                "train.label_smoothing=0.1",
                f"output_dir={tmp / 'sam'}",
            ]
        )
        == 0
    )
    return tmp


def assert_real_png(path, min_side=400):
    image = np.asarray(Image.open(path).convert("L"), dtype=np.float64)
    assert min(image.shape) >= min_side, image.shape
    assert image.std() > 10  # not blank
    assert len(np.unique(image)) > 20


def test_evaluate_best_on_test_matches_the_training_summary(finished, capsys):
    assert evaluate_main([str(finished / "adamw")]) == 0
    out = finished / "adamw" / "eval" / "test-best"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["acc"] == pytest.approx(read_summary(finished / "adamw")["test_acc"], abs=1e-9)
    assert metrics["top5_acc"] >= metrics["acc"] and metrics["count"] == 359
    with open(out / "per_class.csv") as f:
        per_class = list(csv.DictReader(f))
    assert [r["class"] for r in per_class] == [str(i) for i in range(10)]
    assert sum(int(r["correct"]) for r in per_class) == round(metrics["acc"] * 359)
    with open(out / "confusion.csv") as f:
        rows = list(csv.reader(f))
    assert len(rows) == 11 and sum(int(v) for r in rows[1:] for v in r[1:]) == 359
    assert_real_png(out / "confusion.png")
    assert "top-1" in capsys.readouterr().out


def test_evaluate_uses_the_mixed_precision_the_run_was_tested_in(train, tmp_path):
    """A bf16 run (bf16 autocast works on CPUs) is evaluated under bf16 again, so hw3.evaluate reproduces the
    summary's test figures exactly, and says which precision it used."""
    run_dir = tmp_path / "bf16"
    assert train("--recipe", QUICK, "train.epochs=1", "train.mixed_precision=bf16", f"output_dir={run_dir}").code == 0
    assert evaluate_main([str(run_dir)]) == 0
    metrics = json.loads((run_dir / "eval" / "test-best" / "metrics.json").read_text())
    summary = read_summary(run_dir)
    assert metrics["mixed_precision"] == summary["mixed_precision"] == "bf16"
    assert (metrics["acc"], metrics["loss"]) == (summary["test_acc"], summary["test_loss"])


def test_evaluate_last_checkpoint_on_val_and_errors(finished, capsys):
    assert evaluate_main([str(finished / "sam"), "--split", "val", "--checkpoint", "last", "--device", "cpu"]) == 0
    assert json.loads((finished / "sam" / "eval" / "val-last" / "metrics.json").read_text())["count"] == 144
    assert evaluate_main([str(finished / "nope")]) == 2
    assert evaluate_main([str(finished / "sam"), "--checkpoint", str(finished / "missing.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.count("error: ") == 2 and "Traceback" not in err


def test_report_table_and_curves(finished, tmp_path, capsys):
    out = tmp_path / "report" / "report.md"
    assert report_main([str(finished / "adamw"), str(finished / "sam"), "--out", str(out)]) == 0
    text = out.read_text()
    assert (
        "| run | strategy | model | pretrained | image size | epochs | best val acc | test acc | passes | train time "
        "| wall time | hardware |" in text
    )
    sam_row = next(line for line in text.splitlines() if line.startswith("| sam |"))
    assert "SAM rho 0.05 + sgd" in sam_row and "label smoothing 0.1" in sam_row and "| 3/3 |" in sam_row
    test_acc = read_summary(finished / "sam")["test_acc"]
    assert f"{test_acc:.2%}" in sam_row
    for name in ("report_loss.png", "report_accuracy.png"):
        assert_real_png(out.parent / name, min_side=400)


def test_report_reads_a_run_in_progress(finished, tmp_path):
    import shutil

    from hw3.runs.lock import RunDirLock

    running = tmp_path / "running"
    shutil.copytree(finished / "adamw", running)
    (running / "summary.json").unlink()
    out = tmp_path / "r.md"
    held = RunDirLock(running)  # as the launch training it would
    try:
        assert report_main([str(running), "--out", str(out)]) == 0
    finally:
        held.release()
    assert "| 3/3 (running) |" in out.read_text()


def test_the_confusion_plot_names_the_split_and_the_weights(finished, monkeypatch):
    import hw3.inference.evaluate

    titles = []
    monkeypatch.setattr(
        hw3.inference.evaluate, "plot_confusion", lambda confusion, classes, path, title: titles.append(title)
    )
    assert evaluate_main([str(finished / "adamw"), "--checkpoint", "last"]) == 0
    accuracy = json.loads((finished / "adamw" / "eval" / "test-last" / "metrics.json").read_text())["acc"]
    assert titles == [f"test split, last weights: top-1 {accuracy:.2%}"]


def test_the_strategy_shows_whatever_else_differs_and_smoke_runs_say_so(finished, tmp_path):
    import shutil

    import yaml

    for name, change in (("small", None), ("scheduled", {0: 16, 2: 64}), ("smoke", "smoke")):
        shutil.copytree(finished / "adamw", tmp_path / name)
        config = yaml.safe_load((tmp_path / name / "config.yaml").read_text())
        if change == "smoke":
            config["smoke"], config["model"]["pretrained"] = True, True
        else:
            config["train"]["batch_size_schedule"] = change
        (tmp_path / name / "config.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "r.md"
    assert report_main([str(tmp_path / n) for n in ("small", "scheduled", "smoke")] + ["--out", str(out)]) == 0
    rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in out.read_text().splitlines()[4:7]}
    assert rows["small"][1] == "adamw, lr 0.003, cosine, train.batch_size_schedule=None"
    assert rows["scheduled"][1] == "adamw, lr 0.003, cosine, train.batch_size_schedule={0: 16, 2: 64}"
    smoke = rows["smoke (smoke: synthetic data, random weights)"]
    assert smoke[3] == "no"  # smoke mode never loads pretrained weights


def test_a_checkpoint_that_does_not_exist_is_named_as_such(finished, capsys):
    assert evaluate_main([str(finished / "adamw"), "--checkpoint", "bogus"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: --checkpoint bogus: no such file or folder (give best, last, a checkpoint folder or a "
        "model.safetensors)"
    )


def test_report_says_how_a_stopped_run_stands_and_its_image_size(train, tmp_path, monkeypatch):
    """A run SIGTERMed in its second epoch is neither running nor finished: stopped, resumable; and its input
    size is its size in px, not "native"."""
    import os
    import signal

    from helpers import at_crash_point

    run_dir = tmp_path / "stopped"
    at_crash_point(monkeypatch, "train_step", 25, lambda: os.kill(os.getpid(), signal.SIGTERM))
    stopped = train("--recipe", QUICK, "train.epochs=2", "log.trackers=[]", f"output_dir={run_dir}")
    assert stopped.code == 143, stopped.err
    monkeypatch.undo()
    out = tmp_path / "r.md"
    assert report_main([str(run_dir), "--out", str(out)]) == 0
    row = next(line for line in out.read_text().splitlines() if line.startswith("| stopped |"))
    cells = [cell.strip() for cell in row.split("|")[1:-1]]
    assert cells[4:6] == ["8", "1/2 (stopped (SIGTERM), resumable)"], cells
