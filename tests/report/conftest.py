"""Shared trial tables for the report tests."""

from __future__ import annotations

import math
from collections.abc import Callable

import pandas as pd
import pytest

NAN = math.nan


def _trials(rows: list[tuple]) -> pd.DataFrame:
    """Rows of (number, state, feasible, accuracy, latency_ms, size_kb) -> trials DataFrame."""
    df = pd.DataFrame(
        rows, columns=["number", "state", "feasible", "accuracy", "latency_ms", "size_kb"]
    )
    df["trained"] = df["state"] == "COMPLETE"
    df["energy_mj"] = df["latency_ms"] * 0.5
    df["peak_mem_kb"] = df["size_kb"] * 2.0
    return df


@pytest.fixture
def make_trials() -> Callable[[list[tuple]], pd.DataFrame]:
    return _trials


@pytest.fixture
def three_objective_trials() -> pd.DataFrame:
    """Hand-checked example (accuracy max, latency min, size min).

    Full front: 0, 6, 1, 2 (3 is dominated by all; 4 is infeasible; 5 failed).
    accuracy/latency front: 1, 6, 0.  accuracy/size front: 2, 0.  latency/size front: 1, 2.
    """
    return _trials(
        [
            (0, "COMPLETE", True, 0.90, 5.0, 10.0),
            (1, "COMPLETE", True, 0.80, 2.0, 50.0),
            (2, "COMPLETE", True, 0.70, 3.0, 5.0),
            (3, "COMPLETE", True, 0.60, 6.0, 60.0),
            (4, "COMPLETE", False, 0.95, 1.0, 1.0),
            (5, "FAIL", False, NAN, NAN, NAN),
            (6, "COMPLETE", True, 0.85, 4.0, 20.0),
            (7, "RUNNING", True, NAN, NAN, NAN),
        ]
    )
