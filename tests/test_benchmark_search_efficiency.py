"""The ceiling analysis of benchmarks/search_efficiency.py: the greedy that trains the untried
candidate adding the most hypervolume at its estimated accuracy."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from autocompress.core import hypervolume

DIRECTIONS = ["maximize", "minimize", "minimize"]


@pytest.fixture()
def bench(monkeypatch):
    path = Path(__file__).parents[1] / "benchmarks" / "search_efficiency.py"
    spec = importlib.util.spec_from_file_location("search_efficiency_bench", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    truth = np.array(
        [
            [0.50, 3.0, 3.0],  # dominated by the next row
            [0.90, 1.0, 1.0],  # alone nearly the whole reference volume
            [0.95, 2.9, 2.9],
            [0.40, 0.9, 0.9],
            [0.60, 2.0, 2.0],
        ]
    )
    point = [0.3, 3.1, 3.1]
    monkeypatch.setitem(module.REFERENCE, "directions", DIRECTIONS)
    monkeypatch.setitem(module.REFERENCE, "point", point)
    monkeypatch.setitem(module.REFERENCE, "hv", hypervolume(truth, DIRECTIONS, point))
    return module, truth


def test_greedy_with_true_accuracies_needs_the_fewest_trials(bench):
    module, truth = bench
    assert hypervolume(truth[[1]], DIRECTIONS, module.REFERENCE["point"]) >= (
        module.TARGET * module.REFERENCE["hv"]
    )
    assert module._greedy_trials(truth, truth[:, 0]) == 1


def test_greedy_misled_by_estimates_needs_more_trials(bench):
    module, truth = bench
    # The estimates rank the best row last: the greedy trains the others first.
    misleading = np.array([0.95, 0.31, 0.99, 0.9, 0.97])
    trials = module._greedy_trials(truth, misleading)
    assert 1 < trials <= len(truth)


def test_two_stage_history_refits_the_short_front_and_counts_the_refits(bench):
    module, truth = bench
    # Rows as the table holds them: short (1-epoch) accuracy, full curve, costs, seconds.
    table = {
        str(i): {
            "short": short,
            "curve": [0.0, float(row[0])],
            "epoch_s": [1.0, 1.0],
            "latency_ms": float(row[1]),
            "size_kb": float(row[2]),
        }
        for i, (row, short) in enumerate(zip(truth, [0.5, 0.3, 0.9, 0.2, 0.6], strict=True))
    }
    short_history = {
        "keys": ["0", "1", "1", "2"],  # the same candidate twice: refit once
        "full": [0.5, 1.0, 1.5, 2.0],
        "seconds": [0.1, 0.2, 0.3, 0.4],
    }
    out = module.refit_front(short_history, table)
    # After 2 trials the short front is {0, 1} (row 1 is cheaper, row 0 more accurate).
    assert out["trials"][1] == 2 + 2
    assert out["full"][1] == 1.0 + 2
    assert out["seconds"][1] == pytest.approx(0.2 + 4.0)
    assert out["trials"][2] == 3 + 2
    expected = hypervolume(truth[[0, 1]], DIRECTIONS, module.REFERENCE["point"])
    assert out["hv"][1] == pytest.approx(expected / module.REFERENCE["hv"])
    # Row 2's short accuracy beats row 0's at a lower cost: row 0 leaves the refit.
    assert out["trials"][3] == 4 + 2
    # With a slack of 0.5, row 0 (0.5 short) is within reach of row 2 (0.9): it stays refit.
    near = module.refit_front(short_history, table, slack=0.5)
    assert near["trials"][3] == 4 + 3
    assert near["full"][3] == 2.0 + 3
    # With a budget of 1, only the short front's most accurate point (row 2) is refit.
    one = module.refit_front(short_history, table, budget=1)
    assert one["trials"][3] == 4 + 1 and one["full"][3] == 2.0 + 1
    assert one["hv"][3] == pytest.approx(
        hypervolume(truth[[2]], DIRECTIONS, module.REFERENCE["point"]) / module.REFERENCE["hv"]
    )
    # With 2, both points of that front: the same as refitting it whole.
    assert module.refit_front(short_history, table, budget=2)["hv"] == pytest.approx(out["hv"])
