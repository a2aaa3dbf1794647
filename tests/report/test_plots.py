from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from autocompress.core import Objective, hypervolume_history
from autocompress.report import (
    pareto_plot_data,
    plot_hypervolume,
    plot_pareto,
)

ACC = Objective("accuracy", "maximize")
LAT = Objective("latency_ms", "minimize")
SIZE = Objective("size_kb", "minimize")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _assert_png(path: Path, *, min_side: int = 200) -> None:
    import matplotlib.image

    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC)
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    assert min(image.shape[:2]) >= min_side
    assert image.std() > 0  # something was drawn, not a blank canvas


def test_pareto_plot_data_projections(three_objective_trials) -> None:
    data = pareto_plot_data(three_objective_trials, [ACC, LAT, SIZE])
    assert data.objectives == (ACC, LAT, SIZE)
    assert data.front_numbers == [0, 6, 1, 2]
    assert [(p.x, p.y) for p in data.projections] == [(ACC, LAT), (ACC, SIZE), (LAT, SIZE)]

    acc_lat, acc_size, lat_size = data.projections
    # accuracy vs latency: trial 2 (0.7, 3) hides behind 1 (0.8, 2); the front is sorted by x.
    assert acc_lat.front_numbers.tolist() == [1, 6, 0]
    np.testing.assert_allclose(acc_lat.front_x, [0.80, 0.85, 0.90])
    np.testing.assert_allclose(acc_lat.front_y, [2.0, 4.0, 5.0])
    assert acc_lat.step_where == "pre"  # x maximised: each step takes the right-hand point
    assert acc_size.front_numbers.tolist() == [2, 0]
    np.testing.assert_allclose(acc_size.front_y, [5.0, 10.0])
    assert lat_size.front_numbers.tolist() == [1, 2]
    np.testing.assert_allclose(lat_size.front_x, [2.0, 3.0])
    np.testing.assert_allclose(lat_size.front_y, [50.0, 5.0])
    assert lat_size.step_where == "post"

    for p in data.projections:
        # Infeasible trial 4 is kept apart; failed 5 and running 7 have no values to plot.
        assert sorted(p.feasible_numbers.tolist()) == [0, 1, 2, 3, 6]
        assert p.infeasible_numbers.tolist() == [4]
        assert len(p.feasible_x) == len(p.feasible_y) == 5
        assert len(p.pareto_x) == len(p.pareto_y) == 4
        assert set(p.front_numbers.tolist()) <= set(p.feasible_numbers.tolist())
    np.testing.assert_allclose(acc_lat.infeasible_x, [0.95])
    np.testing.assert_allclose(acc_lat.pareto_x, [0.90, 0.85, 0.80, 0.70])


def test_pareto_plot_data_two_objectives_is_one_panel(three_objective_trials) -> None:
    data = pareto_plot_data(three_objective_trials, [LAT, ACC])
    assert len(data.projections) == 1
    assert data.projections[0].front_numbers.tolist() == [1, 6, 0]
    assert data.projections[0].step_where == "post"


def test_pareto_plot_data_pair_order_for_four_objectives(three_objective_trials) -> None:
    energy = Objective("energy_mj", "minimize")
    data = pareto_plot_data(three_objective_trials, [ACC, LAT, SIZE, energy])
    pairs = [(p.x.name, p.y.name) for p in data.projections]
    assert pairs[:3] == [
        ("accuracy", "latency_ms"),
        ("accuracy", "size_kb"),
        ("accuracy", "energy_mj"),
    ]
    assert len(pairs) == 6


def test_pareto_plot_data_needs_two_objectives(three_objective_trials) -> None:
    with pytest.raises(ValueError, match="at least 2 objectives. Got 1 instead"):
        pareto_plot_data(three_objective_trials, [ACC])


def test_plot_pareto_writes_png(tmp_path: Path, three_objective_trials) -> None:
    import matplotlib.pyplot as plt

    figures_before = plt.get_fignums()
    out = plot_pareto(three_objective_trials, [ACC, LAT, SIZE], tmp_path / "sub" / "front.png")
    assert out == tmp_path / "sub" / "front.png"
    _assert_png(out)
    # 3 panels in one row at 4.5 x 3.8 inches, 120 dpi.
    assert matplotlib_shape(out) == (round(3.8 * 120), round(4.5 * 3 * 120))
    assert plt.get_fignums() == figures_before  # no figure left open


def test_plot_pareto_two_objectives_and_many_panels(tmp_path: Path, three_objective_trials) -> None:
    _assert_png(plot_pareto(three_objective_trials, [ACC, LAT], tmp_path / "two.png"))
    four = [ACC, LAT, SIZE, Objective("energy_mj", "minimize")]
    out = plot_pareto(three_objective_trials, four, tmp_path / "four.png", title=None)
    assert matplotlib_shape(out) == (round(2 * 3.8 * 120), round(3 * 4.5 * 120))


def test_plot_pareto_without_feasible_trials(tmp_path: Path, make_trials) -> None:
    df = make_trials(
        [(0, "COMPLETE", False, 0.5, 1.0, 1.0), (1, "FAIL", True, math.nan, math.nan, math.nan)]
    )
    df["fail_reason"] = ["", "loss is NaN"]
    data = pareto_plot_data(df, [ACC, LAT])
    assert data.front_numbers == []
    assert data.message == (
        "No completed trial within the hardware budget yet: nothing to plot. 2 trials: "
        "0 complete, 1 over budget (not trained), 1 failed. Most common failure (1 of 1): "
        "loss is NaN"
    )
    _assert_png(plot_pareto(df, [ACC, LAT], tmp_path / "empty.png"))
    history = hypervolume_history(df, [ACC, LAT])
    _assert_png(plot_hypervolume(history, tmp_path / "hv.png", message=data.message))


def test_pareto_plot_data_has_no_message_with_a_front(three_objective_trials) -> None:
    assert pareto_plot_data(three_objective_trials, [ACC, LAT]).message is None


def test_draw_message_writes_the_words_across_the_figure() -> None:
    from autocompress.report.style import draw_message, new_figure

    fig = new_figure(width=4.0, height=3.0)
    text = "No completed trial within the hardware budget yet: nothing to plot. " * 2
    draw_message(fig, text)
    (drawn,) = fig.texts
    assert drawn.get_text().replace("\n", " ") == text.strip()
    assert max(len(line) for line in drawn.get_text().splitlines()) <= 44  # wrapped to 4 in


def test_plot_hypervolume_writes_png(tmp_path: Path, three_objective_trials) -> None:
    history = hypervolume_history(three_objective_trials, [ACC, LAT, SIZE])
    out = plot_hypervolume(history, tmp_path / "hv.png")
    _assert_png(out)
    assert matplotlib_shape(out) == (480, 720)


def test_plot_hypervolume_validates_columns(tmp_path: Path, three_objective_trials) -> None:
    with pytest.raises(ValueError, match="'history_df' parameter of plot_hypervolume"):
        plot_hypervolume(three_objective_trials, tmp_path / "hv.png")


def matplotlib_shape(path: Path) -> tuple[int, int]:
    import matplotlib.image

    return matplotlib.image.imread(path).shape[:2]
