from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from autocompress.core import Objective, pareto_front
from autocompress.report.figures import (
    candidate_layers,
    default_trial,
    layer_bars_data,
    parallel_coordinates_data,
    pareto_3d_data,
    plot_layer_bars,
    plot_parallel_coordinates,
    plot_pareto_3d,
    plot_refit_accuracy,
    refit_accuracy_data,
)

ACC = Objective("accuracy", "maximize")
LAT = Objective("latency_ms", "minimize")
SIZE = Objective("size_kb", "minimize")
ENERGY = Objective("energy_mj", "minimize")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _candidate(layers: dict[str, tuple[int, int, float]], depth: int) -> str:
    return json.dumps(
        {
            "version": 1,
            "family": "small_cnn",
            "arch": {"depth": depth},
            "layers": {
                name: {"w_bits": w, "a_bits": a, "prune_ratio": p}
                for name, (w, a, p) in layers.items()
            },
        }
    )


# Architectures of different depth: trial 6 lacks "b", trial 1 alone has "c".
CANDIDATES = {
    0: _candidate({"a": (8, 8, 0.0), "b": (4, 8, 0.5), "fc": (8, 8, 0.0)}, 2),
    1: _candidate({"a": (2, 4, 0.25), "b": (3, 4, 0.0), "c": (5, 6, 0.75), "fc": (4, 4, 0.0)}, 3),
    2: _candidate({"a": (6, 8, 0.5), "b": (2, 4, 0.5), "fc": (32, 32, 0.0)}, 2),
    3: _candidate({"a": (8, 8, 0.0), "fc": (8, 8, 0.0)}, 1),
    4: _candidate({"a": (2, 4, 0.0), "fc": (2, 4, 0.0)}, 1),
    5: "",  # failed before the candidate was drawn
    6: _candidate({"a": (4, 6, 0.0), "fc": (6, 8, 0.0)}, 1),
    7: "",  # still running
}


@pytest.fixture
def trials(three_objective_trials) -> pd.DataFrame:
    """Front 0, 6, 1, 2 (accuracy, latency, size); see tests/report/conftest.py."""
    df = three_objective_trials.copy()
    df["candidate"] = [CANDIDATES[n] for n in df["number"]]
    df["summary"] = [f"trial {n} <arch>" for n in df["number"]]
    return df


def _assert_png(path: Path) -> None:
    import matplotlib.image

    assert path.read_bytes().startswith(PNG_MAGIC)
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and min(image.shape[:2]) >= 200
    assert image.std() > 0


# --- 3-D ------------------------------------------------------------------------------------


def test_pareto_3d_front_is_the_pareto_front(trials) -> None:
    objectives = [ACC, LAT, SIZE]
    data = pareto_3d_data(trials, objectives)
    front = pareto_front(trials, objectives)
    assert data.objectives == (ACC, LAT, SIZE)
    assert data.front_numbers.tolist() == front["number"].tolist() == [0, 6, 1, 2]
    assert data.pareto_numbers.tolist() == [0, 6, 1, 2]
    np.testing.assert_allclose(data.front_values, front[["accuracy", "latency_ms", "size_kb"]])
    assert sorted(data.feasible_numbers.tolist()) == [0, 1, 2, 3, 6]
    assert data.infeasible_numbers.tolist() == [4]
    np.testing.assert_allclose(data.infeasible_values, [[0.95, 1.0, 1.0]])
    assert data.feasible_values.shape == (5, 3)


def test_pareto_3d_uses_the_first_three_of_four_objectives(trials) -> None:
    data = pareto_3d_data(trials, [ACC, LAT, SIZE, ENERGY])
    assert data.objectives == (ACC, LAT, SIZE)
    assert set(data.front_numbers) == set(pareto_front(trials, [ACC, LAT, SIZE])["number"])
    full = pareto_front(trials, [ACC, LAT, SIZE, ENERGY])
    assert data.pareto_numbers.tolist() == full["number"].tolist()
    np.testing.assert_allclose(data.pareto_values, full[["accuracy", "latency_ms", "size_kb"]])


