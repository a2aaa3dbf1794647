"""benchmarks/byo_baselines.py runs end to end (--quick: tiny data, 1 epoch): a checkpoint, the
three one-shot baselines, a timed search and the table that compares them."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"

pytestmark = pytest.mark.slow


def test_quick_run_prints_the_three_baselines_and_the_dominated_count(
    tmp_path, monkeypatch, capsys
):
    # The benchmark puts benchmarks/ and the example's folder on sys.path: undone after.
    monkeypatch.setattr(sys, "path", list(sys.path))
    spec = importlib.util.spec_from_file_location("byo_baselines", BENCHMARKS / "byo_baselines.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "byo_baselines", module)
    spec.loader.exec_module(module)

    module.main(["--quick", "--models", "mobilenet_v3_small", "--out", str(tmp_path)])

    out = capsys.readouterr().out
    table = out[out.index("dominated by") :]
    for name in module.BASELINES:
        assert name in table
    assert "search wall time" in out
    assert "mobilenet_v3_small dominated: " in out
    assert any(line.startswith("dominated: ") for line in out.splitlines())
    assert (tmp_path / "byo-mobilenet_v3_small" / "trials.csv").is_file()
