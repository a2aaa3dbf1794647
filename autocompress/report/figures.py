"""Review figures: a 3-D Pareto plot, parallel coordinates of the front's per-layer compression,
the per-layer bars of one trial, and a refit's accuracies against the search's.

As in ``plots.py``, each ``*_data`` function computes everything its figure shows (tests check
that) and the matching ``plot_*`` function only draws it. Per-layer settings come from the
``candidate`` column of the trials DataFrame: the JSON of a ``Candidate``,
``{"family", "arch", "layers": {layer_name: {"w_bits", "a_bits", "prune_ratio"}}}``, plus
``"rank_ratio"`` on the layers a low-rank factorization split (1.0 where it is absent), and
``"quantizer"`` on the layers with non-uniform weights (uniform where it is absent).
"""

from __future__ import annotations

import json
import math
import os
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from autocompress.core.objectives import MAXIMIZE, Objective
from autocompress.core.pareto import (
    check_trials_frame,
    eligible_mask,
    objective_values,
    pareto_front,
)
from autocompress.report.counts import nothing_to_plot
from autocompress.report.style import (
    DOMINATED_COLOUR,
    FRONT_COLOUR,
    INFEASIBLE_COLOUR,
    PointLabel,
    axis_label,
    draw_message,
    label_points,
    new_figure,
    save_figure,
)
from autocompress.report.tables import refit_metric

LAYER_FIELDS = ("w_bits", "a_bits", "prune_ratio")
RANK_FIELD = "rank_ratio"  # a per-layer field of runs that factorize, drawn only where it occurs
FULL_RANK = 1.0
UNIFORM = "uniform"  # the weight quantizer of layers whose JSON names none
_A_BITS_COLOUR = "tab:orange"
_PRUNE_COLOUR = "tab:green"
_RANK_COLOUR = "tab:purple"
_COLOUR_MAP = "viridis"
_MAX_CONSTANT_NAMED = 12


# --- 3-D Pareto plot --------------------------------------------------------------------------


class Pareto3DData(NamedTuple):
    """The first three objectives in one 3-D scatter.

    ``feasible_*``: feasible COMPLETE trials with these three objectives finite (front included),
    rows of ``feasible_values`` are (x, y, z). ``infeasible_*``: COMPLETE trials over the
    hardware budget. ``front_*``: the trials of ``pareto_front(df, objectives[:3])``, in its
    order. ``pareto_*``: the trials of ``pareto_front(df, objectives)``, the run's front over
    all objectives, at these three coordinates; the same trials as ``front_*`` when there are
    exactly three objectives, and with more, some of them look dominated in 3-D.
    ``front_labels``: one per distinct point of ``front_values``, naming all its trials.
    ``message``: what the figure says in words when there is nothing to plot, else ``None``.
    """

    objectives: tuple[Objective, Objective, Objective]
    feasible_values: np.ndarray
    feasible_numbers: np.ndarray
    infeasible_values: np.ndarray
    infeasible_numbers: np.ndarray
    front_values: np.ndarray
    front_numbers: np.ndarray
    pareto_values: np.ndarray
    pareto_numbers: np.ndarray
    front_labels: list[PointLabel]
    message: str | None


def pareto_3d_data(df: pd.DataFrame, objectives: Sequence[Objective]) -> Pareto3DData:
    """Data of the 3-D plot of ``objectives[:3]`` (further objectives are ignored)."""
    check_trials_frame(df, objectives, func="pareto_3d_data")
    if len(objectives) < 3:
        raise ValueError(
            "The 'objectives' parameter of pareto_3d_data must hold at least 3 objectives. "
            f"Got {len(objectives)} instead."
        )
    first = tuple(objectives[:3])
    values = objective_values(df, first)
    numbers = df["number"].to_numpy()
    finite = np.isfinite(values).all(axis=1)
    eligible = eligible_mask(df)
    complete = (df["state"] == "COMPLETE").to_numpy(dtype=bool, na_value=False)
    feasible = eligible & finite
    infeasible = complete & ~eligible & finite
    front = pareto_front(df, first)
    full = front if len(objectives) == 3 else pareto_front(df, objectives)
    front_values = objective_values(front, first)
    front_numbers = front["number"].to_numpy()
    return Pareto3DData(
        objectives=first,
        feasible_values=values[feasible],
        feasible_numbers=numbers[feasible],
        infeasible_values=values[infeasible],
        infeasible_numbers=numbers[infeasible],
        front_values=front_values,
        front_numbers=front_numbers,
        pareto_values=objective_values(full, first),
        pareto_numbers=full["number"].to_numpy(),
        front_labels=label_points(front_values, front_numbers),
        message=nothing_to_plot(df, first),
    )


