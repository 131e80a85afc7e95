"""Where an Optuna study lives: a journal file (the default of hw3.search: several processes, or machines sharing a
folder, append to it safely) or any storage URL Optuna takes (sqlite:///..., postgresql://..., mysql://...)."""

from __future__ import annotations

import time


def open_storage(url: str):
    """An Optuna storage: `journal:<file>` (Optuna's JournalStorage on a file, the default of hw3.search), or any
    storage URL Optuna takes (sqlite:///..., postgresql://..., mysql://...)."""
    import optuna

    if url.startswith("journal:"):
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        return JournalStorage(JournalFileBackend(url[len("journal:") :]))
    for attempt in range(10):
        try:
            return optuna.storages.RDBStorage(url, heartbeat_interval=None)
        except Exception as e:
            # Two searches opening an empty database at once both create the schema; the loser fails on
            # "already exists" or a duplicate type (optuna #1092). Once the winner is done, opening works.
            if "already exists" not in str(e) or attempt == 9:
                raise
            time.sleep(0.2 * (attempt + 1))
