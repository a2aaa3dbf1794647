from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from autocompress.core import (
    Objective,
    greedy_hypervolume_order,
    hypervolume,
    hypervolume_history,
    nadir_reference,
    non_dominated_mask,
    pareto_front,
    parse_objective,
    reference_point,
)

NAN = math.nan
ACC = Objective("accuracy", "maximize")
LAT = Objective("latency_ms", "minimize")
SIZE = Objective("size_kb", "minimize")
MAX_MIN = ["maximize", "minimize"]


# --- Objective / parse_objective ------------------------------------------------------------


def test_objective_rejects_unknown_direction() -> None:
    with pytest.raises(ValueError, match="'direction' parameter of Objective"):
        Objective("accuracy", "up")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("accuracy", ACC),
        ("latency_ms", LAT),
        ("energy_mj", Objective("energy_mj", "minimize")),
        ("size_kb", SIZE),
        ("peak_mem_kb", Objective("peak_mem_kb", "minimize")),
        ("accuracy:min", Objective("accuracy", "minimize")),
        (" size_kb : MAX ", Objective("size_kb", "maximize")),
        ("my_score:max", Objective("my_score", "maximize")),
        ("my_cost:minimize", Objective("my_cost", "minimize")),
    ],
)
def test_parse_objective(text: str, expected: Objective) -> None:
    assert parse_objective(text) == expected


@pytest.mark.parametrize("text", ["acuracy", "", ":max", "accuracy:up", "latency:", "a:b:max"])
def test_parse_objective_errors_list_valid_metrics(text: str) -> None:
    with pytest.raises(ValueError, match="'text' parameter of parse_objective") as info:
        parse_objective(text)
    message = str(info.value)
    for name in ("accuracy", "latency_ms", "energy_mj", "size_kb", "peak_mem_kb"):
        assert name in message
    assert repr(text) in message


def test_parse_objective_rejects_non_string() -> None:
    with pytest.raises(ValueError, match="Got 3 instead"):
        parse_objective(3)  # type: ignore[arg-type]


# --- non_dominated_mask -----------------------------------------------------------------------


def test_non_dominated_mask_mixed_directions_ties_and_nan() -> None:
    values = np.array(
        [
            [0.90, 2.0],  # front
            [0.80, 1.0],  # front
            [0.85, 3.0],  # dominated by row 0
            [0.90, 2.0],  # duplicate of a front point: kept
            [NAN, 0.5],  # unknown accuracy: never on the front
            [0.70, 1.0],  # same latency as row 1, worse accuracy: dominated
            [0.80, NAN],  # unknown latency
        ]
    )
    mask = non_dominated_mask(values, MAX_MIN)
    assert mask.dtype == bool
    assert mask.tolist() == [True, True, False, True, False, False, False]


def test_non_dominated_mask_depends_on_directions() -> None:
    values = np.array([[1.0, 1.0], [2.0, 2.0], [1.0, 2.0]])
    assert non_dominated_mask(values, ["minimize", "minimize"]).tolist() == [True, False, False]
    assert non_dominated_mask(values, ["maximize", "maximize"]).tolist() == [False, True, False]
    assert non_dominated_mask(values, ["minimize", "maximize"]).tolist() == [False, False, True]


def test_non_dominated_mask_nan_row_does_not_dominate() -> None:
    # Row 0 would dominate row 1 on latency alone, but its accuracy is unknown.
    values = np.array([[NAN, 0.1], [0.5, 5.0]])
    assert non_dominated_mask(values, MAX_MIN).tolist() == [False, True]


def test_non_dominated_mask_edge_shapes() -> None:
    assert non_dominated_mask(np.empty((0, 2)), MAX_MIN).tolist() == []
    assert non_dominated_mask(np.array([[3.0], [1.0], [1.0]]), ["minimize"]).tolist() == [
        False,
        True,
        True,
    ]


def test_non_dominated_mask_validates_input() -> None:
    with pytest.raises(ValueError, match="'values' parameter of non_dominated_mask"):
        non_dominated_mask(np.array([1.0, 2.0]), MAX_MIN)
    with pytest.raises(ValueError, match="'directions' parameter of non_dominated_mask"):
        non_dominated_mask(np.ones((2, 2)), ["maximize"])
    with pytest.raises(ValueError, match="'directions' parameter of non_dominated_mask"):
        non_dominated_mask(np.ones((2, 2)), ["max", "min"])


# --- pareto_front -----------------------------------------------------------------------------