def plot_pareto_3d(
    df: pd.DataFrame,
    objectives: Sequence[Objective],
    path: str | os.PathLike[str],
    *,
    title: str | None = "Pareto front (3-D)",
) -> Path:
    """Draw the first three objectives in 3-D and save it as a PNG at ``path``: their front
    blue and labelled, other trials of the full front hollow blue, dominated trials faded grey,
    over-budget trials as red x."""
    data = pareto_3d_data(df, objectives)
    # No constrained layout: it does not account for 3-D axes and warns.
    fig = new_figure(width=6.5, height=5.5)
    fig.set_layout_engine("none")
    # 3-D axes leave a wide empty margin of their own: let them fill the figure instead.
    ax = fig.add_axes((0.0, 0.02, 0.94, 0.92), projection="3d")
    hidden = data.pareto_values[~np.isin(data.pareto_numbers, data.front_numbers)]
    for values, kwargs in (
        (data.feasible_values, dict(s=14, color=DOMINATED_COLOUR, alpha=0.4, label="dominated")),
        (
            data.infeasible_values,
            dict(s=18, marker="x", color=INFEASIBLE_COLOUR, alpha=0.7, label="infeasible"),
        ),
        (
            hidden,
            dict(s=36, facecolors="none", edgecolors=FRONT_COLOUR, label="on full front"),
        ),
        (data.front_values, dict(s=36, color=FRONT_COLOUR, depthshade=False, label="3-D front")),
    ):
        if len(values):
            ax.scatter(values[:, 0], values[:, 1], values[:, 2], **kwargs)
    for label in data.front_labels:
        ax.text(*label.position, f" {label.text}", fontsize=7, color=FRONT_COLOUR)
    x, y, z = data.objectives
    ax.set_xlabel(axis_label(x), fontsize=8)
    ax.set_ylabel(axis_label(y), fontsize=8)
    ax.set_zlabel(axis_label(z), fontsize=8)
    ax.tick_params(labelsize=7)
    if len(data.feasible_values) or len(data.infeasible_values):
        ax.legend(loc="upper left", fontsize="small")
    if title:
        ax.set_title(f"{title}: {len(data.front_numbers)} trials on the front of these three")
    if data.message:
        draw_message(fig, data.message)
    return save_figure(fig, path)


# --- parallel coordinates of the front --------------------------------------------------------


class ParallelCoordinatesData(NamedTuple):
    """One polyline per front trial across per-layer compression axes, then the objectives.

    ``axes``: labels, ``"<layer>.w_bits"``, ``"<layer>.a_bits"``, ``"<layer>.prune_ratio"`` (and
    ``"<layer>.rank_ratio"`` when a front trial factorizes a layer) for each layer (in network
    order, merged over the front's architectures), then the objective names.
    ``layers``/``fields``: the layer (``None`` for an objective) and field of each axis.
    ``values``: ``len(numbers) x len(axes)``; NaN where a trial's architecture has no such layer
    (e.g. a depth-2 network at the third block's axes), which the plot draws as a gap.
    ``numbers``: the front trials, in ``pareto_front`` order (best first objective first).
    ``constant``: (label, value) of the layer axes left out because every line has that layer
    with the same value there (e.g. the classifier's prune_ratio, always 0); with fewer than two
    lines nothing is left out. The objective axes are always kept.
    ``end_labels``: one per distinct value of the last axis, naming the trials whose lines end
    there (one label, not several drawn over each other).
    ``message``: what the figure says in words when there is nothing to plot, else ``None``.
    """

    axes: list[str]
    layers: list[str | None]
    fields: list[str]
    numbers: np.ndarray
    values: np.ndarray
    objectives: tuple[Objective, ...]
    constant: list[tuple[str, float]]
    end_labels: list[PointLabel]
    message: str | None


