"""A search dir -> search.json, search.md and search_history.png: the best trial (its parameters, its value and
its run dir), every trial sorted best first (pruned and failed ones marked, with the epoch a pruned one stopped at
or the reason a failed one gave), and how much each parameter mattered (Optuna's fANOVA importance).

Every trial has one value, the same everywhere (its console line, its summary.json, this table and the plot):
the best value of the monitored metric its run reached, pruned trials included (hw3.search records it as the
trial's `best_value`; Optuna's own value of a pruned trial is its last report).
"""

from __future__ import annotations

import json
from pathlib import Path

from hw3.errors import UserError
from hw3.reports.plots import pyplot, save
from hw3.storage.study import open_storage

PLAN = "search_plan.json"  # the search a dir holds (hw3.search writes it, hw3.report reads it)
WRITES = ("search.json", "search.md", "search_history.png")  # what a search's report writes into its dir
JOURNAL = "study.journal"  # the study's default storage, in the search dir
SURPLUS = "surplus: the study had --trials trials when this worker asked"  # never run, left out of the results


def default_storage(out: Path) -> str:
    return f"journal:{(out / JOURNAL).resolve()}"


def trial_value(trial):
    """The trial's one value: the best its run reached (pruned ones too); Optuna's value for older studies."""
    return trial.user_attrs.get("best_value", trial.value)


def trial_rows(study, metric: str) -> list[dict]:
    import optuna

    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get("fail_reason") == SURPLUS:
            continue
        steps = sorted(t.intermediate_values)
        rows.append(
            dict(
                number=t.number,
                state=t.state.name.lower(),
                value=trial_value(t),
                last_reported=t.intermediate_values[steps[-1]] if steps else None,
                epochs_reported=len(steps),
                params=t.params,
                run_dir=t.user_attrs.get("run_dir"),
                fail_reason=t.user_attrs.get("fail_reason"),
                seconds=(t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete else None,
            )
        )
    sign = -1 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1
    ranked = lambda r: (r["value"] is None, sign * (r["value"] if r["value"] is not None else r["last_reported"] or 0))  # noqa: E731
    return sorted(rows, key=ranked)


def importances(study) -> dict:
    """fANOVA importance of each parameter over the complete trials ({} with fewer than two)."""
    import optuna

    complete = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    if len(complete) < 2 or not complete[0].params:
        return {}
    try:
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
        return dict(optuna.importance.get_param_importances(study, evaluator=evaluator))
    except (RuntimeError, ValueError):  # e.g. every complete trial has the same parameters
        return {}


def search_table(rows: list[dict], metric: str) -> str:
    keys = sorted({k for r in rows for k in r["params"]})
    head = ["trial", "state", f"best {metric}", *keys, "epochs", "seconds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        value = (
            f"{r['value']:.4g}"
            if r["value"] is not None
            else (f"({r['last_reported']:.4g})" if r["last_reported"] is not None else "-")
        )
        state = r["state"] + (f": {r['fail_reason']}" if r["fail_reason"] else "")
        cells = [r["number"], state, value, *(fmt(r["params"].get(k)) for k in keys), r["epochs_reported"]]
        cells.append(f"{r['seconds']:.0f}" if r["seconds"] is not None else "-")
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines) + "\n"


def fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def plot_history(rows: list[dict], path: Path, metric: str, maximize: bool) -> None:
    """The value of every trial by trial number (complete: filled, pruned: hollow) and the best so far over the
    complete ones."""
    plt = pyplot()
    rows = sorted(rows, key=lambda r: r["number"])
    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    done = [(r["number"], r["value"]) for r in rows if r["state"] == "complete" and r["value"] is not None]
    pruned = [(r["number"], r["value"]) for r in rows if r["state"] == "pruned" and r["value"] is not None]
    if done:
        ax.plot(*zip(*done, strict=True), "o", color="C0", label="complete")
        best, line = None, []
        for number, value in done:
            best = value if best is None or (value > best if maximize else value < best) else best
            line.append((number, best))
        ax.step(*zip(*line, strict=True), where="post", color="C1", label="best so far")
    if pruned:
        ax.plot(*zip(*pruned, strict=True), "o", mfc="none", color="C2", label="pruned (its best value)")
    ax.set_xlabel("trial")
    ax.set_ylabel(metric.replace("_", " "))
    ax.grid(alpha=0.3)
    if done or pruned:  # (every trial failed: an empty plot, and no legend to draw)
        ax.legend(fontsize=8)
    save(fig, path)


def write_search_report(out: Path, study, metric: str) -> str:
    """Write search.json, search.md and search_history.png into the search dir; returns the markdown."""
    import optuna

    rows = trial_rows(study, metric)
    complete = [r for r in rows if r["state"] == "complete"]
    best = complete[0] if complete else None
    counts = {state: sum(r["state"] == state for r in rows) for state in ("complete", "pruned", "fail", "running")}
    summary = dict(study=study.study_name, metric=metric, direction=study.direction.name.lower(), counts=counts,
                   best=best, importance=importances(study), trials=rows)  # fmt: skip
    (out / WRITES[0]).write_text(json.dumps(summary, indent=1, default=str))
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    plot_history(rows, out / WRITES[2], metric, maximize)
    said = ", ".join(f"{n} {state}" for state, n in counts.items() if n)
    lines = [f"# Search {study.study_name}: {len(rows)} trials ({said})", ""]
    if best is not None:
        params = ", ".join(f"{k}={fmt(v)}" for k, v in best["params"].items())
        lines += [f"Best: trial {best['number']}, {metric} {best['value']:.4g} with {params} ({best['run_dir']})", ""]
    if summary["importance"]:
        lines += ["Importance (fANOVA): " + ", ".join(f"{k} {v:.2f}" for k, v in summary["importance"].items()), ""]
    elif rows and rows[0]["params"]:  # say why, rather than leave the line out
        lines += [f"Importance: not measured ({len(complete)} complete trials; fANOVA needs 2+ that differ)", ""]
    text = "\n".join(lines) + "\n" + search_table(rows, metric) + "\n![history](search_history.png)\n"
    (out / WRITES[1]).write_text(text)
    return text


def report_search_dir(out: Path) -> str:
    """hw3.report on a search dir: the study its plan names, reported again."""
    import optuna

    plan = json.loads((out / PLAN).read_text())
    storage = plan["storage"] or default_storage(out)
    try:
        study = optuna.load_study(study_name=plan["study"], storage=open_storage(storage))
    except Exception as e:  # the storage is gone or unreachable
        raise UserError(f"{out}: cannot open its study {plan['study']} in {storage} ({type(e).__name__})") from None
    return write_search_report(out, study, plan["metric"])