def test_pareto_front_uses_only_feasible_complete_trials(three_objective_trials) -> None:
    front = pareto_front(three_objective_trials, [ACC, LAT, SIZE])
    # Trial 4 dominates everything but is over budget; 5 failed; 7 is still running.
    assert front["number"].tolist() == [0, 6, 1, 2]  # best accuracy first
    assert list(front.columns) == list(three_objective_trials.columns)
    assert front.index.tolist() == [0, 6, 1, 2]  # original index kept for joins


def test_pareto_front_two_objectives_and_minimized_first(three_objective_trials) -> None:
    assert pareto_front(three_objective_trials, [ACC, LAT])["number"].tolist() == [0, 6, 1]
    # With a minimised first objective the front is sorted by it ascending.
    assert pareto_front(three_objective_trials, [LAT, ACC])["number"].tolist() == [1, 6, 0]


def test_pareto_front_feasible_column_with_missing_values(make_trials) -> None:
    df = make_trials([(0, "COMPLETE", True, 0.5, 2.0, 1.0), (1, "COMPLETE", None, 0.9, 1.0, 1.0)])
    df["feasible"] = df["feasible"].astype("boolean")
    assert pareto_front(df, [ACC, LAT])["number"].tolist() == [0]


def test_pareto_front_empty_when_nothing_feasible(make_trials) -> None:
    df = make_trials([(0, "COMPLETE", False, 0.5, 2.0, 1.0), (1, "FAIL", True, NAN, NAN, NAN)])
    assert pareto_front(df, [ACC, LAT]).empty


def test_pareto_front_validates_input(three_objective_trials) -> None:
    with pytest.raises(ValueError, match=r"must have the columns \['bogus'\]"):
        pareto_front(three_objective_trials, [ACC, Objective("bogus", "minimize")])
    with pytest.raises(ValueError, match="'objectives' parameter of pareto_front"):
        pareto_front(three_objective_trials, [])
    with pytest.raises(ValueError, match="'objectives' parameter of pareto_front"):
        pareto_front(three_objective_trials, [ACC, ACC])
    with pytest.raises(ValueError, match="'df' parameter of pareto_front"):
        pareto_front(three_objective_trials.to_dict(), [ACC])  # type: ignore[arg-type]


# --- hypervolume ------------------------------------------------------------------------------


def test_hypervolume_single_point_2d() -> None:
    assert hypervolume(np.array([[0.9, 2.0]]), MAX_MIN, [0.0, 10.0]) == pytest.approx(0.9 * 8)


def test_hypervolume_union_of_boxes_2d() -> None:
    points = np.array([[0.9, 2.0], [0.5, 1.0], [0.4, 5.0]])  # the last one is dominated
    # 0.9 x (10 - 2) plus the strip the faster point adds: 0.5 x (2 - 1).
    assert hypervolume(points, MAX_MIN, [0.0, 10.0]) == pytest.approx(7.2 + 0.5)


def test_hypervolume_drops_points_outside_reference() -> None:
    points = np.array(
        [
            [0.9, 12.0],  # slower than the reference
            [0.0, 1.0],  # equal to the reference accuracy: not strictly better
            [NAN, 1.0],
            [0.5, 9.0],
        ]
    )
    assert hypervolume(points, MAX_MIN, [0.0, 10.0]) == pytest.approx(0.5 * 1.0)
    assert hypervolume(points[:3], MAX_MIN, [0.0, 10.0]) == 0.0
    assert hypervolume(np.empty((0, 2)), MAX_MIN, [0.0, 10.0]) == 0.0


def test_hypervolume_directions_matter() -> None:
    points = np.array([[2.0, 3.0]])
    assert hypervolume(points, ["minimize", "minimize"], [4.0, 4.0]) == pytest.approx(2.0)
    assert hypervolume(points, ["maximize", "maximize"], [0.0, 0.0]) == pytest.approx(6.0)
    assert hypervolume(points, ["maximize", "minimize"], [0.0, 4.0]) == pytest.approx(2.0)
    # The same reference seen from the other direction holds no volume.
    assert hypervolume(points, ["maximize", "maximize"], [4.0, 4.0]) == 0.0


def test_hypervolume_3d() -> None:
    minimize3 = ["minimize"] * 3
    ones = [1.0, 1.0, 1.0]
    assert hypervolume(np.array([[0.0, 0.0, 0.0]]), minimize3, ones) == pytest.approx(1.0)
    # Two slabs of 0.5 overlapping in a quarter.
    two = np.array([[0.5, 0.0, 0.0], [0.0, 0.5, 0.0]])
    assert hypervolume(two, minimize3, ones) == pytest.approx(0.75)
    # accuracy max, latency min, energy min against (0, 4, 5):
    # 0.8*2*2 + 0.6*3*4 - overlap 0.6*2*2 = 3.2 + 7.2 - 2.4.
    mixed = np.array([[0.8, 2.0, 3.0], [0.6, 1.0, 1.0]])
    directions = ["maximize", "minimize", "minimize"]
    assert hypervolume(mixed, directions, [0.0, 4.0, 5.0]) == pytest.approx(8.0)