def parallel_coordinates_data(
    df: pd.DataFrame, objectives: Sequence[Objective]
) -> ParallelCoordinatesData:
    """Per-layer w_bits / a_bits / prune_ratio (/ rank_ratio) and the objectives of every front
    trial."""
    check_trials_frame(df, objectives, func="parallel_coordinates_data")
    _check_candidate_column(df, func="parallel_coordinates_data")
    objectives = tuple(objectives)
    front = pareto_front(df, objectives)
    per_trial = [candidate_layers(text) for text in front["candidate"]]
    layer_names = _merge_layer_orders([list(layers) for layers in per_trial])
    # Rank axes only where the front factorizes: a single-line front of a run without
    # factorization would otherwise show a 1.0 axis per layer.
    factorized = any(c[RANK_FIELD] < FULL_RANK for t in per_trial for c in t.values())
    layer_fields = (*LAYER_FIELDS, RANK_FIELD) if factorized else LAYER_FIELDS

    axes = [f"{name}.{field}" for name in layer_names for field in layer_fields]
    axes += [o.name for o in objectives]
    layers: list[str | None] = [name for name in layer_names for _ in layer_fields]
    layers += [None] * len(objectives)
    fields = [field for _ in layer_names for field in layer_fields]
    fields += ["objective"] * len(objectives)

    values = np.full((len(front), len(axes)), np.nan)
    for row, layer_settings in enumerate(per_trial):
        for col, (name, field) in enumerate(zip(layers, fields, strict=True)):
            if name is not None and name in layer_settings:
                values[row, col] = float(layer_settings[name][field])
    values[:, len(layer_names) * len(layer_fields) :] = objective_values(front, objectives)

    # A constant axis carries no information and its label crowds out the axes that vary.
    constant = np.array(
        [
            len(front) >= 2 and name is not None and _is_constant(column)
            for name, column in zip(layers, values.T, strict=True)
        ],
        dtype=bool,
    )
    keep = ~constant
    numbers = front["number"].to_numpy()
    return ParallelCoordinatesData(
        axes=[a for a, k in zip(axes, keep, strict=True) if k],
        layers=[n for n, k in zip(layers, keep, strict=True) if k],
        fields=[f for f, k in zip(fields, keep, strict=True) if k],
        numbers=numbers,
        values=values[:, keep],
        objectives=objectives,
        constant=[(a, float(values[0, i])) for i, a in enumerate(axes) if constant[i]],
        end_labels=label_points(values[:, -1], numbers),
        message=nothing_to_plot(df, objectives),
    )


def _is_constant(column: np.ndarray) -> bool:
    """Every entry finite and equal (a NaN is a line without that layer: not the same)."""
    return bool(np.isfinite(column).all() and (column == column[0]).all())


