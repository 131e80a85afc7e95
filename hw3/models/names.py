"""timm's model names, kept in hw3's cache ($HW3_CACHE/timm/models-<timm version>.txt) so that a recipe's
`model.name` is checked without importing timm and its model zoo (seconds of every launch's start-up). The list is
written whenever timm itself confirms a name (hw3.models.build.check_model_name); deleting it is always safe."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

from hw3.storage.files import cache_dir, write_atomic


def names_file() -> Path:
    return cache_dir("timm") / f"models-{metadata.version('timm')}.txt"


def cached_model_names() -> frozenset:
    try:
        return frozenset(names_file().read_text().split())
    except OSError:
        return frozenset()


def remember_model_names(names: list[str]) -> None:
    try:
        names_file().parent.mkdir(parents=True, exist_ok=True)
        write_atomic(names_file(), "\n".join(names).encode())
    except Exception:  # noqa: BLE001 - a cache that cannot be written only costs the next check an import
        pass