def test_hypervolume_validates_reference() -> None:
    with pytest.raises(ValueError, match="'reference' parameter of hypervolume"):
        hypervolume(np.array([[0.9, 2.0]]), MAX_MIN, [0.0])
    with pytest.raises(ValueError, match="'reference' parameter of hypervolume"):
        hypervolume(np.array([[0.9, 2.0]]), MAX_MIN, [0.0, math.inf])


# --- reference_point --------------------------------------------------------------------------


def test_reference_point_from_feasible_trials(three_objective_trials) -> None:
    objectives = [ACC, LAT, SIZE, Objective("peak_mem_kb", "maximize")]
    ref = reference_point(three_objective_trials, objectives)
    # Feasible complete trials only: latency 2..6, size 5..60, peak_mem 10..120 (= 2 x size).
    np.testing.assert_allclose(ref, [0.0, 6.0 + 0.4, 60.0 + 5.5, 10.0 - 11.0])


def test_reference_point_is_deterministic(three_objective_trials) -> None:
    objectives = [ACC, LAT, SIZE]
    first = reference_point(three_objective_trials, objectives)
    shuffled = three_objective_trials.sample(frac=1.0, random_state=0)
    np.testing.assert_array_equal(first, reference_point(three_objective_trials, objectives))
    np.testing.assert_array_equal(first, reference_point(shuffled, objectives))


def test_reference_point_single_trial_still_has_volume(make_trials) -> None:
    df = make_trials([(0, "COMPLETE", True, 0.8, 2.0, 0.0)])
    ref = reference_point(df, [ACC, LAT, SIZE])
    np.testing.assert_allclose(ref, [0.0, 2.2, 0.1])
    assert hypervolume_history(df, [ACC, LAT, SIZE])["hypervolume"].iloc[-1] > 0


def test_reference_point_needs_a_feasible_trial(make_trials) -> None:
    df = make_trials([(0, "COMPLETE", False, 0.8, 2.0, 1.0), (1, "FAIL", True, NAN, NAN, NAN)])
    with pytest.raises(ValueError, match="'df' parameter of reference_point"):
        reference_point(df, [ACC, LAT])


# --- hypervolume_history ----------------------------------------------------------------------


def test_hypervolume_history_hand_example(make_trials) -> None:
    df = make_trials(
        [
            (3, "COMPLETE", True, 0.5, 1.0, 1.0),  # rows out of order on purpose
            (0, "COMPLETE", True, 0.9, 2.0, 1.0),
            (1, "FAIL", False, NAN, NAN, NAN),
            (2, "COMPLETE", False, 1.0, 0.1, 1.0),  # infeasible: ignored
            (4, "COMPLETE", True, 0.4, 5.0, 1.0),  # dominated: no change
        ]
    )
    history = hypervolume_history(df, [ACC, LAT], reference=[0.0, 10.0])
    assert list(history.columns) == ["number", "hypervolume"]
    assert history["number"].tolist() == [0, 1, 2, 3, 4]
    np.testing.assert_allclose(history["hypervolume"], [7.2, 7.2, 7.2, 7.7, 7.7])


def test_hypervolume_history_monotone_and_ends_at_final_hv(three_objective_trials) -> None:
    objectives = [ACC, LAT, SIZE]
    history = hypervolume_history(three_objective_trials, objectives)
    assert len(history) == len(three_objective_trials)
    assert history["hypervolume"].is_monotonic_increasing
    front = pareto_front(three_objective_trials, objectives)
    final = hypervolume(
        front[["accuracy", "latency_ms", "size_kb"]].to_numpy(),
        [o.direction for o in objectives],
        reference_point(three_objective_trials, objectives),
    )
    assert history["hypervolume"].iloc[-1] == pytest.approx(final)
    assert final > 0