def plot_parallel_coordinates(
    df: pd.DataFrame,
    objectives: Sequence[Objective],
    path: str | os.PathLike[str],
    *,
    title: str | None = "Per-layer compression of the Pareto front",
) -> Path:
    """Draw ``parallel_coordinates_data`` (each axis scaled to its own min..max, lines coloured
    by the first objective, layers on alternating bands) and save it as a PNG at ``path``."""
    data = parallel_coordinates_data(df, objectives)
    n_axes = len(data.axes)
    # Wide enough to read every axis label, but bounded: a deep network still gives one image.
    fig = new_figure(width=min(max(8.0, 0.42 * n_axes + 2.0), 40.0), height=5.5)
    ax = fig.subplots()
    if len(data.numbers) == 0:
        ax.set_axis_off()
        draw_message(fig, data.message or "No trial on the Pareto front yet: nothing to plot.")
        return save_figure(fig, path)

    scaled, lows, highs = _scale_columns(data.values)
    x = np.arange(n_axes)
    colour_values = data.values[:, data.fields.index("objective")]
    import matplotlib as mpl

    norm = mpl.colors.Normalize(np.nanmin(colour_values), np.nanmax(colour_values))
    cmap = mpl.colormaps[_COLOUR_MAP]
    if data.objectives[0].direction != MAXIMIZE:
        cmap = cmap.reversed()  # the better end of the first objective stays yellow
    for row, value in zip(scaled, colour_values, strict=True):
        colour = cmap(norm(value))
        # NaN entries (layers this architecture lacks) break the solid line: plot() leaves a
        # gap. A faint dotted line across the gap keeps the trial traceable.
        known = ~np.isnan(row)
        ax.plot(x[known], row[known], linestyle=":", linewidth=0.8, color=colour, alpha=0.6)
        ax.plot(x, row, marker="o", markersize=3, linewidth=1.4, color=colour, alpha=0.85)
    row_of = {int(number): i for i, number in enumerate(data.numbers)}
    for label in data.end_labels:
        ax.annotate(
            f"#{label.text}",
            (x[-1], scaled[row_of[label.numbers[0]], -1]),
            xytext=(4, 0),
            textcoords="offset points",
            fontsize=7,
            va="center",
        )
    # Alternate shaded bands group the axes of each layer.
    layer_order = list(dict.fromkeys(name for name in data.layers if name is not None))
    for name in layer_order[::2]:
        columns = [i for i, layer in enumerate(data.layers) if layer == name]
        ax.axvspan(columns[0] - 0.5, columns[-1] + 0.5, color="0.93", zorder=0)
    for i in x:
        ax.axvline(i, color="0.5", linewidth=0.6, zorder=0)
        ax.text(i, -0.04, _format_tick(lows[i]), ha="center", va="top", fontsize=6)
        ax.text(i, 1.04, _format_tick(highs[i]), ha="center", va="bottom", fontsize=6)
    ax.set_xticks(x, data.axes, rotation=60, ha="right", fontsize=7)
    ax.set_xlim(-0.5, n_axes - 0.5)
    ax.set_ylim(-0.12, 1.12)
    ax.set_yticks([])
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    colourbar = fig.colorbar(mpl.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, pad=0.01)
    colourbar.set_label(axis_label(data.objectives[0]))
    if title:
        ax.set_title(f"{title} ({len(data.numbers)} trials; dotted: layer absent)", pad=16)
    if data.constant:
        shown = [f"{axis} = {_format_tick(value)}" for axis, value in data.constant]
        if len(shown) > _MAX_CONSTANT_NAMED:
            more = len(shown) - _MAX_CONSTANT_NAMED
            shown = [*shown[:_MAX_CONSTANT_NAMED], f"and {more} more"]
        text = "Not drawn, the same on every line: " + ", ".join(shown)
        fig.supxlabel(textwrap.fill(text, int(fig.get_figwidth() * 14)), fontsize=7)
    return save_figure(fig, path)


# --- per-layer bars of one trial --------------------------------------------------------------


class LayerBarsData(NamedTuple):
    """The per-layer compression of trial ``number``, layers in the candidate's order.
    ``rank_ratio`` is 1.0 on the layers that are not factorized; ``quantizer`` is each layer's
    weight quantizer (uniform, pot, apot, codebook)."""

    number: int
    summary: str
    layers: list[str]
    w_bits: np.ndarray
    a_bits: np.ndarray
    prune_ratio: np.ndarray
    rank_ratio: np.ndarray
    quantizer: tuple[str, ...] = ()
    # Per layer: "" when dense, else its sparsity as written in the candidate ("2:4", "0.5").
    sparsity: tuple[str, ...] = ()


def layer_bars_data(df: pd.DataFrame, *, trial: int) -> LayerBarsData:
    """The layers of trial ``trial`` as stored in its ``candidate`` JSON."""
    _check_candidate_column(df, func="layer_bars_data")
    rows = df[df["number"] == trial]
    text = rows["candidate"].iloc[0] if len(rows) else ""
    if not _has_candidate(text):
        known = sorted(int(n) for n in df.loc[_candidate_mask(df), "number"])
        raise ValueError(
            "The 'trial' parameter of layer_bars_data must be the number of a trial that has a "
            f"candidate (one of {_abbreviate(known)}). Got {trial!r} instead."
        )
    layers = candidate_layers(text)
    summary = rows["summary"].iloc[0] if "summary" in rows.columns else ""
    return LayerBarsData(
        number=int(trial),
        summary="" if pd.isna(summary) else str(summary),
        layers=list(layers),
        w_bits=np.array([layers[n]["w_bits"] for n in layers], dtype=float),
        a_bits=np.array([layers[n]["a_bits"] for n in layers], dtype=float),
        prune_ratio=np.array([layers[n]["prune_ratio"] for n in layers], dtype=float),
        rank_ratio=np.array([layers[n][RANK_FIELD] for n in layers], dtype=float),
        quantizer=tuple(candidate_quantizers(text).get(n, UNIFORM) for n in layers),
        sparsity=_sparsity_labels(text, list(layers)),
    )


