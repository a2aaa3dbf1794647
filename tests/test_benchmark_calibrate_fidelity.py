"""benchmarks/calibrate_fidelity.py runs end to end (--quick: two networks at 32x32, one seed):
the table is imported, the spec calibrated on half of it, and on the other half the calibrated
spec ranks and prices layers better than the shipped one."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"

pytestmark = pytest.mark.slow


def test_quick_run_calibrates_better_than_the_shipped_spec(tmp_path, monkeypatch, capsys):
    path = BENCHMARKS / "calibrate_fidelity.py"
    spec = importlib.util.spec_from_file_location("calibrate_fidelity", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "calibrate_fidelity", module)
    spec.loader.exec_module(module)

    figures = module.main(["--quick", "--out", str(tmp_path)])

    assert figures["tau_cal"][0] > figures["tau_base"][0]
    assert figures["within_cal"][0] > figures["within_base"][0]
    out = capsys.readouterr().out
    assert "Kendall tau, calibrated" in out and "within ±10%, cortex_a72" in out
    assert (tmp_path / "table_seed0.csv").is_file() and (tmp_path / "lut_seed0.json").is_file()
