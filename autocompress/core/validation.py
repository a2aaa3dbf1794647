"""Argument checks with one message shape: "The 'x' parameter of f must be <rule>. Got <value>
instead." (scikit-learn's habit), for the checks that many modules share."""

from __future__ import annotations

from numbers import Integral
from typing import Any


def check_int(value: Any, *, name: str, where: str, minimum: int) -> int:
    """``value`` as an int when it is an integer (not a bool) >= ``minimum``, else ValueError
    naming parameter ``name`` of ``where``."""
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise ValueError(
            f"The '{name}' parameter of {where} must be an int >= {minimum}. Got {value!r} instead."
        )
    return int(value)