def _sparsity_labels(text: str, names: list[str]) -> tuple[str, ...]:
    """Each layer's sparsity label ("" when dense) from a candidate cell."""
    layers = json.loads(text).get("layers", {})
    labels = []
    for name in names:
        value = layers.get(name, {}).get("sparsity", 0.0)
        labels.append("" if value in (0, 0.0) else str(value))
    return tuple(labels)


def plot_layer_bars(
    df: pd.DataFrame, path: str | os.PathLike[str], *, trial: int, title: str | None = None
) -> Path:
    """Bars of w_bits and a_bits (top) and prune_ratio (bottom; beside it rank_ratio when a
    layer is factorized) per layer of ``trial``."""
    data = layer_bars_data(df, trial=trial)
    n = len(data.layers)
    fig = new_figure(width=min(max(6.0, 0.55 * n + 2.0), 40.0), height=5.5)
    bits_ax, prune_ax = fig.subplots(2, 1, sharex=True, height_ratios=[2, 1])
    x = np.arange(n)
    bits_ax.bar(x - 0.2, data.w_bits, width=0.4, color=FRONT_COLOUR, label="w_bits")
    bits_ax.bar(x + 0.2, data.a_bits, width=0.4, color=_A_BITS_COLOUR, label="a_bits")
    bits_ax.set_ylabel("bits (32 = float)")
    top = max([8.0, *data.w_bits, *data.a_bits])
    bits_ax.set_ylim(0, top * 1.15)
    bits_ax.legend(loc="upper right", fontsize="small", ncols=2)
    bits_ax.grid(axis="y", alpha=0.3)
    factorized = bool((data.rank_ratio < FULL_RANK).any())
    # With factorized layers the bottom panel pairs each prune bar with a rank bar.
    prune_x = x - 0.2 if factorized else x
    width = 0.4 if factorized else 0.6
    prune_ax.bar(prune_x, data.prune_ratio, width=width, color=_PRUNE_COLOUR, label="prune_ratio")
    prune_ax.set_ylim(0, 1)
    prune_ax.set_ylabel("prune / rank ratio" if factorized else "prune ratio")
    prune_ax.grid(axis="y", alpha=0.3)
    prune_ax.set_xticks(x, data.layers, rotation=45, ha="right", fontsize=8)
    if factorized:
        prune_ax.bar(x + 0.2, data.rank_ratio, width=0.4, color=_RANK_COLOUR, label="rank_ratio")
        # Head room above 100% for the legend of the two kinds of bars.
        prune_ax.set_ylim(0, 1.5)
        prune_ax.set_yticks([0.0, 0.25, 0.5, 0.75, 1.0])
        prune_ax.legend(loc="upper right", fontsize="small", ncols=2)
        for i, r in enumerate(data.rank_ratio):
            if r < FULL_RANK:  # a full bar is a whole layer: no number needed
                prune_ax.text(i + 0.2, r, f"{r:.0%}", ha="center", va="bottom", fontsize=7)
    if any(q != UNIFORM for q in data.quantizer):
        # Only runs with non-uniform weights name each w_bits bar's quantizer (inside the bar).
        for i, (w, q) in enumerate(zip(data.w_bits, data.quantizer, strict=True)):
            if w < 32:
                bits_ax.text(i - 0.2, w / 2, q, rotation=90, ha="center", va="center", fontsize=6)
    for i, (w, a, p) in enumerate(zip(data.w_bits, data.a_bits, data.prune_ratio, strict=True)):
        bits_ax.text(i - 0.2, w, f"{w:g}", ha="center", va="bottom", fontsize=7)
        bits_ax.text(i + 0.2, a, f"{a:g}", ha="center", va="bottom", fontsize=7)
        prune_ax.text(prune_x[i], p, f"{p:.0%}", ha="center", va="bottom", fontsize=7)
    if any(data.sparsity):
        # Sparse layers: their sparsity written inside the bottom of the bits panel.
        for i, label in enumerate(data.sparsity):
            if label:
                bits_ax.text(
                    i,
                    top * 0.04,
                    f"sparse {label}",
                    ha="center",
                    va="bottom",
                    fontsize=7,
                    rotation=90,
                    color=_PRUNE_COLOUR,
                )
    heading = title if title is not None else f"Trial {data.number}"
    if data.summary:
        heading = f"{heading}: {data.summary}"
    fig.suptitle(heading, fontsize=10)
    return save_figure(fig, path)


