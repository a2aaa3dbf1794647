"""Argument checks shared by the hardware profiles, the agent and the predictor fit.

Same message shape as :func:`autocompress.core.validation.check_int`: "The 'x' parameter of f
must be <rule>. Got <value> instead."; ``where`` names the function or class that was called.
"""

from __future__ import annotations

import math
import os
from numbers import Real
from typing import Any, Protocol, Self, TypeVar

from autocompress.core.validation import check_int

__all__ = ["check_loaded", "check_power", "check_seconds", "check_threads"]


class _Saved(Protocol):
    """A type saved as a file and read back with ``load`` (a LUT, a latency predictor)."""

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Self: ...


_SavedT = TypeVar("_SavedT", bound=_Saved)


def check_threads(threads: Any, *, where: str) -> int | None:
    """None (the runtime's default thread count) or an int >= 1."""
    if threads is None:
        return None
    return check_int(threads, name="threads", where=where, minimum=1)


def check_power(power_w: Any, *, where: str) -> float | None:
    """None (energy unknown) or a positive finite number of watts, as a float."""
    if power_w is None:
        return None
    if (
        isinstance(power_w, bool)
        or not isinstance(power_w, Real)
        or not math.isfinite(power_w)
        or power_w <= 0
    ):
        raise ValueError(
            f"The 'power_w' parameter of {where} must be None or a positive finite "
            f"number of watts. Got {power_w!r} instead."
        )
    return float(power_w)


def check_seconds(value: Any, *, name: str, where: str) -> float:
    """A positive finite number of seconds (a timeout), as a float."""
    if (
        isinstance(value, bool)
        or not isinstance(value, Real)
        or not (math.isfinite(value) and value > 0)
    ):
        raise ValueError(
            f"The '{name}' parameter of {where} must be a positive finite number of seconds. "
            f"Got {value!r} instead."
        )
    return float(value)


def check_loaded(value: Any, kind: type[_SavedT], *, name: str, where: str, rule: str) -> _SavedT:
    """``value`` when it is a ``kind``, read with ``kind.load`` when it is a path; ``rule`` is
    what the error message says the parameter must be."""
    if isinstance(value, str | os.PathLike):
        value = kind.load(value)
    if not isinstance(value, kind):
        raise ValueError(
            f"The '{name}' parameter of {where} must be {rule}. Got {value!r} instead."
        )
    return value
