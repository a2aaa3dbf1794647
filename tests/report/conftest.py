"""Fixtures of the report tests."""

from __future__ import annotations

import json
from collections.abc import Callable

import pandas as pd
import pytest


@pytest.fixture
def two_trials() -> Callable[..., pd.DataFrame]:
    """``two_trials(**field)``: a trials table of two completed trials over layers ``a`` and
    ``fc``; trial 1's ``a`` (w4/a8, unpruned) carries ``field`` (e.g. ``rank_ratio=0.5``,
    ``sparsity="2:4"``) unless its value is None."""

    def build(**field) -> pd.DataFrame:
        second = {"w_bits": 4, "a_bits": 8, "prune_ratio": 0.0}
        second |= {key: value for key, value in field.items() if value is not None}
        plain = {"w_bits": 8, "a_bits": 8, "prune_ratio": 0.5}
        return pd.DataFrame(
            {
                "number": [0, 1],
                "state": ["COMPLETE", "COMPLETE"],
                "feasible": [True, True],
                "trained": [True, True],
                "accuracy": [0.9, 0.8],
                "latency_ms": [2.0, 1.0],
                "candidate": [
                    _candidate({"a": plain, "fc": plain}),
                    _candidate({"a": second, "fc": plain}),
                ],
                "summary": ["t0", "t1"],
            }
        )

    return build


def _candidate(layers: dict[str, dict]) -> str:
    return json.dumps({"version": 1, "family": "small_cnn", "arch": {}, "layers": layers})
