"""python -m hw3.search: a space checked up front with the recipe's rules, trials that are ordinary runs reporting
every epoch and pruned by the study (also a 2-process trial: every process stops at the same epoch), a search
that continues where it was killed, results with importances, and two searches sharing one study in a real
PostgreSQL server started here."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from hw3.cli.search import main as search_main

from helpers import RECIPES, ROOT, accelerate_bin, child_env, read_metrics, read_summary

optuna = pytest.importorskip("optuna", reason="hw3.search needs optuna (pip install -e '.[search]')")
QUICK = str(RECIPES / "quickstart.yaml")
COMMON = ["model.name=simple_mlp", "train.epochs=4", "log.trackers=[]", "train.checkpoint_every_minutes=null"]


def search(out, *args, trials=4, **kwargs):
    flags = ["--recipe", QUICK, "--param", "optim.lr={log_uniform: [1.0e-4, 1.0e-1]}", "--trials", str(trials)]
    return search_main([*flags, "--out", str(out), *args, *COMMON])


def open_storage_of(out: Path):
    from hw3.storage.study import open_storage

    return open_storage(f"journal:{(out / 'study.journal').resolve()}")


def study_of(out: Path, name="hw3"):
    return optuna.load_study(study_name=name, storage=open_storage_of(out))


@pytest.mark.parametrize(
    "param, message",
    [
        ("optim.lrr={uniform: [0.1, 0.2]}", "unknown key 'optim.lrr' (did you mean 'optim.lr'?)"),
        ("optim.lr={uniform: [0.2, 0.1]}", "optim.lr: empty range [0.2, 0.1]"),
        ("optim.lr={normal: [0.1, 0.2]}", "optim.lr: a distribution is {uniform | log_uniform | int | choice: [...]}"),
        ("optim.lr={uniform: [-1.0, 0.1]}", "optim.lr: must be >= 0, got -1.0"),
        ("optim.name={choice: [sgd, adamm]}", "optim.name: unknown optimizer 'adamm' (did you mean 'adam'?)"),
        ("optim.lr={log_uniform: [0.0, 0.1]}", "optim.lr: empty range [0.0, 0.1] (log: low must be > 0)"),
        ("train.batch_size={int: [16, 8]}", "train.batch_size: empty range [16, 8]"),
        ("train.batch_size={int: [8, 16], step: 0}", "train.batch_size: step is a whole number >= 1, and only for an"),
        ("optim.lr={uniform: [0.1, 0.2], step: 1}", "optim.lr: step is a whole number >= 1, and only for an int"),
        ("early_stop.monitor={choice: [val_loss]}", "early_stop.monitor: searched and also set (by the search)"),
    ],
)
def test_a_space_the_recipe_would_refuse_is_one_line_and_creates_nothing(tmp_path, capsys, param, message):
    code = search_main(["--recipe", QUICK, "--param", param, "--trials", "2", "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: ") and message in err, err
    assert not (tmp_path / "s").exists()


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """4 trials of 4 epochs, TPE, a median pruner: what the results are made of."""
    out = tmp_path_factory.mktemp("search") / "lr"
    space = out.parent / "space.yaml"
    space.write_text("optim.weight_decay: {uniform: [0.0, 1.0e-3]}\noptim.name: {choice: [sgd, adamw]}\n")
    assert search(out, "--space", str(space), "--pruner", "median", "--parallel", "2") == 0
    return out


def test_every_trial_is_an_ordinary_run_and_the_study_knows_how_it_ended(searched):
    study = study_of(searched)
    trials = study.get_trials()
    assert len(trials) == 4 and {t.state.name for t in trials} <= {"COMPLETE", "PRUNED"}
    for t in trials:
        run_dir = Path(t.user_attrs["run_dir"])
        assert run_dir == (searched / f"trial-{t.number:04d}").resolve()
        summary, rows = read_summary(run_dir), read_metrics(run_dir)
        assert summary["optimizer"] == t.params["optim.name"] and len(rows) == summary["epochs_completed"]
        assert t.intermediate_values == {r["epoch"]: r["val_acc"] for r in rows}  # reported after every epoch
        if t.state.name == "PRUNED":
            assert summary["stopped_reason"] == "pruned" and (run_dir / "best/model.safetensors").is_file()
        else:
            assert t.value == summary["best_val_acc"]


def test_the_results_name_the_best_trial_and_the_importances(searched):
    results = json.loads((searched / "search.json").read_text())
    values = [t["value"] for t in results["trials"] if t["state"] == "complete"]
    assert results["best"]["value"] == max(values) and values == sorted(values, reverse=True)
    assert set(results["importance"]) <= {"optim.lr", "optim.weight_decay", "optim.name"}
    assert "Best: trial" in (searched / "search.md").read_text() and (searched / "search_history.png").is_file()
    from hw3.cli.report import main as report_main

    assert report_main([str(searched)]) == 0  # hw3.report understands a search dir


def test_a_killed_search_continues_and_resumes_the_trial_it_was_running(tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "hw3.search", "--recipe", QUICK, "--param", "optim.lr={uniform: [0.001, 0.01]}"]
    cmd += ["--trials", "2", "--pruner", "none", "--out", str(out), *COMMON, "train.checkpoint_every_steps=5"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=child_env(), start_new_session=True, stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not list(out.glob("trial-0000/checkpoints/epoch000[1-3]-*")):  # trial 0 is past its first epoch
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the search and its trial, as a lost machine would
    proc.wait()
    assert study_of(out).get_trials()[0].state.name == "RUNNING"
    again = subprocess.run(cmd, cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert "trial 0 (resumed): complete" in again.stdout
    assert [t.state.name for t in study_of(out).get_trials()] == ["COMPLETE", "COMPLETE"]
    launches = (out / "trial-0000" / "command.txt").read_text()
    assert launches.count("argv: ") == 2 and "(resumed from " in launches  # the same run, from its checkpoint


def test_a_trial_the_pruner_stops_is_recorded_as_pruned(tmp_path, capsys):
    """Two finished trials of the study reached 1.0 at every epoch; at lr 1e-4 the search's own trial cannot
    (a 2-epoch MLP on the digits), so the median pruner (which waits one epoch) stops it after its second."""
    from optuna.distributions import FloatDistribution
    from optuna.trial import create_trial

    out = tmp_path / "pruned"
    out.mkdir()
    study = optuna.create_study(study_name="hw3", storage=open_storage_of(out), direction="maximize")
    for _ in range(2):
        lr = FloatDistribution(1e-4, 1e-3, log=True)
        study.add_trial(create_trial(value=1.0, params={"optim.lr": 1e-4}, distributions={"optim.lr": lr},
                                     intermediate_values={e: 1.0 for e in range(4)}))  # fmt: skip
    args = ["--recipe", QUICK, "--param", "optim.lr={log_uniform: [1.0e-4, 1.0e-3]}", "--trials", "3"]
    assert search_main([*args, "--pruner", "median", "--out", str(out), *COMMON]) == 0
    assert "trial 2: pruned after 2 epoch(s)" in capsys.readouterr().out
    trial = study_of(out).get_trials()[2]
    summary = read_summary(out / "trial-0002")
    assert trial.state.name == "PRUNED" and summary["stopped_reason"] == "pruned" and summary["epochs_completed"] == 2
    assert len(trial.intermediate_values) == 2 and (out / "trial-0002/best/model.safetensors").is_file()
    row = [line for line in (out / "search.md").read_text().splitlines() if line.startswith("| 2 |")]
    cells = row[0].split(" | ")
    assert cells[:2] == ["| 2", "pruned"] and cells[-2] == "2"  # the epochs it ran


def test_a_failed_trial_is_recorded_with_its_reason(tmp_path):
    args = ["--recipe", QUICK, "--param", "optim.lr={uniform: [1.0e30, 1.0e31]}", "--trials", "1", "--pruner", "none"]
    assert search_main([*args, "--out", str(tmp_path / "bad"), *COMMON, "optim.name=sgd", "train.max_bad_steps=2"]) == 0
    trial = study_of(tmp_path / "bad").get_trials()[0]
    assert trial.state.name == "FAIL"
    assert trial.user_attrs["fail_reason"].startswith("error: 20 consecutive non-finite steps (loss or gradient)")
    assert "| fail: error: 20 consecutive non-finite steps" in (tmp_path / "bad" / "search.md").read_text()


def test_another_search_in_the_same_dir_is_refused(searched, capsys):
    assert search(searched, "--metric", "val_loss") == 2
    assert "holds another search (metric, space differ)" in capsys.readouterr().err


def test_a_two_process_trial_stops_every_process_at_the_same_epoch(tmp_path):
    """The run side alone, under 2-process DDP: two finished trials reached 1.0 at every epoch, so the median
    pruner (which waits one epoch) stops this one after its second epoch, on both processes."""
    from optuna.distributions import FloatDistribution
    from optuna.trial import create_trial

    from hw3.engine.trial import make_pruner
    from hw3.storage.study import open_storage

    storage = f"journal:{tmp_path / 'study.journal'}"
    study = optuna.create_study(study_name="s", storage=open_storage(storage), direction="maximize")
    for _ in range(2):
        study.add_trial(create_trial(value=1.0, params={"x": 0.5}, distributions={"x": FloatDistribution(0, 1)},
                                     intermediate_values={e: 1.0 for e in range(4)}))  # fmt: skip
    trial = study.ask()
    config = ROOT / "accelerate_configs" / "cpu_ddp.yaml"
    link = dict(HW3_STUDY_STORAGE=storage, HW3_STUDY_NAME="s", HW3_TRIAL_ID=str(trial._trial_id))
    env = child_env(**link, HW3_STUDY_PRUNER="median")
    cmd = [accelerate_bin(), "launch", "--config_file", config, ROOT / "train.py", "--recipe", QUICK, *COMMON]
    done = subprocess.run([str(c) for c in [*cmd, f"output_dir={tmp_path / 'run'}"]], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    summary, rows = read_summary(tmp_path / "run"), read_metrics(tmp_path / "run")
    assert summary["stopped_reason"] == "pruned" and summary["epochs_completed"] == 2
    assert summary["processes"] == 2 and summary["processes_in_sync"] is True
    reported = optuna.load_study(study_name="s", storage=open_storage(storage), pruner=make_pruner("median", 4))
    assert reported.get_trials()[2].intermediate_values == {r["epoch"]: r["val_acc"] for r in rows}


# ----------------------------------------------------------------------------------------------------------
# PostgreSQL, for real: a server started here (Debian's postgresql package), two searches on one study.


def postgres_binaries() -> Path | None:
    for folder in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder
    found = shutil.which("initdb")
    return Path(found).parent if found else None


@pytest.fixture
def postgres(tmp_path):
    pytest.importorskip("psycopg", reason="psycopg 3, the driver SQLAlchemy uses for postgresql://, is not installed")
    binaries = postgres_binaries()
    if binaries is None:
        pytest.skip("PostgreSQL's server binaries (initdb, pg_ctl) are not installed: apt-get install postgresql")
    home = Path(tempfile.mkdtemp(prefix="hw3-pg-"))  # outside pytest's folders, which the server's user cannot enter
    data, sock = home / "pgdata", home / "pgsock"
    sock.mkdir()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []  # initdb refuses to run as root
    if as_user:
        shutil.chown(home, "postgres")
        shutil.chown(sock, "postgres")
    subprocess.run(
        [*as_user, str(binaries / "initdb"), "-D", str(data), "-U", "hw3", "--auth=trust"],
        check=True,
        capture_output=True,
    )
    options = f"-p {port} -k {sock} -c listen_addresses=127.0.0.1"
    start = [str(binaries / "pg_ctl"), "-D", str(data), "-w", "-l", str(home / "pg.log"), "-o", options, "start"]
    subprocess.run([*as_user, *start], check=True, capture_output=True)
    try:
        subprocess.run(
            [str(binaries / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "hw3", "study"],
            check=True,
            capture_output=True,
        )
        yield f"postgresql://hw3@127.0.0.1:{port}/study"
    finally:
        subprocess.run(
            [*as_user, str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], capture_output=True
        )


def test_two_searches_share_one_study_in_postgresql(postgres, tmp_path):
    args = [
        "--param",
        "optim.lr={log_uniform: [1.0e-3, 1.0e-1]}",
        "--trials",
        "4",
        "--pruner",
        "asha",
        "--storage",
        postgres,
    ]
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "hw3.search", "--recipe", QUICK, *args, "--out", str(tmp_path / "shared"), *COMMON],
            cwd=ROOT,
            env=child_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for _ in range(2)
    ]
    outputs = [w.communicate(timeout=900)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], "\n---\n".join(o[-6000:] for o in outputs)
    study = optuna.load_study(study_name="hw3", storage=postgres)
    trials = [t for t in study.get_trials() if not t.user_attrs.get("fail_reason", "").startswith("surplus")]
    assert len(trials) == 4 and all(t.state.name in ("COMPLETE", "PRUNED") for t in trials)
    said = [line.split(":")[0] for out in outputs for line in out.splitlines() if line.startswith("trial ")]
    assert sorted(said) == [f"trial {n}" for n in range(4)]  # each trial run by exactly one of the two


def test_a_pruned_trial_has_one_value_everywhere_the_best_its_run_reached(tmp_path, monkeypatch):
    """A trial pruned after its second epoch reported 0.9792 then 0.9653: its console line, summary.json,
    search.json, search.md and the plot all give the best, 0.9792 (Optuna's own value is the last report), and
    the plot draws it as pruned."""
    import hw3.reports.search
    from hw3.experiments.search import tell
    from hw3.reports.search import plot_history, trial_rows, write_search_report

    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    trial.report(0.9792, 0)
    trial.report(0.9653, 1)
    run_dir = tmp_path / "trial-0000"
    run_dir.mkdir()
    summary = dict(best_val_acc=0.9792, stopped_reason="pruned", epochs_completed=2)
    (run_dir / "summary.json").write_text(json.dumps(summary))
    trial.set_user_attr("run_dir", str(run_dir))
    assert tell(study, trial, 0, "val_acc") == "pruned after 2 epoch(s), best val_acc 0.9792"
    (row,) = trial_rows(study, "val_acc")
    assert row["state"] == "pruned" and row["value"] == 0.9792
    text = write_search_report(tmp_path, study, "val_acc")
    assert "| 0 | pruned | 0.9792 |" in text
    assert json.loads((tmp_path / "search.json").read_text())["trials"][0]["value"] == 0.9792
    figures = []
    monkeypatch.setattr(hw3.reports.search, "save", lambda fig, path: figures.append(fig))
    plot_history([row, {**row, "number": 1, "state": "complete", "value": 0.99}], tmp_path / "h.png", "val_acc", True)
    drawn = {line.get_label(): list(line.get_xdata()) for line in figures[0].axes[0].lines}
    assert drawn["complete"] == [1] and drawn["pruned (its best value)"] == [0]
