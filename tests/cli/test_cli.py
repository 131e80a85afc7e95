"""The command line as users meet it: exit codes and one-line errors, from real subprocesses."""

from concurrent.futures import ThreadPoolExecutor

import pytest
import yaml

from helpers import RECIPES, ROOT, run_subprocess

QUICK = str(RECIPES / "quickstart.yaml")

USER_ERRORS = {
    "unknown key": ([QUICK, "optim.lrr=0.1"], "optim.lrr"),
    "wrong type": ([QUICK, "train.epochs=two"], "train.epochs"),
    "missing recipe": (["recipes/does_not_exist.yaml"], "does_not_exist.yaml"),
    "malformed recipe": (["{bad}"], ":2: malformed YAML"),
    "override without =": ([QUICK, "train.epochs"], "has no '='"),
    "negative lr": ([QUICK, "optim.lr=-1"], "optim.lr"),
    "zero epochs": ([QUICK, "train.epochs=0"], "train.epochs"),
    "zero batch size": ([QUICK, "train.batch_size=0"], "train.batch_size"),
    "no recipe flag": ([], "--recipe"),
}


@pytest.fixture(scope="module")
def error_runs(tmp_path_factory):
    """All error cases at once, in parallel processes (each pays Python + torch start-up)."""
    tmp = tmp_path_factory.mktemp("cli")
    bad = tmp / "bad.yaml"
    bad.write_text("data:\n  name: digits: cifar\n")

    def launch(case):
        args = USER_ERRORS[case][0]
        args = [str(bad) if a == "{bad}" else a for a in args]
        argv = ["--recipe", *args] if args else []
        return case, run_subprocess(argv + [f"output_dir={tmp / 'run'}"] if args else argv, cwd=ROOT)

    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(pool.map(launch, USER_ERRORS))


@pytest.mark.parametrize("case", USER_ERRORS)
def test_user_error_exits_2_with_one_line(case, error_runs):
    result = error_runs[case]
    expected = USER_ERRORS[case][1]
    assert result.code == 2, result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.err
    assert expected in lines[0]
    assert "Traceback" not in result.err


def test_print_config_prints_the_resolved_recipe_and_touches_nothing(tmp_path):
    result = run_subprocess(
        ["--recipe", QUICK, "--print-config", "optim.lr=1e-3", f"output_dir={tmp_path / 'run'}"], cwd=tmp_path
    )
    assert result.code == 0, result.err
    flow = result.out.replace("{}", "").replace("[]", "")  # empty ones aside, block style: one key per line
    assert "{" not in flow and "[" not in flow
    printed = yaml.safe_load(result.out)
    assert printed["optim"]["lr"] == 0.001 and printed["model"]["name"] == "simple_cnn"
    assert not (tmp_path / "run").exists() and not (tmp_path / "runs").exists()


def test_print_config_shows_what_hw3_decides_and_why(tmp_path, capsys):
    from hw3.cli.train import main
    from hw3.config import load_config

    assert main(["--recipe", str(RECIPES / "cifar100_sam.yaml"), "--print-config"]) == 0
    out = capsys.readouterr().out
    lines = {line.split(":")[0].strip(): line.strip() for line in out.splitlines() if "# hw3: " in line}
    assert lines["output_dir"] == "output_dir: runs/cifar100_sam  # hw3: runs/<the recipe's file name>"
    assert lines["image_size"] == "image_size: 32  # hw3: the native size of cifar100"
    assert lines["small_input"].startswith("small_input: true  # hw3: on for a from-scratch resnet/resnest at <= 64")
    assert lines["channels_last"].startswith("channels_last: true  # hw3: on for the resnet and resnest families")
    (tmp_path / "printed.yaml").write_text(out)  # it reads back as a recipe: the same run, decided up front
    again = load_config(str(tmp_path / "printed.yaml"))
    assert (again.model.small_input, again.train.channels_last, again.output_dir) == (True, True, "runs/cifar100_sam")
    assert main(["--recipe", str(QUICK), "data.name=imagefolder", "--print-config"]) == 0
    assert "image_size: null  # hw3: the data's own size, read at start-up" in capsys.readouterr().out


def test_train_py_is_a_thin_door():
    assert len((ROOT / "train.py").read_text().splitlines()) <= 40