# --- refit: search accuracy vs refit accuracy ----------------------------------------------------
# With ``search_<metric>`` and ``<metric>``, the task's primary metric (e.g. accuracy).
REFIT_COLUMNS = ("trial", "refit_of", "state", "on_front")


class RefitAccuracyData(NamedTuple):
    """The completed trials of a refit: the score (``metric``, e.g. accuracy) in the search
    (``x``) and after the refit (``y``), ``on_front`` (the refit's front), ``sources`` (the
    search trial each one refits), and ``front_labels``, one per distinct point of the front
    naming its source trials."""

    x: np.ndarray
    y: np.ndarray
    on_front: np.ndarray
    sources: np.ndarray
    front_labels: list[PointLabel]
    metric: str = "accuracy"


def refit_accuracy_data(table: pd.DataFrame) -> RefitAccuracyData:
    """Data of ``plot_refit_accuracy`` from a refit's ``refit.csv`` (``REFIT_COLUMNS``)."""
    missing = [c for c in REFIT_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(
            "The 'table' parameter of refit_accuracy_data must have the columns "
            f"{missing!r} (a refit.csv). Got columns {list(table.columns)!r} instead."
        )
    metric = refit_metric(table)
    done = table[table["state"] == "COMPLETE"]
    front = done["on_front"].astype(bool).to_numpy()
    x, y = done[f"search_{metric}"].to_numpy(float), done[metric].to_numpy(float)
    sources = done["refit_of"].to_numpy()
    return RefitAccuracyData(
        x=x,
        y=y,
        on_front=front,
        sources=sources,
        front_labels=label_points(np.column_stack([x[front], y[front]]), sources[front]),
        metric=metric,
    )


def plot_refit_accuracy(
    table: pd.DataFrame, path: str | os.PathLike[str], *, title: str | None = None
) -> Path:
    """Scatter of a refit's ``refit.csv``: each trial's accuracy in the search (x) against its
    accuracy after the refit (y), the refit front filled and labelled by source trial."""
    data = refit_accuracy_data(table)
    x, y, front = data.x, data.y, data.on_front
    fig = new_figure(width=5.5, height=5.0)
    ax = fig.subplots()
    if len(x):
        low, high = min(x.min(), y.min()), max(x.max(), y.max())
        ax.plot([low, high], [low, high], color=DOMINATED_COLOUR, lw=1, ls="--", label="y = x")
    ax.scatter(
        x[~front],
        y[~front],
        s=24,
        facecolors="none",
        edgecolors=FRONT_COLOUR,
        label="off the refit front",
    )
    ax.scatter(x[front], y[front], s=24, color=FRONT_COLOUR, label="on the refit front")
    for label in data.front_labels:
        ax.annotate(
            label.text, label.position, xytext=(3, 3), textcoords="offset points", fontsize=7
        )
    ax.set_xlabel(f"{data.metric} in the search")
    ax.set_ylabel(f"{data.metric} after the refit")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    if title:
        ax.set_title(title)
    if not len(x):
        draw_message(fig, "No refit trial completed: nothing to plot.")
    return save_figure(fig, path)


def default_trial(
    df: pd.DataFrame, objectives: Sequence[Objective], *, score: Objective | None = None
) -> int | None:
    """The best trial of the Pareto front by ``score`` (the task's primary metric; default:
    highest accuracy; lowest number on ties), or ``None`` when the front is empty. Without that
    column, the first trial of ``pareto_front``."""
    score = score or Objective("accuracy", MAXIMIZE)
    front = pareto_front(df, objectives)
    front = front[_candidate_mask(front)] if "candidate" in front.columns else front
    if front.empty:
        return None
    if score.name not in front.columns or front[score.name].isna().all():
        return int(front["number"].iloc[0])
    column = front[score.name]
    best = front[column == (column.max() if score.direction == MAXIMIZE else column.min())]
    return int(best["number"].min())


# --- candidate JSON ---------------------------------------------------------------------------


def candidate_layers(text: Any) -> dict[str, dict[str, float]]:
    """``{layer: {"w_bits", "a_bits", "prune_ratio", "rank_ratio"}}`` from a ``candidate`` cell,
    in the candidate's layer order (``rank_ratio`` 1.0 where the JSON has none); ``{}`` for an
    empty cell (a trial that failed before sampling)."""
    if not _has_candidate(text):
        return {}
    try:
        layers = json.loads(text).get("layers", {})
        return {
            str(name): {
                "w_bits": float(choice["w_bits"]),
                "a_bits": float(choice["a_bits"]),
                "prune_ratio": float(choice.get("prune_ratio", 0.0)),
                RANK_FIELD: float(choice.get(RANK_FIELD, FULL_RANK)),
            }
            for name, choice in layers.items()
        }
    except (AttributeError, KeyError, TypeError, ValueError) as err:
        raise ValueError(
            "A 'candidate' cell must hold the JSON of a Candidate with 'layers': {name: "
            f"{{'w_bits', 'a_bits', 'prune_ratio'}}}}. Got {_abbreviate_text(text)!r} instead "
            f"({err})."
        ) from None


def candidate_quantizers(text: Any) -> dict[str, str]:
    """``{layer: quantizer}`` of the layers of a ``candidate`` cell with non-uniform weights
    (the JSON has a ``quantizer`` only there); ``{}`` for an empty cell."""
    if not _has_candidate(text):
        return {}
    layers = json.loads(text).get("layers", {})
    return {str(n): str(c["quantizer"]) for n, c in layers.items() if "quantizer" in c}


def _merge_layer_orders(orders: list[list[str]]) -> list[str]:
    """All names, each new one inserted right after its predecessor in its own list, so layers
    keep network order even when the first architecture lacks some of them."""
    merged: list[str] = []
    for order in orders:
        position = 0
        for name in order:
            if name in merged:
                position = merged.index(name) + 1
            else:
                merged.insert(position, name)
                position += 1
    return merged


def _scale_columns(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each column to [0, 1] over its finite values (NaN stays NaN); a constant column sits at
    0.5. Also returns each column's min and max, NaN for a column without a finite value."""
    finite = np.isfinite(values)
    columns = list(zip(values.T, finite.T, strict=True))
    lows = np.array([col[ok].min() if ok.any() else np.nan for col, ok in columns])
    highs = np.array([col[ok].max() if ok.any() else np.nan for col, ok in columns])
    spread = highs - lows
    varies = spread > 0  # False for constant and for empty columns
    scaled = np.where(varies, (values - lows) / np.where(varies, spread, 1.0), 0.5)
    return np.where(finite, scaled, np.nan), lows, highs


def _format_tick(value: float) -> str:
    if not math.isfinite(value):
        return ""
    return f"{value:.3g}"


def _has_candidate(text: Any) -> bool:
    return isinstance(text, str) and bool(text.strip())


def _candidate_mask(df: pd.DataFrame) -> np.ndarray:
    return np.array([_has_candidate(text) for text in df["candidate"]], dtype=bool)


def _check_candidate_column(df: pd.DataFrame, *, func: str) -> None:
    if not isinstance(df, pd.DataFrame) or not {"number", "candidate"} <= set(df.columns):
        got = list(df.columns) if isinstance(df, pd.DataFrame) else type(df).__name__
        raise ValueError(
            f"The 'df' parameter of {func} must be a trials DataFrame with the columns "
            f"['number', 'candidate']. Got {got!r} instead."
        )


def _abbreviate(numbers: list[int], limit: int = 20) -> str:
    if len(numbers) <= limit:
        return str(numbers)
    return f"[{', '.join(map(str, numbers[:limit]))}, ...]"


def _abbreviate_text(text: Any, limit: int = 80) -> str:
    text = str(text)
    return text if len(text) <= limit else text[:limit] + "..."
