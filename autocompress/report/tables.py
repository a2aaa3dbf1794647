"""The Pareto front as a rich table for the terminal, and the refit table as lines."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import pandas as pd

from autocompress.core.objectives import MAXIMIZE, Objective

if TYPE_CHECKING:
    from rich.table import Table

# How each built-in metric is shown: (scale, unit suffix). accuracy is stored as a fraction.
_DISPLAY = {
    "accuracy": (100.0, "%"),
    "miou": (100.0, "%"),
    "pixel_accuracy": (100.0, "%"),
    "latency_ms": (1.0, " ms"),
    "energy_mj": (1.0, " mJ"),
    "size_kb": (1.0, " kB"),
    "peak_mem_kb": (1.0, " kB"),
}
_SIGNIFICANT_DIGITS = 3
_SUMMARY_WIDTH = 48


def format_front_table(
    front_df: pd.DataFrame,
    objectives: Sequence[Objective],
    *,
    title: str | None = "Pareto front",
) -> Table:
    """One row per trial of ``front_df`` (e.g. ``pareto_front`` output), in its row order.

    Columns: trial number, each objective to 3 significant digits with its unit, and the
    ``summary`` column (architecture / bits, cut to one line) when ``front_df`` has one.
    """
    from rich.table import Table

    objectives = list(objectives)
    missing = [c for c in ("number", *(o.name for o in objectives)) if c not in front_df.columns]
    if missing:
        raise ValueError(
            f"The 'front_df' parameter of format_front_table must have the columns {missing!r}. "
            f"Got columns {list(front_df.columns)!r} instead."
        )
    has_summary = "summary" in front_df.columns

    table = Table(title=title)
    # Numbers never wrap or shrink: on a narrow terminal the summary column gives way instead.
    table.add_column("trial", justify="right", no_wrap=True, min_width=5)
    for objective in objectives:
        arrow = "↑" if objective.direction == MAXIMIZE else "↓"
        header = f"{objective.name} {arrow}"
        table.add_column(header, justify="right", no_wrap=True, min_width=len(header))
    if has_summary:
        table.add_column(
            "summary", max_width=_SUMMARY_WIDTH, no_wrap=True, overflow="ellipsis", ratio=1
        )

    for _, row in front_df.iterrows():
        cells = [str(int(row["number"]))]
        cells += [format_metric(o.name, row[o.name]) for o in objectives]
        if has_summary:
            summary = row["summary"]
            cells.append("" if pd.isna(summary) else str(summary))
        table.add_row(*cells)
    return table


def format_metric(name: str, value: float) -> str:
    """E.g. ("accuracy", 0.91234) -> "91.2%", ("latency_ms", 2.349) -> "2.35 ms"; NaN -> "-"."""
    if value is None or pd.isna(value):
        return "-"
    scale, unit = _DISPLAY.get(name, (1.0, ""))
    return _significant(float(value) * scale) + unit


def _significant(value: float, digits: int = _SIGNIFICANT_DIGITS) -> str:
    # Fixed-point with `digits` significant digits (trailing zeros kept: 1.20 ms), never the
    # exponent notation of "{:.3g}", which is hard to scan down a column (12300 kB, not 1.23e+04).
    if not math.isfinite(value):
        return str(value)
    if value == 0:
        return "0"
    rounded = float(f"{value:.{digits}g}")  # round first: 9.996 -> 10.0 has a new magnitude
    decimals = digits - 1 - math.floor(math.log10(abs(rounded)))
    return f"{rounded:.{max(decimals, 0)}f}"


def refit_metric(table: pd.DataFrame) -> str:
    """The metric a refit table compares (the task's primary metric): ``accuracy`` when it has
    the columns ``search_accuracy`` and ``accuracy``."""
    for column in table.columns:
        metric = str(column).removeprefix("search_")
        if metric != column and metric in table.columns:
            return metric
    raise ValueError(
        "A refit table must have a 'search_<metric>' column beside its '<metric>' column (a "
        f"refit.csv). Got columns {list(table.columns)!r} instead."
    )


def rank_agreement(table: pd.DataFrame) -> float:
    """Kendall tau of the search scores (primary metric) against the refit ones over the
    completed refits of ``table`` (``search.refit.refit_table`` or ``refit.csv``); NaN below 3
    of them."""
    from scipy.stats import kendalltau

    metric = refit_metric(table)
    done = table[table["state"] == "COMPLETE"]
    if len(done) < 3:
        return math.nan
    return float(kendalltau(done[f"search_{metric}"], done[metric]).statistic)


def format_refit_lines(table: pd.DataFrame) -> list[str]:
    """``refit.csv`` as plain lines: source trial, the score before and after, on the front."""
    metric = refit_metric(table)
    lines = []
    for row in table.to_dict("records"):
        after = "failed" if row["state"] != "COMPLETE" else format_metric(metric, row[metric])
        mark = "  (front)" if row["on_front"] else ""
        before = format_metric(metric, row[f"search_{metric}"])
        lines.append(
            f"  search trial {row['refit_of']} -> refit trial {row['trial']}: {metric} "
            f"{before} -> {after}{mark}"
        )
    return lines
