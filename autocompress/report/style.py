"""What every report figure shares: colours, axis labels, a pyplot-free figure, PNG saving."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

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


def new_figure(*, width: float, height: float) -> Figure:
    # A bare Figure on an Agg canvas, not pyplot: nothing enters pyplot's global figure registry
    # (so long searches cannot leak figures) and the host's backend choice is left alone.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(path, dpi=DPI, format="png")
    finally:
        fig.clear()  # drop artists now rather than when the garbage collector gets to them
    return path
