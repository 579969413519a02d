"""Range checks for the config dataclasses' ``__post_init__``: a value out of range is a
:class:`snapper.errors.ConfigError` naming the field and the rule, raised when the config is
built (from a preset, a YAML file, ``--set`` or a flow parameter), so before any work starts.

NaN fails every comparison and infinity is refused where a finite number is meant, so
``--set lr=nan`` and ``--set lr=inf`` are refused like ``--set lr=-1``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from snapper.errors import ConfigError


def check(ok: bool, name: str, rule: str, value: Any) -> None:
    """Refuse ``value`` of field ``name`` unless ``ok``; ``rule`` says what is allowed."""
    if not ok:
        raise ConfigError(f"{name} must be {rule}, got {value!r}")


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _number(value: Any) -> str:
    return "whole number" if isinstance(value, int) else "finite number"


def positive(name: str, value: Any) -> None:
    check(_finite(value) and value > 0, name, "positive" if isinstance(value, int) else "finite and positive", value)


def non_negative(name: str, value: Any) -> None:
    check(_finite(value) and value >= 0, name, f"a {_number(value)} >= 0", value)


def optional_positive(name: str, value: Any) -> None:
    check(value is None or (_finite(value) and value > 0), name, f"a {_number(value)} > 0 or null", value)


def open_unit(name: str, value: Any, allow_none: bool = False) -> None:
    """A fraction strictly between 0 and 1 (a decay, a momentum)."""
    ok = (allow_none and value is None) or (_finite(value) and 0.0 < value < 1.0)
    check(ok, name, "in (0, 1)" + (" or null" if allow_none else ""), value)


def one_of(name: str, value: Any, choices: Iterable[Any]) -> None:
    choices = tuple(choices)
    check(value in choices, name, f"one of {choices}", value)


def in_range(name: str, value: Any, lo: int, hi: int) -> None:
    """A whole number in ``[lo, hi]`` (a size, a channel count, a layer count)."""
    ok = isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi
    check(ok, name, f"a whole number in [{lo}, {hi}]", value)
