"""A run that is a trial of an Optuna study (hw3.search starts it with HW3_STUDY_STORAGE, HW3_STUDY_NAME,
HW3_TRIAL_ID and HW3_STUDY_PRUNER set) reports its monitored validation metric after every epoch, and stops
when the study's pruner says so.
The main process alone talks to the study; every process gets its answer in one collective, so all
of them stop at the same epoch (transformers #18609: trials must not be decided per rank).
"""

from __future__ import annotations

import os
from typing import Optional

from hw3.dist.processes import agree
from hw3.errors import UserError
from hw3.storage.study import open_storage

ENV = ("HW3_STUDY_STORAGE", "HW3_STUDY_NAME", "HW3_TRIAL_ID", "HW3_STUDY_PRUNER")


def make_pruner(name: str, epochs: int):
    """The pruner `--pruner` names. Optuna keeps no pruner in the study, so the search and its trials' runs each
    build it from the name: the same pruner decides, whichever process asks."""
    import optuna

    return {
        "none": optuna.pruners.NopPruner,
        "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1),
        "asha": lambda: optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3),
        "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs, reduction_factor=3),
    }[name]()


class TrialLink:
    def __init__(self, accelerator, storage: str, study: str, trial_id: int, pruner: str, epochs: int):
        self.accelerator, self.trial = accelerator, None
        if accelerator.is_main_process:
            import optuna

            optuna.logging.set_verbosity(optuna.logging.WARNING)
            pruner = make_pruner(pruner, epochs)
            loaded = optuna.load_study(study_name=study, storage=open_storage(storage), pruner=pruner)
            self.trial = optuna.trial.Trial(loaded, trial_id)

    @classmethod
    def from_env(cls, accelerator, epochs: int) -> Optional["TrialLink"]:
        if not all(os.environ.get(k) for k in ENV):
            return None
        try:
            import optuna  # noqa: F401
        except ImportError:
            raise UserError(
                "this run is a trial of hw3.search, which needs optuna: pip install -e '.[search]'"
            ) from None
        storage, study, trial_id, pruner = (os.environ[k] for k in ENV)
        return cls(accelerator, storage, study, int(trial_id), pruner, epochs)

    def should_stop(self, epoch: int, value: float) -> bool:
        """Report this epoch's monitored value; True when the pruner stops the trial (the same on every process)."""
        decision = None
        if self.trial is not None:
            self.trial.report(value, epoch)
            decision = bool(self.trial.should_prune())
        return bool(agree(self.accelerator, decision))