def test_pareto_3d_full_front_shows_trials_hidden_in_3d(make_trials) -> None:
    # Trial 1 is dominated by 0 in (accuracy, latency, size) but has the lowest energy.
    df = make_trials([(0, "COMPLETE", True, 0.9, 1.0, 1.0), (1, "COMPLETE", True, 0.8, 2.0, 2.0)])
    df["energy_mj"] = [5.0, 1.0]
    data = pareto_3d_data(df, [ACC, LAT, SIZE, ENERGY])
    assert data.front_numbers.tolist() == [0]
    assert data.pareto_numbers.tolist() == [0, 1]


def test_pareto_3d_labels_each_distinct_point_once(trials) -> None:
    # Trial 8 repeats trial 0 exactly (the front keeps both): one label "0,8" at that point.
    duplicate = trials[trials["number"] == 0].assign(number=8)
    df = pd.concat([trials, duplicate], ignore_index=True)
    data = pareto_3d_data(df, [ACC, LAT, SIZE])
    assert data.front_numbers.tolist() == [0, 8, 6, 1, 2]
    assert [label.text for label in data.front_labels] == ["0,8", "6", "1", "2"]
    assert data.front_labels[0].numbers == (0, 8)
    assert data.front_labels[0].position == (0.90, 5.0, 10.0)
    assert data.message is None


def test_pareto_3d_says_why_it_is_empty(make_trials) -> None:
    df = make_trials(
        [
            (0, "FAIL", False, math.nan, math.nan, math.nan),
            (1, "FAIL", False, math.nan, math.nan, math.nan),
            (2, "COMPLETE", False, 0.0, 1.0, 1.0),
        ]
    )
    df["fail_reason"] = ["CUDA out of memory", "CUDA out of memory", ""]
    data = pareto_3d_data(df, [ACC, LAT, SIZE])
    assert data.front_labels == [] and len(data.front_values) == 0
    assert data.message == (
        "No completed trial within the hardware budget yet: nothing to plot. 3 trials: "
        "0 complete, 1 over budget (not trained), 2 failed. Most common failure (2 of 2): "
        "CUDA out of memory"
    )


def test_pareto_3d_needs_three_objectives(trials) -> None:
    with pytest.raises(ValueError, match="'objectives' parameter of pareto_3d_data"):
        pareto_3d_data(trials, [ACC, LAT])


# --- parallel coordinates ---------------------------------------------------------------------


def test_parallel_coordinates_rows_are_the_front_candidates(trials) -> None:
    objectives = [ACC, LAT, SIZE]
    data = parallel_coordinates_data(trials, objectives)
    assert data.numbers.tolist() == [0, 6, 1, 2]
    # Layers merged in network order although the first front trial has no "c".
    layer_names = ["a", "b", "c", "fc"]
    # fc.prune_ratio is 0 on every line (the classifier is never pruned): left out.
    assert data.axes == [
        f"{n}.{f}" for n in layer_names for f in ("w_bits", "a_bits", "prune_ratio")
    ][:-1] + ["accuracy", "latency_ms", "size_kb"]
    assert data.constant == [("fc.prune_ratio", 0.0)]
    assert data.values.shape == (4, 14)
    for row, number in zip(data.values, data.numbers, strict=True):
        layers = json.loads(CANDIDATES[int(number)])["layers"]
        for col, (layer, field) in enumerate(zip(data.layers, data.fields, strict=True)):
            if layer is None:
                continue
            if layer in layers:
                assert row[col] == layers[layer][field], (number, layer, field)
            else:
                assert math.isnan(row[col]), (number, layer, field)  # absent layer: a gap
    front = pareto_front(trials, objectives)
    np.testing.assert_allclose(data.values[:, -3:], front[["accuracy", "latency_ms", "size_kb"]])
    assert data.fields[-3:] == ["objective"] * 3 and data.layers[-3:] == [None] * 3


