"""How well predicted latencies match measured ones (the yardstick of every latency profile)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

__all__ = ["LatencyFidelity", "latency_fidelity"]


class LatencyFidelity(NamedTuple):
    """How well predicted latencies match measured ones.

    ``within_10pct``: fraction of models with ``|predicted - measured| <= 10% * measured``.
    ``rmse_ms``: root-mean-square error. ``kendall_tau``: rank agreement (what a search needs).
    ``median_abs_pct``: median of ``|predicted / measured - 1|`` in percent.
    """

    n: int
    within_10pct: float
    rmse_ms: float
    kendall_tau: float
    median_abs_pct: float


def latency_fidelity(
    *, predicted_ms: Sequence[float], measured_ms: Sequence[float]
) -> LatencyFidelity:
    """Compare predictions to measurements, one pair per model (see :class:`LatencyFidelity`)."""
    from scipy.stats import kendalltau

    pred = np.asarray(predicted_ms, dtype=np.float64).ravel()
    meas = np.asarray(measured_ms, dtype=np.float64).ravel()
    if pred.shape != meas.shape or len(meas) < 2 or not np.all(meas > 0):
        raise ValueError(
            "The 'predicted_ms' and 'measured_ms' parameters of latency_fidelity must be "
            "equally long (>= 2) with positive measurements. Got "
            f"{len(pred)} predictions and {len(meas)} measurements instead."
        )
    rel = np.abs(pred / meas - 1.0)
    tau = kendalltau(pred, meas).statistic
    return LatencyFidelity(
        n=len(meas),
        within_10pct=float(np.mean(rel <= 0.10)),
        rmse_ms=float(np.sqrt(np.mean((pred - meas) ** 2))),
        kendall_tau=float(tau),
        median_abs_pct=float(100 * np.median(rel)),
    )
