"""What a search optimises: metric names and the direction in which each one improves."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

MAXIMIZE = "maximize"
MINIMIZE = "minimize"
DIRECTIONS = (MAXIMIZE, MINIMIZE)
_DIRECTION_ALIASES = {"max": MAXIMIZE, "maximize": MAXIMIZE, "min": MINIMIZE, "minimize": MINIMIZE}

# The hardware metrics every trial records, with the direction in which each improves; ``params``
# is the compressed model's parameter count.
HARDWARE_METRIC_DIRECTIONS: Mapping[str, str] = MappingProxyType(
    {
        "latency_ms": MINIMIZE,
        "energy_mj": MINIMIZE,
        "size_kb": MINIMIZE,
        "peak_mem_kb": MINIMIZE,
        "params": MINIMIZE,
    }
)
# Every metric a classification trial records ("accuracy" alone means Objective("accuracy",
# "maximize")); other tasks record their own metrics in place of accuracy.
METRIC_DIRECTIONS: Mapping[str, str] = MappingProxyType(
    {"accuracy": MAXIMIZE, **HARDWARE_METRIC_DIRECTIONS}
)


def trial_metric_directions(task_metrics: Mapping[str, str] | None = None) -> dict[str, str]:
    """The metrics a trial records: the task's (default: classification's accuracy) and the
    hardware metrics, with their directions."""
    if task_metrics is None:
        return dict(METRIC_DIRECTIONS)
    return {**task_metrics, **HARDWARE_METRIC_DIRECTIONS}


@dataclass(frozen=True)
class Objective:
    """One optimisation target: a metric column of the trials DataFrame and its direction."""

    name: str
    direction: str

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(
                f"The 'name' parameter of Objective must be a non-empty str. Got {self.name!r} "
                "instead."
            )
        if self.direction not in DIRECTIONS:
            raise ValueError(
                "The 'direction' parameter of Objective must be 'maximize' or 'minimize'. "
                f"Got {self.direction!r} instead."
            )

    def maximised(self, value):
        """``value`` (a number or an array) of this metric as a score to maximise: negated when
        the metric is minimised. Its own inverse."""
        return value if self.direction == MAXIMIZE else -value

    def maximised_bounds(self, bounds: tuple[float, float]) -> tuple[float, float]:
        """The ``(low, high)`` bounds of this metric as bounds of :meth:`maximised` values."""
        low, high = bounds
        return (low, high) if self.direction == MAXIMIZE else (-high, -low)


def parse_objective(text: str, metrics: Mapping[str, str] | None = None) -> Objective:
    """Parse "accuracy" (direction from ``metrics``, default ``METRIC_DIRECTIONS``) or
    "name:max" / "name:min".

    The explicit form accepts any column name, so the report and ``export --pick`` can rank by
    any column; a search checks its objectives with :func:`check_trial_metric`.
    """
    known = METRIC_DIRECTIONS if metrics is None else metrics
    valid = ", ".join(known)
    constraint = f"a metric name ({valid}) or 'name:max' / 'name:min'"
    if not isinstance(text, str):
        raise ValueError(
            f"The 'text' parameter of parse_objective must be {constraint}. Got {text!r} instead."
        )
    name, sep, direction = text.strip().partition(":")
    name, direction = name.strip(), direction.strip().lower()
    if not sep and name in known:
        return Objective(name, known[name])
    if sep and name and direction in _DIRECTION_ALIASES:
        return Objective(name, _DIRECTION_ALIASES[direction])
    raise ValueError(
        f"The 'text' parameter of parse_objective must be {constraint}. Got {text!r} instead."
    )


def check_trial_metric(objective: Objective, metrics: Mapping[str, str] | None = None) -> Objective:
    """``objective`` if a trial records its metric (a key of ``metrics``, default
    ``METRIC_DIRECTIONS``), else a ValueError naming the metrics a trial records."""
    known = METRIC_DIRECTIONS if metrics is None else metrics
    if objective.name not in known:
        raise ValueError(
            f"{objective.name!r} is not a metric that a trial records; objectives must be among "
            f"{list(known)} (optionally as 'name:max' / 'name:min')"
        )
    return objective
