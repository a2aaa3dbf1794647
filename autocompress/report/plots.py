"""Pareto-front and hypervolume plots as PNG files.

As in Optuna's ``visualization/_pareto_front.py``, ``pareto_plot_data`` computes everything a plot
shows (tested directly) and ``plot_pareto`` only draws it. matplotlib is imported inside the
drawing functions so that ``import autocompress.report`` stays light.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import pandas as pd

from autocompress.core.objectives import MINIMIZE, Objective
from autocompress.core.pareto import (
    check_trials_frame,
    eligible_mask,
    non_dominated_mask,
    objective_values,
    pareto_front,
)
from autocompress.report.counts import nothing_to_plot
from autocompress.report.style import (
    DOMINATED_COLOUR,
    FRONT_COLOUR,
    INFEASIBLE_COLOUR,
    axis_label,
    draw_message,
    new_figure,
    save_figure,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes

_MAX_COLUMNS = 3


class ProjectionData(NamedTuple):
    """One 2-D panel: objective ``x`` against objective ``y``.

    ``feasible_*``: feasible COMPLETE trials with every objective finite (front included).
    ``infeasible_*``: COMPLETE trials over the hardware budget, finite in ``x`` and ``y``.
    ``front_*``: the feasible points non-dominated in this 2-D projection, sorted by x ascending
    so that ``step(front_x, front_y, where=step_where)`` draws the attainment staircase.
    ``pareto_*``: the trials of ``ParetoPlotData.front_numbers`` (the full-dimensional front)
    projected here; with >= 3 objectives some of them look dominated in 2-D.
    """

    x: Objective
    y: Objective
    feasible_x: np.ndarray
    feasible_y: np.ndarray
    feasible_numbers: np.ndarray
    infeasible_x: np.ndarray
    infeasible_y: np.ndarray
    infeasible_numbers: np.ndarray
    front_x: np.ndarray
    front_y: np.ndarray
    front_numbers: np.ndarray
    pareto_x: np.ndarray
    pareto_y: np.ndarray
    step_where: str


class ParetoPlotData(NamedTuple):
    """``message``: what the figure says in words when there is no front (``nothing_to_plot``),
    else ``None``."""

    objectives: tuple[Objective, ...]
    projections: list[ProjectionData]
    front_numbers: list[int]  # trials on the full-dimensional front, as ordered by pareto_front
    message: str | None = None


def pareto_plot_data(df: pd.DataFrame, objectives: Sequence[Objective]) -> ParetoPlotData:
    """Data for every 2-D projection: objective pairs (i, j), i < j, first objective first.

    That is the first objective against each other one, then (with >= 3 objectives) every
    remaining pair.
    """
    check_trials_frame(df, objectives, func="pareto_plot_data")
    objectives = tuple(objectives)
    if len(objectives) < 2:
        raise ValueError(
            "The 'objectives' parameter of pareto_plot_data must hold at least 2 objectives. "
            f"Got {len(objectives)} instead."
        )
    values = objective_values(df, objectives)
    numbers = df["number"].to_numpy()
    eligible = eligible_mask(df)
    complete = (df["state"] == "COMPLETE").to_numpy(dtype=bool, na_value=False)
    feasible = eligible & np.isfinite(values).all(axis=1)
    front = pareto_front(df, objectives)
    front_numbers = [int(n) for n in front["number"]]
    pareto_values = objective_values(front, objectives)

    projections = []
    for i, j in itertools.combinations(range(len(objectives)), 2):
        xy = values[:, [i, j]]
        infeasible = complete & ~eligible & np.isfinite(xy).all(axis=1)
        fx, fy, fnum = xy[feasible, 0], xy[feasible, 1], numbers[feasible]
        directions = [objectives[i].direction, objectives[j].direction]
        on_front = non_dominated_mask(xy[feasible], directions)
        order = np.lexsort((fy[on_front], fx[on_front]))  # by x, then y, for a clean staircase
        projections.append(
            ProjectionData(
                x=objectives[i],
                y=objectives[j],
                feasible_x=fx,
                feasible_y=fy,
                feasible_numbers=fnum,
                infeasible_x=xy[infeasible, 0],
                infeasible_y=xy[infeasible, 1],
                infeasible_numbers=numbers[infeasible],
                front_x=fx[on_front][order],
                front_y=fy[on_front][order],
                front_numbers=fnum[on_front][order],
                pareto_x=pareto_values[:, i],
                pareto_y=pareto_values[:, j],
                # Between two front points, the best y reachable at x comes from the point on
                # the "cheaper" side of x: the left one when x is minimised, the right one when
                # x is maximised.
                step_where="post" if objectives[i].direction == MINIMIZE else "pre",
            )
        )
    return ParetoPlotData(objectives, projections, front_numbers, nothing_to_plot(df, objectives))


def plot_pareto(
    df: pd.DataFrame,
    objectives: Sequence[Objective],
    path: str | os.PathLike[str],
    *,
    title: str | None = "Pareto front",
) -> Path:
    """Draw every 2-D projection of the trials into a grid and save it as a PNG at ``path``."""
    data = pareto_plot_data(df, objectives)
    n_panels = len(data.projections)
    n_cols = min(n_panels, _MAX_COLUMNS)
    n_rows = -(-n_panels // n_cols)
    fig = new_figure(width=4.5 * n_cols, height=3.8 * n_rows)
    axes = fig.subplots(n_rows, n_cols, squeeze=False).ravel()
    for ax, projection in zip(axes, data.projections, strict=False):
        _draw_projection(ax, projection)
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    axes[0].legend(loc="best", fontsize="small")
    if title:
        fig.suptitle(f"{title} ({len(data.front_numbers)} trials on the front)")
    if data.message:
        draw_message(fig, data.message)
    return save_figure(fig, path)


def plot_hypervolume(
    history_df: pd.DataFrame,
    path: str | os.PathLike[str],
    *,
    title: str | None = "Hypervolume",
    message: str | None = None,
) -> Path:
    """Draw ``hypervolume_history`` output (hypervolume after each trial) and save it as PNG;
    ``message`` (e.g. ``nothing_to_plot``'s) is written across it in words."""
    missing = [c for c in ("number", "hypervolume") if c not in history_df.columns]
    if missing:
        raise ValueError(
            "The 'history_df' parameter of plot_hypervolume must have the columns "
            f"{missing!r}. Got columns {list(history_df.columns)!r} instead."
        )
    fig = new_figure(width=6.0, height=4.0)
    ax = fig.subplots()
    # A step line: the hypervolume holds its value until the next trial improves the front.
    ax.step(history_df["number"], history_df["hypervolume"], where="post", color=FRONT_COLOUR)
    ax.set_xlabel("trial number")
    ax.set_ylabel("hypervolume (↑ better)")
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    if message:
        draw_message(fig, message)
    return save_figure(fig, path)


def _draw_projection(ax: Axes, p: ProjectionData) -> None:
    # Bottom to top. Full-front trials that this projection hides behind others are hollow, so
    # they stay findable.
    layers = (
        (p.feasible_x, p.feasible_y, dict(s=14, color=DOMINATED_COLOUR, alpha=0.5)),
        (
            p.infeasible_x,
            p.infeasible_y,
            dict(s=18, marker="x", color=INFEASIBLE_COLOUR, alpha=0.7),
        ),
        (p.pareto_x, p.pareto_y, dict(s=30, facecolors="none", edgecolors=FRONT_COLOUR)),
    )
    labels = ("dominated", "infeasible", "on full front")
    for zorder, ((xs, ys, style), label) in enumerate(zip(layers, labels, strict=True), start=1):
        ax.scatter(xs, ys, label=label, zorder=zorder, **style)
    ax.step(p.front_x, p.front_y, where=p.step_where, color=FRONT_COLOUR, zorder=4)
    ax.scatter(p.front_x, p.front_y, s=24, color=FRONT_COLOUR, label="2-D front", zorder=5)
    ax.set_xlabel(axis_label(p.x))
    ax.set_ylabel(axis_label(p.y))
    ax.grid(alpha=0.3)