def test_parallel_coordinates_of_an_empty_front(make_trials) -> None:
    df = make_trials([(0, "COMPLETE", False, 0.5, 1.0, 1.0)])
    df["candidate"] = [CANDIDATES[0]]
    data = parallel_coordinates_data(df, [ACC, LAT])
    assert data.numbers.tolist() == [] and data.axes == ["accuracy", "latency_ms"]
    assert data.values.shape == (0, 2)
    assert data.constant == [] and data.end_labels == []
    assert data.message.startswith("No completed trial within the hardware budget yet")


def test_parallel_coordinates_leave_out_only_axes_constant_on_every_line(make_trials) -> None:
    # "c" is on one line only: absent on the other, so not the same everywhere. "fc" differs
    # in nothing; "a" only in a_bits. Objectives stay even where constant (accuracy here).
    df = make_trials([(0, "COMPLETE", True, 0.9, 1.0, 2.0), (1, "COMPLETE", True, 0.9, 2.0, 1.0)])
    df["candidate"] = [
        _candidate({"a": (4, 8, 0.5), "c": (4, 4, 0.0), "fc": (8, 8, 0.0)}, 2),
        _candidate({"a": (4, 6, 0.5), "fc": (8, 8, 0.0)}, 1),
    ]
    data = parallel_coordinates_data(df, [ACC, LAT, SIZE])
    assert data.axes == [
        "a.a_bits",
        "c.w_bits",
        "c.a_bits",
        "c.prune_ratio",
        "accuracy",
        "latency_ms",
        "size_kb",
    ]
    assert data.layers == ["a", "c", "c", "c", None, None, None]
    assert data.constant == [
        ("a.w_bits", 4.0),
        ("a.prune_ratio", 0.5),
        ("fc.w_bits", 8.0),
        ("fc.a_bits", 8.0),
        ("fc.prune_ratio", 0.0),
    ]
    np.testing.assert_allclose(data.values[:, 0], [8, 6])
    # A single line has nothing to compare: every axis stays.
    one = parallel_coordinates_data(df[df["number"] == 0], [ACC, LAT, SIZE])
    assert one.constant == [] and len(one.axes) == 3 * 3 + 3


def test_parallel_coordinates_label_lines_ending_together_once(make_trials) -> None:
    # 0 and 2 end at the same size (the last axis): one label "0,2", not two drawn as one.
    df = make_trials(
        [
            (0, "COMPLETE", True, 0.9, 3.0, 5.0),
            (1, "COMPLETE", True, 0.8, 2.0, 7.0),
            (2, "COMPLETE", True, 0.7, 1.0, 5.0),
        ]
    )
    df["candidate"] = [CANDIDATES[3], CANDIDATES[4], CANDIDATES[6]]
    data = parallel_coordinates_data(df, [ACC, LAT, SIZE])
    assert [(label.text, label.numbers) for label in data.end_labels] == [
        ("0,2", (0, 2)),
        ("1", (1,)),
    ]
    assert [label.position for label in data.end_labels] == [(5.0,), (7.0,)]


def test_parallel_coordinates_needs_the_candidate_column(three_objective_trials) -> None:
    with pytest.raises(
        ValueError,
        match=r"'df' parameter of parallel_coordinates_data.*"
        r"candidate",
    ):
        parallel_coordinates_data(three_objective_trials, [ACC, LAT])


# --- layer bars -------------------------------------------------------------------------------


@pytest.mark.parametrize("number", [0, 1, 2, 4])
def test_layer_bars_are_the_candidate_layers(trials, number: int) -> None:
    data = layer_bars_data(trials, trial=number)
    layers = json.loads(CANDIDATES[number])["layers"]
    assert data.number == number
    assert data.layers == list(layers)
    assert data.w_bits.tolist() == [c["w_bits"] for c in layers.values()]
    assert data.a_bits.tolist() == [c["a_bits"] for c in layers.values()]
    assert data.prune_ratio.tolist() == [c["prune_ratio"] for c in layers.values()]
    assert data.summary == f"trial {number} <arch>"


