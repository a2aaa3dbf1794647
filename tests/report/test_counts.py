from __future__ import annotations

import math

import numpy as np
import pytest

from autocompress.core import Objective
from autocompress.report.counts import count_trials, nothing_to_plot, pruned_kind
from autocompress.report.style import label_points

ACC = Objective("accuracy", "maximize")
LAT = Objective("latency_ms", "minimize")
NAN = math.nan


@pytest.fixture
def mixed(make_trials):
    """Every outcome: 0-1 trained, 2 over budget, 3-4 stopped early, 5-6 skipped (prescreen,
    duplicate), 7-9 failed, 10 running, 11 waiting."""
    df = make_trials(
        [
            (0, "COMPLETE", True, 0.9, 2.0, 1.0),
            (1, "COMPLETE", True, 0.8, 1.0, 1.0),
            (2, "COMPLETE", False, 0.0, 0.5, 1.0),
            (3, "PRUNED", True, NAN, 3.0, 1.0),
            (4, "PRUNED", True, NAN, 3.0, 1.0),
            (5, "PRUNED", True, NAN, 3.0, 1.0),
            (6, "PRUNED", True, NAN, 3.0, 1.0),
            (7, "FAIL", False, NAN, NAN, NAN),
            (8, "FAIL", False, NAN, NAN, NAN),
            (9, "FAIL", False, NAN, NAN, NAN),
            (10, "RUNNING", False, NAN, NAN, NAN),
            (11, "WAITING", False, NAN, NAN, NAN),
        ]
    )
    df["pruned_reason"] = (
        [""] * 3
        + [
            "stopped at rung 0 after 1 epoch(s) with accuracy 0.4000",
            "stopped at rung 1 after 2 epoch(s) with accuracy 0.5000",
            "skipped: predicted dominated by the front",
            "duplicate of trial 1",
        ]
        + [""] * 5
    )
    df["fail_reason"] = [""] * 7 + ["out of memory", "loss is NaN", "out of memory"] + [""] * 2
    return df


def test_count_trials_tells_stopped_from_skipped(mixed) -> None:
    counts = count_trials(mixed)
    assert counts.total == 12
    assert (counts.complete, counts.over_budget) == (2, 1)
    assert (counts.stopped, counts.skipped) == (2, 2)
    assert (counts.failed, counts.running, counts.other) == (3, 2, 0)
    assert (counts.top_fail_reason, counts.top_fail_count) == ("out of memory", 2)
    assert counts.describe() == (
        "2 complete, 1 over budget (not trained), 2 stopped early, 2 skipped (not trained), "
        "3 failed, 2 running"
    )


def test_pruned_kind() -> None:
    assert pruned_kind("stopped at rung 2 after 4 epoch(s) with accuracy 0.8000") == "stopped early"
    assert pruned_kind("skipped: predicted dominated") == "skipped"
    assert pruned_kind("duplicate of trial 3") == "skipped"
    assert pruned_kind(NAN) == "skipped" and pruned_kind(None) == "skipped"


def test_count_trials_without_reason_columns(three_objective_trials) -> None:
    # A hand-made or old table: no pruned_reason / fail_reason columns.
    counts = count_trials(three_objective_trials)
    assert (counts.complete, counts.over_budget, counts.failed, counts.running) == (5, 1, 1, 1)
    assert counts.top_fail_reason == "" and counts.describe().startswith("5 complete")


def test_nothing_to_plot_only_without_a_front(mixed, make_trials) -> None:
    assert nothing_to_plot(mixed, [ACC, LAT]) is None
    failed = mixed[mixed["state"] != "COMPLETE"]
    assert nothing_to_plot(failed, [ACC, LAT]) == (
        "No completed trial within the hardware budget yet: nothing to plot. 9 trials: "
        "0 complete, 2 stopped early, 2 skipped (not trained), 3 failed, 2 running. "
        "Most common failure (2 of 3): out of memory"
    )
    assert nothing_to_plot(mixed.iloc[:0], [ACC, LAT]) == "No trial yet: nothing to plot."


def test_nothing_to_plot_names_unmeasured_objectives_and_cuts_long_reasons(make_trials) -> None:
    energy = Objective("energy_mj", "minimize")
    df = make_trials([(0, "COMPLETE", True, 0.9, 1.0, 1.0), (1, "FAIL", False, NAN, NAN, NAN)])
    df["energy_mj"] = NAN  # a profile that reports no energy
    df["fail_reason"] = ["", "x" * 500]
    message = nothing_to_plot(df, [ACC, energy])
    assert message.startswith(
        "None of the 1 completed trials within the hardware budget has every objective "
        "(accuracy, energy_mj) measured: nothing to plot. 2 trials: 1 complete, 1 failed."
    )
    assert message.endswith("x…") and len(message) < 400


def test_label_points_groups_trials_at_one_point() -> None:
    values = np.array([[1.0, 2.0], [3.0, 4.0], [1.0, 2.0], [1.0, 2.5]])
    labels = label_points(values, [6, 1, 0, 2])
    assert [(label.position, label.numbers, label.text) for label in labels] == [
        ((1.0, 2.0), (0, 6), "0,6"),
        ((3.0, 4.0), (1,), "1"),
        ((1.0, 2.5), (2,), "2"),
    ]
    assert [label.text for label in label_points(np.array([5.0, 5.0, 7.0]), [3, 4, 5])] == [
        "3,4",
        "5",
    ]
    assert label_points(np.empty((0, 3)), []) == []
