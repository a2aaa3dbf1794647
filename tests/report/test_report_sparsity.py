"""The report shows each layer's sparsity, and says when sparsity was priced for size only."""

from __future__ import annotations

from pathlib import Path

from autocompress.core import Objective
from autocompress.report.figures import layer_bars_data, plot_layer_bars
from autocompress.report.html import sparse_pricing_note

ACC = Objective("accuracy", "maximize")
LAT = Objective("latency_ms", "minimize")


def test_layer_bars_carry_each_layers_sparsity(tmp_path: Path, two_trials) -> None:
    data = layer_bars_data(two_trials(sparsity="2:4"), trial=1)
    assert data.sparsity == ("2:4", "")
    assert layer_bars_data(two_trials(sparsity=None), trial=1).sparsity == ("", "")
    assert plot_layer_bars(two_trials(sparsity=0.5), tmp_path / "l.png", trial=1).is_file()


def test_note_when_the_front_is_sparse_and_the_device_has_no_sparse_kernel(two_trials) -> None:
    note = sparse_pricing_note(two_trials(sparsity="2:4"), [ACC, LAT], device=("cortex_a72", []))
    assert note is not None
    assert "reduces size only; latency priced dense because cortex_a72 declares no sparse" in note
    # priced with a kernel, not analytic, or nothing sparse: nothing to say
    assert (
        sparse_pricing_note(two_trials(sparsity="2:4"), [ACC, LAT], device=("orin", ["2:4"]))
        is None
    )
    assert sparse_pricing_note(two_trials(sparsity="2:4"), [ACC, LAT], device=None) is None
    assert (
        sparse_pricing_note(two_trials(sparsity=None), [ACC, LAT], device=("cortex_a72", []))
        is None
    )
    # unstructured sparsity never gets an N:M kernel
    note = sparse_pricing_note(two_trials(sparsity=0.5), [ACC, LAT], device=("orin", ["2:4"]))
    assert note is not None and "unstructured" in note
