"""One timing rule for every measured path (whole models, LUT layers, the agent).

On a shared machine other processes, frequency changes and cache state only ever add time, and
they come and go within seconds. So a timing here:

1. warms up: ``warmup`` untimed runs (none at all with ``warmup=0``), then more in batches of
   :data:`WARMUP_BATCH` until two batches in a row have medians within ``tolerance`` of each
   other (at most :data:`MAX_WARMUP_BATCHES` batches): caches, allocators and lazy
   initialisation settle;
2. times ``repeats`` runs split into ``rounds`` rounds and takes each round's median (a median
   shrugs off single outliers);
3. reports the smallest round median (a slow phase of the machine raises some rounds, never
   lowers one), and adds rounds of the same size, up to ``max_rounds``, while the two smallest
   round medians differ by more than ``tolerance``: the figure is only reported once a second
   round agrees with it;
4. reports its own repeatability: ``repeatability`` is the relative gap between the two
   smallest round medians (0.02 = they agree within 2%), ``round_spread`` the gap between the
   smallest and largest, and ``stable`` whether the gap is within ``tolerance``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["TimingResult", "latency_spread", "time_calls"]

WARMUP_BATCH = 5
MAX_WARMUP_BATCHES = 8
DEFAULT_ROUNDS = 3
DEFAULT_MAX_ROUNDS = 6
DEFAULT_TOLERANCE = 0.05


@dataclass(frozen=True)
class TimingResult:
    """Seconds of every timed run (round after round), each round's median, the untimed
    warm-up runs made, and the wall-clock window around the timed runs."""

    samples_s: list[float]
    round_medians_s: list[float]
    warmup_runs: int
    window_s: float
    tolerance: float

    @property
    def latency_s(self) -> float:
        return min(self.round_medians_s)

    def details(self) -> dict[str, Any]:
        """Milliseconds: the reported latency's spread, rounds and repeatability."""
        medians = sorted(self.round_medians_s)
        gap = (medians[1] - medians[0]) / medians[0] if len(medians) > 1 and medians[0] else 0.0
        spread = (medians[-1] - medians[0]) / medians[0] if medians[0] else 0.0
        return {
            **latency_spread([s * 1e3 for s in self.samples_s]),
            "statistic": "min of per-round medians",
            "rounds": len(self.round_medians_s),
            "round_medians_ms": [s * 1e3 for s in self.round_medians_s],
            "warmup_runs": self.warmup_runs,
            "repeatability": gap,
            "round_spread": spread,
            "stable": len(medians) > 1 and gap <= self.tolerance,
            "samples_ms": [s * 1e3 for s in self.samples_s],
        }


def time_calls(
    run: Callable[[], Any],
    *,
    warmup: int,
    repeats: int,
    rounds: int = DEFAULT_ROUNDS,
    max_rounds: int = DEFAULT_MAX_ROUNDS,
    tolerance: float = DEFAULT_TOLERANCE,
    sync: Callable[[], None] | None = None,
    on_window: Callable[[], None] | None = None,
) -> TimingResult:
    """Time ``run()`` by the rule of the module doc. ``sync`` is called before and after each
    timed call (e.g. a CUDA synchronise); ``on_window`` right before the first timed run and
    right after the last (e.g. reading an energy counter)."""
    rounds = max(1, min(rounds, repeats))
    max_rounds = max(rounds, max_rounds)
    sizes = [len(part) for part in np.array_split(np.arange(repeats), rounds)]

    def timed() -> float:
        if sync is not None:
            sync()
        start = time.perf_counter()
        run()
        if sync is not None:
            sync()
        return time.perf_counter() - start

    for _ in range(warmup):
        run()
    # warmup=0 asks for no warm-up at all (e.g. a one-shot check), so nothing is settled either.
    warmup_runs = warmup + (_settle(timed, tolerance) if warmup else 0)
    if sync is not None:  # queued warm-up work must not count in the window
        sync()
    window_start = time.perf_counter()
    if on_window is not None:
        on_window()
    samples: list[float] = []
    medians: list[float] = []
    while True:
        size = sizes[len(medians)] if len(medians) < len(sizes) else sizes[0]
        chunk = [timed() for _ in range(size)]
        samples += chunk
        medians.append(float(np.median(chunk)))
        if len(medians) < rounds:
            continue
        low = sorted(medians)
        agreed = len(low) < 2 or low[1] - low[0] <= tolerance * low[0]
        if agreed or len(medians) >= max_rounds:
            break
    if on_window is not None:
        on_window()
    window = time.perf_counter() - window_start
    return TimingResult(samples, medians, warmup_runs, window, tolerance)


def _settle(timed: Callable[[], float], tolerance: float) -> int:
    """Untimed-for-the-result batches until two consecutive batch medians agree; returns the
    number of runs made."""
    previous = None
    for batch in range(MAX_WARMUP_BATCHES):
        median = float(np.median([timed() for _ in range(WARMUP_BATCH)]))
        if previous is not None and abs(median - previous) <= tolerance * max(previous, 1e-12):
            return (batch + 1) * WARMUP_BATCH
        previous = median
    return MAX_WARMUP_BATCHES * WARMUP_BATCH


def latency_spread(samples_ms: Sequence[float]) -> dict[str, float]:
    """Median, p10, p90, min and max (ms) of timing samples, keyed ``median_ms``, ``p10_ms``..."""
    if not samples_ms:
        return {k: math.nan for k in ("median_ms", "p10_ms", "p90_ms", "min_ms", "max_ms")}
    return {
        "median_ms": float(np.median(samples_ms)),
        "p10_ms": float(np.percentile(samples_ms, 10)),
        "p90_ms": float(np.percentile(samples_ms, 90)),
        "min_ms": float(min(samples_ms)),
        "max_ms": float(max(samples_ms)),
    }
