"""The per-layer figures show rank ratios where a run factorizes, and nothing new where not."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from autocompress.core import Objective
from autocompress.report.figures import (
    layer_bars_data,
    parallel_coordinates_data,
    plot_layer_bars,
)

ACC = Objective("accuracy", "maximize")
LAT = Objective("latency_ms", "minimize")


def _candidate(layers: dict[str, dict]) -> str:
    return json.dumps({"version": 1, "family": "small_cnn", "arch": {}, "layers": layers})


def _trials(second_rank: float | None) -> pd.DataFrame:
    factorized = {"w_bits": 4, "a_bits": 8, "prune_ratio": 0.0}
    if second_rank is not None:
        factorized["rank_ratio"] = second_rank
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
                _candidate({"a": factorized, "fc": plain}),
            ],
            "summary": ["t0", "t1"],
        }
    )


def test_parallel_coordinates_gain_rank_axes_only_when_the_front_factorizes() -> None:
    plain = parallel_coordinates_data(_trials(None), [ACC, LAT])
    assert not any(axis.endswith("rank_ratio") for axis in plain.axes)
    data = parallel_coordinates_data(_trials(0.25), [ACC, LAT])
    column = data.axes.index("a.rank_ratio")
    assert data.fields[column] == "rank_ratio" and data.layers[column] == "a"
    # Trials in pareto_front order: 0 (most accurate, whole) then 1 (factorized at 1/4).
    assert data.values[:, column].tolist() == [1.0, 0.25]
    assert ("fc.rank_ratio", 1.0) in data.constant


def test_layer_bars_carry_the_rank_ratio_and_draw_it(tmp_path: Path) -> None:
    df = _trials(0.5)
    data = layer_bars_data(df, trial=1)
    assert data.rank_ratio.tolist() == [0.5, 1.0]
    assert layer_bars_data(df, trial=0).rank_ratio.tolist() == [1.0, 1.0]
    path = plot_layer_bars(df, tmp_path / "bars.png", trial=1)
    assert path.read_bytes().startswith(b"\x89PNG")
