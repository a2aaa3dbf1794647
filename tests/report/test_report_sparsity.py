"""The report shows each layer's sparsity, and says when sparsity was priced for size only."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from autocompress.core import Objective
from autocompress.report.figures import layer_bars_data, plot_layer_bars
from autocompress.report.html import sparse_pricing_note

ACC = Objective("accuracy", "maximize")
LAT = Objective("latency_ms", "minimize")


def _candidate(layers: dict[str, dict]) -> str:
    return json.dumps({"version": 1, "family": "small_cnn", "arch": {}, "layers": layers})


def _trials(sparsity) -> pd.DataFrame:
    sparse = {"w_bits": 4, "a_bits": 8, "prune_ratio": 0.0}
    if sparsity is not None:
        sparse["sparsity"] = sparsity
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
                _candidate({"a": sparse, "fc": plain}),
            ],
            "summary": ["t0", "t1"],
        }
    )


def test_layer_bars_carry_each_layers_sparsity(tmp_path: Path) -> None:
    data = layer_bars_data(_trials("2:4"), trial=1)
    assert data.sparsity == ("2:4", "")
    assert layer_bars_data(_trials(None), trial=1).sparsity == ("", "")
    assert plot_layer_bars(_trials(0.5), tmp_path / "l.png", trial=1).is_file()


def test_note_when_the_front_is_sparse_and_the_device_has_no_sparse_kernel() -> None:
    note = sparse_pricing_note(_trials("2:4"), [ACC, LAT], device=("cortex_a72", []))
    assert note is not None
    assert "reduces size only; latency priced dense because cortex_a72 declares no sparse" in note
    # priced with a kernel, not analytic, or nothing sparse: nothing to say
    assert sparse_pricing_note(_trials("2:4"), [ACC, LAT], device=("orin", ["2:4"])) is None
    assert sparse_pricing_note(_trials("2:4"), [ACC, LAT], device=None) is None
    assert sparse_pricing_note(_trials(None), [ACC, LAT], device=("cortex_a72", [])) is None
    # unstructured sparsity never gets an N:M kernel
    note = sparse_pricing_note(_trials(0.5), [ACC, LAT], device=("orin", ["2:4"]))
    assert note is not None and "unstructured" in note