@pytest.mark.parametrize("number", [5, 99])
def test_layer_bars_of_a_trial_without_candidate(trials, number: int) -> None:
    with pytest.raises(ValueError, match="'trial' parameter of layer_bars_data") as info:
        layer_bars_data(trials, trial=number)
    assert f"Got {number} instead" in str(info.value)
    assert "[0, 1, 2, 3, 4, 6]" in str(info.value)  # the trials that do have one


def test_default_trial_is_the_most_accurate_front_point(trials, make_trials) -> None:
    # Trial 4 is more accurate but over budget; 0 is the most accurate front point.
    assert default_trial(trials, [ACC, LAT, SIZE]) == 0
    # Latency/size front: 1 (0.80) and 2 (0.70); accuracy need not be an objective.
    assert default_trial(trials, [LAT, SIZE]) == 1
    empty = make_trials([(0, "FAIL", False, math.nan, math.nan, math.nan)])
    empty["candidate"] = [""]
    assert default_trial(empty, [ACC, LAT]) is None


def test_candidate_layers_parses_and_rejects() -> None:
    assert candidate_layers("") == {} and candidate_layers(math.nan) == {}
    assert candidate_layers(CANDIDATES[6]) == {
        "a": {"w_bits": 4.0, "a_bits": 6.0, "prune_ratio": 0.0, "rank_ratio": 1.0},
        "fc": {"w_bits": 6.0, "a_bits": 8.0, "prune_ratio": 0.0, "rank_ratio": 1.0},
    }
    with pytest.raises(ValueError, match="'candidate' cell must hold the JSON"):
        candidate_layers('{"layers": {"a": {"w_bits": 4}}}')
    with pytest.raises(ValueError, match="'candidate' cell must hold the JSON"):
        candidate_layers("not json")


# --- drawing ----------------------------------------------------------------------------------


def test_plots_write_pngs_and_leave_no_figure_open(tmp_path: Path, trials, make_trials) -> None:
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    objectives = [ACC, LAT, SIZE]
    _assert_png(plot_pareto_3d(trials, objectives, tmp_path / "p3d.png"))
    _assert_png(plot_parallel_coordinates(trials, objectives, tmp_path / "pc.png"))
    _assert_png(plot_layer_bars(trials, tmp_path / "bars.png", trial=1))
    empty = make_trials([(0, "COMPLETE", False, 0.5, 1.0, 1.0)])
    empty["candidate"] = [CANDIDATES[0]]
    _assert_png(plot_parallel_coordinates(empty, [ACC, LAT], tmp_path / "pc_empty.png"))
    _assert_png(plot_pareto_3d(empty, [ACC, LAT, SIZE], tmp_path / "p3d_empty.png"))
    assert plt.get_fignums() == before


def test_refit_accuracy_labels_each_distinct_point_once() -> None:
    table = pd.DataFrame(
        {
            "trial": [0, 1, 2, 3],
            "refit_of": [5, 3, 9, 4],
            "search_accuracy": [0.6, 0.6, 0.2, 0.7],
            "accuracy": [0.9, 0.9, 0.5, 0.8],
            "state": ["COMPLETE", "COMPLETE", "FAIL", "COMPLETE"],
            "on_front": [True, True, False, True],
        }
    )
    data = refit_accuracy_data(table)
    assert data.sources.tolist() == [5, 3, 4]  # the failed refit is not plotted
    assert [(label.text, label.position) for label in data.front_labels] == [
        ("3,5", (0.6, 0.9)),
        ("4", (0.7, 0.8)),
    ]


def test_refit_accuracy_plot_needs_a_refit_table(tmp_path) -> None:
    table = pd.DataFrame(
        {
            "trial": [0, 1, 2],
            "refit_of": [5, 3, 9],
            "search_accuracy": [0.6, 0.4, 0.2],
            "accuracy": [0.9, 0.95, 0.5],
            "state": ["COMPLETE", "COMPLETE", "FAIL"],
            "on_front": [True, False, False],
        }
    )
    path = plot_refit_accuracy(table, tmp_path / "refit.png")
    assert path.stat().st_size > 0
    with pytest.raises(ValueError, match="search_<metric>"):
        plot_refit_accuracy(table.drop(columns="search_accuracy"), tmp_path / "x.png")
