"""How a component checks its own section of the recipe: ranges, choices, and rules of its own.

Each component owns its rules next to the code that uses the values (`hw3.data.check_data` for `data`,
`hw3.optim.check_optim` for `optim`, ...); this module only gives them one way to say what is wrong: one line
naming the key, the rule and the value, with "did you mean" for a misspelt choice.
"""

from __future__ import annotations

from typing import Any, Callable

from hw3.config.names import did_you_mean
from hw3.errors import UserError

Rule = tuple[Callable[[Any], bool], str]  # (test, what the value must be)


def require(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


def at_least(low) -> Rule:
    return (lambda v: v >= low), f"must be >= {low}"


def positive() -> Rule:
    return (lambda v: v > 0), "must be > 0"


def between(low, high, closed_low=True, closed_high=False) -> Rule:
    ok = lambda v: (low <= v if closed_low else low < v) and (v <= high if closed_high else v < high)  # noqa: E731
    return ok, f"must be in {'[' if closed_low else '('}{low}, {high}{']' if closed_high else ')'}"


def check_section(section: Any, prefix: str, rules: dict[str, Rule], choices: dict[str, tuple] = None) -> None:
    """Every rule and choice of `section` (the dataclass of `prefix`, e.g. "optim"); null passes (Optional fields).
    A list value is checked item by item against its choices."""
    for key, (ok, rule) in rules.items():
        value = getattr(section, key)
        require(value is None or ok(value), f"{prefix}.{key}: {rule}, got {value}")
    for key, allowed in (choices or {}).items():
        value = getattr(section, key)
        for item in value if isinstance(value, list) else [value]:
            if item is not None:
                one_of(f"{prefix}.{key}", item, allowed)


def one_of(key: str, value: Any, choices: tuple) -> None:
    names = [str(c).lower() if isinstance(c, bool) else str(c) for c in choices]  # as YAML spells them
    require(value in choices, f"{key}: '{value}' is not one of {', '.join(names)}{did_you_mean(value, names)}")