def test_hypervolume_history_random_run_is_monotone() -> None:
    rng = np.random.default_rng(0)
    n = 200
    df = pd.DataFrame(
        {
            "number": np.arange(n),
            "state": rng.choice(["COMPLETE", "COMPLETE", "COMPLETE", "FAIL", "PRUNED"], n),
            "feasible": rng.random(n) < 0.8,
            "trained": True,
            "accuracy": rng.random(n),
            "latency_ms": rng.random(n) * 10,
            "energy_mj": rng.random(n),
        }
    )
    objectives = [ACC, LAT, Objective("energy_mj", "minimize")]
    history = hypervolume_history(df, objectives)
    assert np.all(np.diff(history["hypervolume"].to_numpy()) >= 0)
    front = pareto_front(df, objectives)
    final = hypervolume(
        front[["accuracy", "latency_ms", "energy_mj"]].to_numpy(),
        [o.direction for o in objectives],
        reference_point(df, objectives),
    )
    assert history["hypervolume"].iloc[-1] == pytest.approx(final)


def test_hypervolume_history_without_feasible_trials(make_trials) -> None:
    df = make_trials([(0, "FAIL", False, NAN, NAN, NAN), (1, "COMPLETE", False, 0.5, 1.0, 1.0)])
    history = hypervolume_history(df, [ACC, LAT])
    assert history["hypervolume"].tolist() == [0.0, 0.0]


def test_slack_keeps_the_points_within_it_of_the_front():
    # Same cost, 1 point less accurate: dominated, unless the slack covers the gap.
    values = np.array([[0.90, 1.0], [0.89, 1.0], [0.80, 2.0]])
    directions = MAX_MIN
    assert non_dominated_mask(values, directions).tolist() == [True, False, False]
    near = non_dominated_mask(values, directions, slack=[0.02, 0.0])
    assert near.tolist() == [True, True, False]
    assert non_dominated_mask(values, directions, slack=[0.005, 0.0]).tolist() == [
        True,
        False,
        False,
    ]
    with pytest.raises(ValueError, match="one finite value >= 0 per objective"):
        non_dominated_mask(values, directions, slack=[0.1])
    frame = pd.DataFrame(
        {
            "number": [0, 1, 2],
            "state": "COMPLETE",
            "feasible": True,
            "accuracy": values[:, 0],
            "latency_ms": values[:, 1],
        }
    )
    near_front = pareto_front(frame, [ACC, LAT], slack={"accuracy": 0.02})
    assert near_front["number"].tolist() == [0, 1]
    with pytest.raises(ValueError, match="not objectives"):
        pareto_front(frame, [ACC, LAT], slack={"size_kb": 1.0})


def test_greedy_hypervolume_order_takes_the_largest_volume_then_the_largest_addition():
    directions = ["maximize", "minimize"]
    reference = [0.0, 10.0]
    points = np.array(
        [
            [0.5, 5.0],  # dominated by the next row: adds nothing
            [0.6, 4.0],  # 0.6 x 6 = 3.6 alone
            [0.9, 8.0],  # 0.9 x 2 = 1.8 alone, +0.6 beside row 1
            [0.3, 1.0],  # 0.3 x 9 = 2.7 alone, +0.9 beside row 1
            [np.nan, 1.0],  # unknown: last
        ]
    )
    order = greedy_hypervolume_order(points, directions, reference)
    assert order == [1, 3, 2, 0, 4]
    for k in range(1, 4):  # each prefix: the best addition to the one before it
        best = max(
            hypervolume(points[order[: k - 1] + [i]], directions, reference)
            for i in range(4)
            if i not in order[: k - 1]
        )
        assert hypervolume(points[order[:k]], directions, reference) == pytest.approx(best)
    assert greedy_hypervolume_order(np.empty((0, 2)), directions, reference) == []
    # Continued from rows 3 and 2: row 1 adds 0.3 x 4 = 1.2 (accuracy 0.3-0.6, latency 4-8),
    # row 0 only 0.2 x 3 = 0.6 (and nothing once row 1, which dominates it, is in).
    assert greedy_hypervolume_order(points, directions, reference, start=[3, 2]) == [3, 2, 1, 0, 4]
    with pytest.raises(ValueError, match="'start' parameter"):
        greedy_hypervolume_order(points, directions, reference, start=[7])


def test_nadir_reference_is_the_worst_point_pushed_out_by_a_tenth_of_the_range():
    directions = ["maximize", "minimize", "minimize"]
    values = np.array([[0.9, 1.0, 5.0], [0.7, 3.0, 5.0]])
    # Accuracy: no fixed 0 as reference_point uses; an objective without spread uses |value|.
    assert nadir_reference(values, directions) == pytest.approx([0.68, 3.2, 5.5])
    assert nadir_reference(np.array([[0.0, 0.0, 2.0]]), directions) == pytest.approx(
        [-0.1, 0.1, 2.2]
    )
    with pytest.raises(ValueError, match="'values' parameter of nadir_reference"):
        nadir_reference(np.array([[np.nan, 1.0, 1.0]]), directions)
