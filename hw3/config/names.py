"""Names the user types: a registry per kind (datasets, optimizers, schedules) and "did you mean" for typos."""

import difflib
from typing import Callable, Generic, Iterable, TypeVar

from hw3.errors import UserError

T = TypeVar("T")


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest candidate, or '' when nothing is close."""
    close = difflib.get_close_matches(str(name), list(candidates), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


class Registry(Generic[T]):
    """name -> builder, so datasets, optimizers and schedules are looked up, not if/else'd."""

    def __init__(self, kind: str):
        self.kind = kind  # what the entries are, for error messages ("dataset", "optimizer", ...)
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._entries[name] = obj
            return obj

        return add

    def get(self, name: str, key: str = "") -> T:
        """The entry called `name`; `key` (e.g. 'optim.name') prefixes the error when there is none."""
        if name not in self._entries:
            where = f"{key}: " if key else ""
            hint = did_you_mean(name, self._entries)
            raise UserError(f"{where}unknown {self.kind} '{name}'{hint}; known: {', '.join(self.names())}")
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries
