"""The per-layer figures show rank ratios where a run factorizes, and nothing new where not."""

from __future__ import annotations

from pathlib import Path

from autocompress.core import Objective
from autocompress.report.figures import (
    layer_bars_data,
    parallel_coordinates_data,
    plot_layer_bars,
)

ACC = Objective("accuracy", "maximize")
LAT = Objective("latency_ms", "minimize")


def test_parallel_coordinates_gain_rank_axes_only_when_the_front_factorizes(two_trials) -> None:
    plain = parallel_coordinates_data(two_trials(rank_ratio=None), [ACC, LAT])
    assert not any(axis.endswith("rank_ratio") for axis in plain.axes)
    data = parallel_coordinates_data(two_trials(rank_ratio=0.25), [ACC, LAT])
    column = data.axes.index("a.rank_ratio")
    assert data.fields[column] == "rank_ratio" and data.layers[column] == "a"
    # Trials in pareto_front order: 0 (most accurate, whole) then 1 (factorized at 1/4).
    assert data.values[:, column].tolist() == [1.0, 0.25]
    assert ("fc.rank_ratio", 1.0) in data.constant


def test_layer_bars_carry_the_rank_ratio_and_draw_it(tmp_path: Path, two_trials) -> None:
    df = two_trials(rank_ratio=0.5)
    data = layer_bars_data(df, trial=1)
    assert data.rank_ratio.tolist() == [0.5, 1.0]
    assert layer_bars_data(df, trial=0).rank_ratio.tolist() == [1.0, 1.0]
    path = plot_layer_bars(df, tmp_path / "bars.png", trial=1)
    assert path.read_bytes().startswith(b"\x89PNG")
