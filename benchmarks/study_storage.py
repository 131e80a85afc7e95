"""What parallel workers do to a study file: the choice behind hw3.search's default storage.

    PYTHONPATH=. python benchmarks/study_storage.py [--workers 4] [--trials 25] [--epochs 15]

Each worker process asks for trials, reports one value per epoch (as a trial's run does, through hw3.storage.study's
open_storage) and tells the study the result, all at once on one file: Optuna's JournalStorage (hw3.search's
default) against SQLite. Prints per storage the trials recorded, the errors the workers hit and the wall time.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import tempfile
import time
from pathlib import Path


def worker(url: str, trials: int, epochs: int, errors) -> None:
    import optuna

    from hw3.storage.study import open_storage

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    for _ in range(trials):
        try:
            study = optuna.load_study(study_name="bench", storage=open_storage(url))
            trial = study.ask({"lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)})
            for epoch in range(epochs):
                trial.report(trial.params["lr"] * epoch, epoch)
                trial.should_prune()
            study.tell(trial, trial.params["lr"])
        except Exception as e:  # what a trial's run would die of
            errors.put(f"{type(e).__name__}: {str(e).splitlines()[0][:80]}")


def measure(url: str, workers: int, trials: int, epochs: int) -> tuple[int, list[str], float]:
    import optuna

    from hw3.storage.study import open_storage

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    optuna.create_study(study_name="bench", storage=open_storage(url))
    errors = mp.Queue()
    procs = [mp.Process(target=worker, args=(url, trials, epochs, errors)) for _ in range(workers)]
    started = time.perf_counter()
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    seconds = time.perf_counter() - started
    said = []
    while not errors.empty():
        said.append(errors.get())
    study = optuna.load_study(study_name="bench", storage=open_storage(url))
    done = sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.get_trials(deepcopy=False))
    return done, said, seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--trials", type=int, default=25, help="per worker")
    p.add_argument("--epochs", type=int, default=15, help="reports per trial")
    args = p.parse_args()
    root = Path(tempfile.mkdtemp())
    total = args.workers * args.trials
    print(f"{args.workers} workers x {args.trials} trials x {args.epochs} reports, one study file")
    print("| storage | trials recorded | worker errors | wall |")
    print("|---|---|---|---|")
    for name, url in (("journal file", f"journal:{root / 'study.journal'}"), ("SQLite", f"sqlite:///{root}/s.db")):
        done, errors, seconds = measure(url, args.workers, args.trials, args.epochs)
        kinds = sorted(set(errors))
        said = f"{len(errors)} ({'; '.join(kinds[:2])})" if errors else "0"
        print(f"| {name} | {done} of {total} | {said} | {seconds:.1f} s |")


if __name__ == "__main__":
    main()
