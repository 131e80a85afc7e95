"""Every `python ...` command in the README works as written (the quickstart's `accelerate launch` is run by
test_quickstart.py; the multi-process launchers by test_multiproc.py)."""

import re
import shlex

import pytest

from conftest import ROOT

COMMANDS = [
    line.split("  #")[0].strip()
    for block in re.findall(r"```bash\n(.*?)\n```", (ROOT / "README.md").read_text(), re.S)
    for line in block.splitlines()
    if line.startswith("python ")
]


def test_the_readme_has_the_commands_this_test_runs():
    assert any(c.startswith("python train.py") for c in COMMANDS)
    assert any(c.startswith("python -m hw3.evaluate") for c in COMMANDS)


def test_readme_python_commands_run_in_order(tmp_path, monkeypatch, capsys):
    from hw3.cli import main as train_main
    from hw3.evaluate import main as evaluate_main
    from hw3.report import main as report_main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "recipes").symlink_to(ROOT / "recipes")
    for command in COMMANDS:
        argv = shlex.split(command)
        if argv[1] == "train.py":
            code = train_main(argv[2:])
        elif argv[2] == "hw3.evaluate":
            code = evaluate_main(argv[3:])
        elif argv[2] == "hw3.report":
            runs = [a for a in argv[3:] if a.startswith("runs/")]
            if not all((tmp_path / r).is_dir() for r in runs):
                continue  # an example comparing GPU runs
            code = report_main(argv[3:])
        else:
            pytest.fail(f"README command not covered: {command}")
        assert code == 0, f"{command}\n{capsys.readouterr().err}"
