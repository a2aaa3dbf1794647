"""Choose a trial by a short rule such as ``"fastest with accuracy >= 0.95"``.

Grammar (case-insensitive, parsed token by token, never evaluated)::

    rule       := ranking [ "with" condition { "and" condition } ]
    ranking    := "fastest" | "smallest" | "most accurate" | "lowest energy"
                | "min" METRIC | "max" METRIC
    condition  := METRIC ( "<=" | ">=" | "<" | ">" ) NUMBER

``fastest`` is ``min latency_ms``, ``smallest`` is ``min size_kb``, ``lowest energy`` is
``min energy_mj`` and ``most accurate`` is ``max accuracy``. METRIC is one of
:data:`PICK_METRICS` (columns of the trials table); NUMBER is a plain decimal such as ``0.95``,
``12`` or ``1e-3`` (accuracy is a fraction: write 0.95, not 95).

Only trials that completed and met the hardware budget (``feasible``) are candidates, and a trial
whose ranked or conditioned metric is unknown (NaN) is skipped. Ties on the ranked metric go to
the more accurate trial, then to the lower trial number.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

PICK_METRICS = ("accuracy", "latency_ms", "energy_mj", "size_kb", "peak_mem_kb", "params")
_WORDS = {"with", "and", "min", "max"}
_SUPERLATIVES = {
    "fastest": ("latency_ms", "min"),
    "smallest": ("size_kb", "min"),
    "most accurate": ("accuracy", "max"),
    "lowest energy": ("energy_mj", "min"),
}
_OPERATORS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "<": operator.lt,
    ">": operator.gt,
}
_TOKEN = re.compile(r"\s*(<=|>=|<|>|[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[A-Za-z_]+)")
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
GRAMMAR = (
    "RANKING [with METRIC OP NUMBER [and METRIC OP NUMBER ...]], where RANKING is fastest, "
    "smallest, most accurate, lowest energy, 'min METRIC' or 'max METRIC', OP is <=, >=, < or >, "
    f"and METRIC is a metric column of the trials table ({', '.join(PICK_METRICS)}, or the "
    "task's metrics, e.g. miou)"
)


class PickError(ValueError):
    """A rule that cannot be parsed, or that no trial satisfies; the message says what was
    understood."""


@dataclass(frozen=True)
class Condition:
    metric: str
    op: str
    value: float

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.value:g}"


@dataclass(frozen=True)
class PickRule:
    """Rank by ``metric`` (``direction`` "min" or "max") among trials meeting ``conditions``."""

    metric: str
    direction: str
    conditions: tuple[Condition, ...] = ()

    def __str__(self) -> str:
        text = f"{self.direction} {self.metric}"
        if self.conditions:
            text += " with " + " and ".join(str(c) for c in self.conditions)
        return text


@dataclass(frozen=True)
class Pick:
    """The chosen trial, the rule as understood, and how many trials were eligible."""

    trial: int
    rule: PickRule
    row: dict
    eligible: int


def parse_rule(text: str) -> PickRule:
    """Parse a pick rule (see the module doc); raises :class:`PickError` naming what was
    understood and what was expected instead."""
    if not isinstance(text, str) or not text.strip():
        raise PickError(
            f"The 'rule' parameter of parse_rule must be a non-empty str ({GRAMMAR}). "
            f"Got {text!r} instead."
        )
    tokens = _tokenize(text)
    parser = _Parser(text, tokens)
    return parser.rule()


def _tokenize(text: str) -> list[str]:
    tokens, pos = [], 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        match = _TOKEN.match(text, pos)
        if match is None:
            raise PickError(
                f"Cannot read the pick rule {text!r} at {text[pos:].strip()!r}: expected a word, "
                f"a number or one of <=, >=, <, >. A rule reads: {GRAMMAR}."
            )
        tokens.append(match.group(1))
        pos = match.end()
    return tokens


class _Parser:
    def __init__(self, text: str, tokens: list[str]) -> None:
        self.text, self.tokens, self.pos = text, tokens, 0
        self.metric: str | None = None
        self.direction: str | None = None
        self.conditions: list[Condition] = []

    def _peek(self) -> str | None:
        return self.tokens[self.pos].lower() if self.pos < len(self.tokens) else None

    def _next(self, expected: str) -> str:
        token = self._peek()
        if token is None:
            self._fail(expected, "the end of the rule")
        self.pos += 1
        return token

    def _fail(self, expected: str, got: str | None = None) -> None:
        if got is None:
            got = repr(self.tokens[self.pos]) if self.pos < len(self.tokens) else "the end"
        understood = "nothing yet"
        if self.metric is not None:
            understood = str(PickRule(self.metric, self.direction, tuple(self.conditions)))
        raise PickError(
            f"Cannot parse the pick rule {self.text!r}: expected {expected}, got {got}. "
            f"Understood so far: {understood}. A rule reads: {GRAMMAR}."
        )

    def _metric(self) -> str:
        token = self._next("a metric name")
        # Other tasks add their own metric columns (miou, mse, ...): the table checks the name.
        if not token.isidentifier() or token in _WORDS:
            self.pos -= 1
            self._fail(f"a metric name ({', '.join(PICK_METRICS)}, or a task metric)")
        return token

    def rule(self) -> PickRule:
        self._ranking()
        if self._peek() is not None:
            if self._peek() != "with":
                self._fail("'with' or the end of the rule")
            self.pos += 1
            self._condition()
            while self._peek() is not None:
                if self._peek() != "and":
                    self._fail("'and' or the end of the rule")
                self.pos += 1
                self._condition()
        return PickRule(self.metric, self.direction, tuple(self.conditions))

    def _ranking(self) -> None:
        expected = "fastest, smallest, most accurate, lowest energy, 'min METRIC' or 'max METRIC'"
        first = self._next(expected)
        if first in ("min", "max"):
            self.metric, self.direction = self._metric(), first
            return
        if first in _SUPERLATIVES:
            self.metric, self.direction = _SUPERLATIVES[first]
            return
        second = self._peek()
        phrase = f"{first} {second}"
        if second is not None and phrase in _SUPERLATIVES:
            self.pos += 1
            self.metric, self.direction = _SUPERLATIVES[phrase]
            return
        self.pos -= 1
        self._fail(expected)

    def _condition(self) -> None:
        metric = self._metric()
        op = self._next("one of <=, >=, <, >")
        if op not in _OPERATORS:
            self.pos -= 1
            self._fail(f"one of <=, >=, <, > after {metric!r}")
        number = self._next(f"a number after '{metric} {op}'")
        if not _NUMBER.fullmatch(number):
            self.pos -= 1
            self._fail(f"a number after '{metric} {op}'")
        self.conditions.append(Condition(metric, op, float(number)))


def pick_trial(trials: pd.DataFrame, rule: str | PickRule) -> Pick:
    """The trial of ``trials`` (as from ``load_trials``) that ``rule`` chooses.

    Raises :class:`PickError` when the rule does not parse or no completed, feasible trial with
    known values satisfies it; the message gives the rule as understood and, per condition, the
    range of values the eligible trials have.
    """
    parsed = parse_rule(rule) if isinstance(rule, str) else rule
    missing = [m for m in _metrics(parsed) if m not in trials.columns]
    if missing:
        raise PickError(
            f"The trials table has no column {missing[0]!r} (rule understood as: {parsed})."
        )
    usable = trials[(trials["state"] == "COMPLETE") & trials["feasible"].astype(bool)]
    usable = usable.dropna(subset=list(_metrics(parsed)))
    eligible = usable
    for condition in parsed.conditions:
        values = eligible[condition.metric].astype(float)
        eligible = eligible[_OPERATORS[condition.op](values, condition.value)]
    if eligible.empty:
        ranges = "; ".join(
            f"{c.metric} of those trials spans {_span(usable[c.metric])}" for c in parsed.conditions
        )
        raise PickError(
            f"No completed, within-budget trial satisfies the rule (understood as: {parsed}). "
            f"{len(usable)} trial(s) were eligible before the conditions"
            + (f"; {ranges}." if ranges else ".")
        )
    # Ties: the more accurate trial, then the lower trial number.
    ascending = parsed.direction == "min"
    keys, orders = [parsed.metric], [ascending]
    if parsed.metric != "accuracy" and "accuracy" in eligible.columns:
        keys.append("accuracy")
        orders.append(False)
    keys.append("number")
    orders.append(True)
    best = eligible.sort_values(keys, ascending=orders, kind="stable").iloc[0]
    return Pick(trial=int(best["number"]), rule=parsed, row=best.to_dict(), eligible=len(eligible))


def _metrics(rule: PickRule) -> tuple[str, ...]:
    return tuple(dict.fromkeys([rule.metric, *(c.metric for c in rule.conditions)]))


def _span(values: pd.Series) -> str:
    values = values.dropna()
    if values.empty:
        return "no values"
    lo, hi = float(values.min()), float(values.max())
    return f"{lo:.4g}" if math.isclose(lo, hi) else f"{lo:.4g} .. {hi:.4g}"


__all__ = [
    "GRAMMAR",
    "PICK_METRICS",
    "Condition",
    "Pick",
    "PickError",
    "PickRule",
    "parse_rule",
    "pick_trial",
]
