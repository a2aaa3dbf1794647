"""What every report figure shares: colours, axis and point labels, a pyplot-free figure, a
message in words, PNG saving."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from autocompress.core.objectives import MAXIMIZE, Objective

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DPI = 120
FRONT_COLOUR = "tab:blue"
DOMINATED_COLOUR = "0.6"
INFEASIBLE_COLOUR = "tab:red"


def axis_label(objective: Objective) -> str:
    """E.g. "latency_ms (↓ better)": the column name carries the unit, the arrow the direction."""
    arrow = "↑" if objective.direction == MAXIMIZE else "↓"
    return f"{objective.name} ({arrow} better)"


class PointLabel(NamedTuple):
    """One label of a figure: a distinct point and every trial at it, e.g. text "0,6"."""

    position: tuple[float, ...]
    numbers: tuple[int, ...]
    text: str


def label_points(values: np.ndarray, numbers: Iterable[int]) -> list[PointLabel]:
    """One label per distinct row of ``values`` (points, one row per trial of ``numbers``),
    naming every trial at that point in ascending order, in the order points first appear.

    Two labels drawn at one point overlap into an unreadable glyph ("0" over "6" reads "8"), and
    the Pareto front keeps exact duplicates, so trials that share a point share its label."""
    values = np.asarray(values, dtype=float)
    rows = values if values.ndim == 2 else values.reshape(-1, 1)
    at: dict[tuple[float, ...], list[int]] = {}
    for row, number in zip(rows, numbers, strict=True):
        at.setdefault(tuple(float(v) for v in row), []).append(int(number))
    labels = []
    for position, group in at.items():
        group.sort()
        labels.append(PointLabel(position, tuple(group), ",".join(map(str, group))))
    return labels


def new_figure(*, width: float, height: float) -> Figure:
    # A bare Figure on an Agg canvas, not pyplot: nothing enters pyplot's global figure registry
    # (so long searches cannot leak figures) and the host's backend choice is left alone.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def draw_message(fig: Figure, text: str) -> None:
    """``text`` in a box across the middle of ``fig``, wrapped to its width: what a figure says
    when it has nothing (or little) to show, so that empty axes never stand alone."""
    chars = max(30, int(fig.get_figwidth() * 11))  # about 11 characters per inch at 9 pt
    fig.text(
        0.5,
        0.5,
        textwrap.fill(text, chars),
        ha="center",
        va="center",
        fontsize=9,
        bbox=dict(boxstyle="round", facecolor="white", edgecolor=DOMINATED_COLOUR, alpha=0.9),
        zorder=10,
    )


def save_figure(fig: Figure, path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(path, dpi=DPI, format="png")
    finally:
        fig.clear()  # drop artists now rather than when the garbage collector gets to them
    return path
