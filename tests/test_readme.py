"""Every command in the README's bash blocks runs as written, in order, in a scratch folder.

The first block's install steps are what CI runs; here its training command runs first (in-process), so that
runs/quickstart exists for the commands that read it. Full GPU recipes launched with `accelerate launch
--config_file ...` cannot train here (no GPU, no download): they run with `smoke=true` appended and the run dir
their report command expects."""

import re
import shlex
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from helpers import ROOT, accelerate_bin, child_env

BLOCKS = re.findall(r"```bash\n(.*?)\n```", (ROOT / "README.md").read_text(), re.S)
QUICKSTART = BLOCKS[0].splitlines()[0].split("&&")[-1].strip()  # accelerate launch train.py --recipe ...
COMMANDS = [line.split("  #")[0].strip() for block in BLOCKS[1:] for line in block.splitlines() if line.strip()]
SWEEPS = [c for c in COMMANDS if c.startswith("python -m hw3.sweep") and "--grid" in c]  # its table is in the README
SHORT = ["train.epochs=2"]  # searches and the search's check: as written, but 2 epochs, 1 trial, 1 seed


def test_the_readme_has_the_commands_this_test_runs():
    kinds = {" ".join(shlex.split(c)[:3]) for c in COMMANDS}
    assert {
        "python train.py --recipe",
        "python -m hw3.evaluate",
        "python -m hw3.report",
        "python -m hw3.predict",
        "python -m hw3.search",
        "python -m hw3.shards",
    } <= kinds
    assert "python -m hw3.export" in kinds
    assert any(c.startswith("accelerate launch --config_file") for c in COMMANDS)


def launch_in_smoke_mode(argv: list[str], cwd: Path) -> int:
    """`accelerate launch --config_file C train.py --recipe R ...` as a 2-step smoke run into runs/<R's stem>."""
    recipe = Path(argv[argv.index("--recipe") + 1])
    extra = ["smoke=true", f"output_dir=runs/{recipe.stem}"]
    cmd = [accelerate_bin(), *argv[1:], *extra]
    done = subprocess.run(cmd, cwd=cwd, env=child_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{shlex.join(cmd)}\n{done.stderr[-3000:]}"
    return done.returncode


def write_your_digits(folder: Path) -> None:
    """Stand-ins for the images a reader would classify with hw3.predict: three of scikit-learn's digits as PNGs."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    folder.mkdir()
    digits = load_digits()
    for i in range(3):
        Image.fromarray(np.rint(digits.images[i] * 255 / 16).astype(np.uint8)).save(folder / f"{digits.target[i]}.png")


def test_every_readme_command_runs_in_order(tmp_path, monkeypatch, capsys):
    from hw3.cli.evaluate import main as evaluate_main
    from hw3.cli.export import main as export_main
    from hw3.cli.predict import main as predict_main
    from hw3.cli.report import main as report_main
    from hw3.cli.search import main as search_main
    from hw3.cli.shards import main as shards_main
    from hw3.cli.sweep import main as sweep_main
    from hw3.cli.train import main as train_main

    monkeypatch.chdir(tmp_path)
    for name in ("recipes", "accelerate_configs", "train.py"):
        (tmp_path / name).symlink_to(ROOT / name)
    write_your_digits(tmp_path / "my_digits")
    assert train_main(shlex.split(QUICKSTART)[3:]) == 0, capsys.readouterr().err
    # The accelerate launches are separate processes that need nothing from each other: start them all now.
    launches = [c for c in COMMANDS if c.startswith("accelerate launch --config_file")]
    pool = ThreadPoolExecutor(max_workers=len(launches))
    launched = {c: pool.submit(launch_in_smoke_mode, shlex.split(c), tmp_path) for c in launches}
    ran = []
    for command in COMMANDS:
        argv = shlex.split(command)
        if argv[:2] == ["python", "train.py"]:
            code = train_main(argv[2:])
        elif argv[:3] == ["python", "-m", "hw3.evaluate"]:
            code = evaluate_main(argv[3:])
        elif argv[:3] == ["python", "-m", "hw3.report"]:
            code = report_main(argv[3:])
        elif argv[:3] == ["python", "-m", "hw3.predict"]:
            code = predict_main(argv[3:])
        elif argv[:3] == ["python", "-m", "hw3.export"]:
            code = export_main(argv[3:])
        elif argv[:3] == ["accelerate", "launch", "--config_file"]:
            code = launched[command].result()  # done before the commands after it, which read its run dir
        elif argv[:3] == ["python", "-m", "hw3.sweep"] and command in SWEEPS:
            code = 0  # 9 runs: test_the_readmes_sweep_runs, marked slow, runs it as written
        elif argv[:3] == ["python", "-m", "hw3.sweep"]:
            code = sweep_main([*argv[3:], "--seeds", "1", *SHORT])
        elif argv[:3] == ["python", "-m", "hw3.search"]:
            code = search_main([*argv[3:], "--trials", "1", *SHORT])
        elif argv[:3] == ["python", "-m", "hw3.shards"]:
            code = shards_main(argv[3:])
        else:
            pytest.fail(f"README command not covered by this test: {command}")
        assert code == 0, f"{command}\n{capsys.readouterr().err}"
        ran.append(command)
    assert ran == COMMANDS and len(ran) >= 8


def test_the_readmes_recipe_block_is_the_quickstart_recipe():
    block = re.search(r"```yaml\n(.*?)\n```", (ROOT / "README.md").read_text(), re.S).group(1)
    assert block + "\n" == (ROOT / "recipes" / "quickstart.yaml").read_text()


@pytest.mark.slow
def test_the_readmes_sweep_runs(tmp_path, monkeypatch, capsys):
    """The README's sweep, as written: 3 optimizers x 3 seeds on the digits, and the table it printed."""
    from hw3.cli.sweep import main as sweep_main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "recipes").symlink_to(ROOT / "recipes")
    assert len(SWEEPS) == 1
    assert sweep_main(shlex.split(SWEEPS[0])[3:]) == 0
    table = capsys.readouterr().out.splitlines()[-5:]
    readme = (ROOT / "README.md").read_text()
    assert table[0] in readme and len(table) == 5
    rows = [line.split(" | ") for line in table[2:]]
    assert sorted(row[0].lstrip("| ") for row in rows) == ["optim.name-adamw", "optim.name-sam", "optim.name-sgd"]
    assert all(row[2] == "3" for row in rows)
