from __future__ import annotations

import math

import pytest
from rich.console import Console

from autocompress.core import Objective, pareto_front
from autocompress.report import format_front_table, format_metric

ACC = Objective("accuracy", "maximize")
LAT = Objective("latency_ms", "minimize")
SIZE = Objective("size_kb", "minimize")


def _render(table) -> str:
    console = Console(record=True, width=140, color_system=None)
    console.print(table)
    return console.export_text()


def test_one_row_per_front_point(three_objective_trials) -> None:
    front = pareto_front(three_objective_trials, [ACC, LAT, SIZE])
    table = format_front_table(front, [ACC, LAT, SIZE])
    assert table.row_count == len(front) == 4
    assert [c.header for c in table.columns] == ["trial", "accuracy ↑", "latency_ms ↓", "size_kb ↓"]
    assert list(table.columns[0].cells) == ["0", "6", "1", "2"]
    assert list(table.columns[1].cells) == ["90.0%", "85.0%", "80.0%", "70.0%"]
    assert list(table.columns[2].cells) == ["5.00 ms", "4.00 ms", "2.00 ms", "3.00 ms"]
    assert "90.0%" in _render(table)


def test_summary_column_when_present(three_objective_trials) -> None:
    df = three_objective_trials.assign(
        summary=[f"resnet8 w{b}a8 " + "x" * 80 for b in range(len(three_objective_trials))]
    )
    front = pareto_front(df, [ACC, LAT])
    table = format_front_table(front, [ACC, LAT], title=None)
    assert table.columns[-1].header == "summary"
    assert list(table.columns[-1].cells)[0].startswith("resnet8 w0a8")
    rendered = _render(table)
    assert "…" in rendered  # long summaries are cut to one line
    assert len(rendered.splitlines()) == 4 + len(front)  # 3 rules, header, one line per row


def test_empty_front_gives_empty_table(make_trials) -> None:
    df = make_trials([(0, "COMPLETE", False, 0.5, 1.0, 1.0)])
    table = format_front_table(pareto_front(df, [ACC, LAT]), [ACC, LAT])
    assert table.row_count == 0


def test_missing_column_is_reported(three_objective_trials) -> None:
    with pytest.raises(ValueError, match=r"'front_df' parameter of format_front_table"):
        format_front_table(three_objective_trials, [ACC, Objective("bogus", "minimize")])


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("accuracy", 0.91234, "91.2%"),
        ("accuracy", 1.0, "100%"),
        ("latency_ms", 2.349, "2.35 ms"),
        ("latency_ms", 1.2, "1.20 ms"),
        ("latency_ms", 9.996, "10.0 ms"),
        ("energy_mj", 0.001234, "0.00123 mJ"),
        ("size_kb", 12345.0, "12300 kB"),
        ("peak_mem_kb", 0.0, "0 kB"),
        ("my_score", 3.14159, "3.14"),
        ("latency_ms", math.nan, "-"),
        ("latency_ms", None, "-"),
    ],
)
def test_format_metric(name: str, value: float, expected: str) -> None:
    assert format_metric(name, value) == expected
