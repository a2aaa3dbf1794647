"""Dominance, Pareto fronts, reference points and hypervolume over a DataFrame of trials.

Data contract: one row per Optuna trial with at least ``number``, ``state`` ("COMPLETE", "FAIL",
...), ``feasible`` (bool, meets the hardware budget) and one float column per metric (NaN when
unknown). Only rows that are COMPLETE *and* feasible, with every objective known, take part in
fronts, reference points and hypervolumes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from .objectives import DIRECTIONS, MAXIMIZE, MINIMIZE, Objective

# Reference point: the worst feasible value pushed 10% of the observed range further out, so the
# extreme front points still add volume. Accuracy has a natural worst value instead, which keeps
# its reference independent of how bad the worst trial happened to be.
_REFERENCE_MARGIN = 0.1
_FIXED_REFERENCE = {"accuracy": 0.0}


def non_dominated_mask(
    values: np.ndarray, directions: Sequence[str], *, slack: Sequence[float] | None = None
) -> np.ndarray:
    """Boolean mask of the rows of ``values`` (n_points x n_objectives) that no row dominates.

    Exact duplicates of a front point do not dominate each other, so all copies are kept. Rows
    with a NaN never lie on the front and never dominate another row. ``slack`` (one value >= 0
    per objective, in its units): also keep the rows that no row would dominate if they were that
    much better, i.e. the near-front.
    """
    loss = to_loss(values, directions, func="non_dominated_mask")
    margin = np.zeros(loss.shape[1]) if slack is None else np.asarray(slack, dtype=float)
    if margin.shape != (loss.shape[1],) or not (np.isfinite(margin).all() and (margin >= 0).all()):
        raise ValueError(
            "The 'slack' parameter of non_dominated_mask must hold one finite value >= 0 per "
            f"objective ({loss.shape[1]}). Got {slack!r} instead."
        )
    valid = ~np.isnan(loss).any(axis=1)
    points = loss[valid]
    on_front = np.ones(len(points), dtype=bool)
    # One vectorised pass per point: O(n^2 k) time but O(n k) memory, fine for thousands of trials.
    for i, point in enumerate(points - margin):
        no_worse = (points <= point).all(axis=1)
        better = (points < point).any(axis=1)
        on_front[i] = not np.any(no_worse & better)
    mask = np.zeros(len(loss), dtype=bool)
    mask[valid] = on_front
    return mask


def pareto_front(
    df: pd.DataFrame, objectives: Sequence[Objective], *, slack: Mapping[str, float] | None = None
) -> pd.DataFrame:
    """Rows of ``df`` on the Pareto front of its feasible COMPLETE trials; with ``slack``
    (objective name -> margin, e.g. ``{"accuracy": 0.02}``) also those within that margin of it
    (see :func:`non_dominated_mask`).

    Sorted best-first by the first objective (ties by trial number); the original index is kept.
    """
    check_trials_frame(df, objectives, func="pareto_front")
    unknown = set(slack or {}) - {o.name for o in objectives}
    if unknown:
        raise ValueError(
            f"The 'slack' parameter of pareto_front names {sorted(unknown)}, which are not "
            f"objectives ({[o.name for o in objectives]})."
        )
    margins = [(slack or {}).get(o.name, 0.0) for o in objectives]
    values = objective_values(df, objectives)
    eligible = eligible_mask(df) & np.isfinite(values).all(axis=1)
    mask = np.zeros(len(df), dtype=bool)
    directions = [o.direction for o in objectives]
    mask[eligible] = non_dominated_mask(values[eligible], directions, slack=margins)
    first = objectives[0]
    return df.loc[mask].sort_values(
        [first.name, "number"], ascending=[first.direction == MINIMIZE, True], kind="mergesort"
    )


def hypervolume(
    points: np.ndarray, directions: Sequence[str], reference: Sequence[float] | np.ndarray
) -> float:
    """Volume dominated by ``points`` and bounded by ``reference``, in the objectives' own units.

    Points that are not strictly better than ``reference`` in every objective (or that hold a
    NaN) add no volume and are dropped.
    """
    loss = to_loss(points, directions, func="hypervolume")
    ref_loss = _reference_loss(reference, directions, func="hypervolume")
    keep = (loss < ref_loss).all(axis=1)  # NaN compares False, so NaN rows drop out here too
    return _compute_hypervolume(loss[keep], ref_loss)


def nadir_reference(values: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """The worst value of each objective over the rows of ``values`` (every one finite, at least
    one row), pushed out by 10% of its range (of ``|value|``, or 1 for 0, when all are equal), so
    the extreme points still add volume. Unlike :func:`reference_point`, accuracy gets no fixed
    worst value: the box is the one the points span, which weighs every front point alike."""
    loss = to_loss(values, directions, func="nadir_reference")
    if len(loss) == 0 or not np.isfinite(loss).all():
        raise ValueError(
            "The 'values' parameter of nadir_reference must hold at least one row, every value "
            "finite."
        )
    worst, best = loss.max(axis=0), loss.min(axis=0)
    spread = np.where(worst > best, worst - best, np.where(worst != 0, np.abs(worst), 1.0))
    ref_loss = worst + _REFERENCE_MARGIN * spread
    return np.where(
        _check_directions(directions, loss.shape[1], func="nadir_reference"), -ref_loss, ref_loss
    )


def greedy_hypervolume_order(
    values: np.ndarray,
    directions: Sequence[str],
    reference: Sequence[float] | np.ndarray,
    *,
    start: Sequence[int] = (),
) -> list[int]:
    """Row indices of ``values`` in greedy hypervolume order: first the row spanning the most
    volume (bounded by ``reference``), then each time the row adding the most to the rows before
    it. The first k rows are the classic greedy choice of k points that together keep the most
    of the set's hypervolume. ``start``: rows placed first, in that order; the greedy continues
    from them. Rows adding nothing (dominated, NaN, outside the box) come last, in their original
    order."""
    loss = to_loss(values, directions, func="greedy_hypervolume_order")
    ref_loss = _reference_loss(reference, directions, func="greedy_hypervolume_order")
    order = list(dict.fromkeys(int(i) for i in start))
    if any(not 0 <= i < len(loss) for i in order):
        raise ValueError(
            "The 'start' parameter of greedy_hypervolume_order must hold row indices of "
            f"'values' (0 to {len(loss) - 1}). Got {list(start)!r} instead."
        )
    remaining = [i for i in range(len(loss)) if (loss[i] < ref_loss).all() and i not in order]
    covered = _compute_hypervolume(loss[order], ref_loss) if order else 0.0
    while remaining:
        volumes = [_compute_hypervolume(loss[order + [i]], ref_loss) for i in remaining]
        best = int(np.argmax(volumes))
        if volumes[best] <= covered:
            break
        covered = volumes[best]
        order.append(remaining.pop(best))
    return order + [i for i in range(len(loss)) if i not in order]


def reference_point(df: pd.DataFrame, objectives: Sequence[Objective]) -> np.ndarray:
    """Reference point derived only from ``df``, so the same trials always give the same one.

    Over feasible COMPLETE trials with every objective finite: a maximised objective gets its
    worst (lowest) value minus 10% of its range, a minimised one its worst (highest) value plus
    10% of its range. "accuracy" uses 0.0. When all values of an objective are equal the range
    is taken as ``|value|`` (1.0 for 0), so a lone trial still has positive hypervolume.
    """
    check_trials_frame(df, objectives, func="reference_point")
    values = objective_values(df, objectives)
    values = values[eligible_mask(df) & np.isfinite(values).all(axis=1)]
    if len(values) == 0:
        raise ValueError(
            "The 'df' parameter of reference_point must contain at least one feasible COMPLETE "
            "trial with every objective finite. Got 0 such trials instead."
        )
    return reference_from_values(values, objectives)


def reference_from_values(values: np.ndarray, objectives: Sequence[Objective]) -> np.ndarray:
    """:func:`reference_point`'s rule applied to the rows of ``values`` (n_points x
    n_objectives, every one finite, at least one row)."""
    reference = nadir_reference(values, [o.direction for o in objectives])
    for j, objective in enumerate(objectives):
        if objective.direction == MAXIMIZE and objective.name in _FIXED_REFERENCE:
            reference[j] = _FIXED_REFERENCE[objective.name]
    return reference


def hypervolume_history(
    df: pd.DataFrame,
    objectives: Sequence[Objective],
    *,
    reference: Sequence[float] | np.ndarray | None = None,
) -> pd.DataFrame:
    """Hypervolume after each trial: columns ``number`` and ``hypervolume``, one row per trial.

    Row n holds the hypervolume of the feasible COMPLETE trials with number <= n. ``reference``
    defaults to ``reference_point(df, objectives)`` over the whole run, so the curve is measured
    against one fixed point and never decreases.
    """
    check_trials_frame(df, objectives, func="hypervolume_history")
    directions = [o.direction for o in objectives]
    order = np.argsort(df["number"].to_numpy(), kind="stable")
    numbers = df["number"].to_numpy()[order]
    values = objective_values(df, objectives)[order]
    eligible = (eligible_mask(df)[order]) & np.isfinite(values).all(axis=1)
    if reference is None and not eligible.any():
        return pd.DataFrame({"number": numbers.astype(int), "hypervolume": np.zeros(len(df))})
    if reference is None:
        reference = reference_point(df, objectives)
    ref_loss = _reference_loss(reference, directions, func="hypervolume_history")
    loss = to_loss(values, directions, func="hypervolume_history")

    front = np.empty((0, len(objectives)))
    current = 0.0
    history = np.zeros(len(df))
    for i, point in enumerate(loss):
        # Recompute only when the front changes: a point weakly dominated by the front (or not
        # inside the reference box) cannot add volume.
        if eligible[i] and (point < ref_loss).all() and not (front <= point).all(axis=1).any():
            front = np.vstack([front[~(point <= front).all(axis=1)], point])
            # max() guards against a rounding-level dip when the front is recomputed from scratch.
            current = max(current, _compute_hypervolume(front, ref_loss))
        history[i] = current
    return pd.DataFrame({"number": numbers.astype(int), "hypervolume": history})


def eligible_mask(df: pd.DataFrame) -> np.ndarray:
    """Rows that count for fronts: state COMPLETE and feasible True (missing feasible -> False)."""
    complete = (df["state"] == "COMPLETE").to_numpy(dtype=bool, na_value=False)
    feasible = df["feasible"].eq(True).to_numpy(dtype=bool, na_value=False)
    return complete & feasible


def objective_values(df: pd.DataFrame, objectives: Sequence[Objective]) -> np.ndarray:
    """Objective columns as a float array (n_rows x n_objectives), missing values as NaN."""
    columns = [pd.to_numeric(df[o.name]).to_numpy(dtype=float, na_value=np.nan) for o in objectives]
    return np.column_stack(columns) if columns else np.empty((len(df), 0))


def _compute_hypervolume(loss: np.ndarray, ref_loss: np.ndarray) -> float:
    # optuna._hypervolume is private API: this is the only place that touches it, so an Optuna
    # upgrade breaks one function. Imported lazily to keep ``import autocompress.report`` light.
    from optuna._hypervolume import compute_hypervolume

    if len(loss) == 0:
        return 0.0
    return float(compute_hypervolume(loss, ref_loss))


def _check_directions(directions: Sequence[str], n_objectives: int, *, func: str) -> np.ndarray:
    directions = list(directions)
    if len(directions) != n_objectives or any(d not in DIRECTIONS for d in directions):
        raise ValueError(
            f"The 'directions' parameter of {func} must be a list of {n_objectives} "
            f"'maximize'/'minimize' strings. Got {directions!r} instead."
        )
    return np.array([d == MAXIMIZE for d in directions])


def to_loss(values: np.ndarray, directions: Sequence[str], *, func: str) -> np.ndarray:
    """Copy of ``values`` as a 2-D float array in which every objective is minimised."""
    array = np.asarray(values, dtype=float)
    if array.ndim != 2:
        raise ValueError(
            f"The 'values' parameter of {func} must be a 2-D array (n_points x n_objectives). "
            f"Got an array of shape {array.shape} instead."
        )
    maximize = _check_directions(directions, array.shape[1], func=func)
    return np.where(maximize, -array, array)


def _reference_loss(
    reference: Sequence[float] | np.ndarray, directions: Sequence[str], *, func: str
) -> np.ndarray:
    ref = np.asarray(reference, dtype=float)
    directions = list(directions)
    if ref.shape != (len(directions),) or not np.isfinite(ref).all():
        raise ValueError(
            f"The 'reference' parameter of {func} must be {len(directions)} finite floats, one "
            f"per objective. Got {reference!r} instead."
        )
    maximize = _check_directions(directions, len(directions), func=func)
    return np.where(maximize, -ref, ref)


def check_trials_frame(df: pd.DataFrame, objectives: Sequence[Objective], *, func: str) -> None:
    if not isinstance(df, pd.DataFrame):
        raise ValueError(
            f"The 'df' parameter of {func} must be a pandas DataFrame. Got {type(df).__name__} "
            "instead."
        )
    objectives = list(objectives)
    names = [getattr(o, "name", None) for o in objectives]
    if (
        not objectives
        or not all(isinstance(o, Objective) for o in objectives)
        or len(set(names)) != len(names)
    ):
        raise ValueError(
            f"The 'objectives' parameter of {func} must be a non-empty list of Objective with "
            f"distinct names. Got {objectives!r} instead."
        )
    missing = [c for c in ("number", "state", "feasible", *names) if c not in df.columns]
    if missing:
        raise ValueError(
            f"The 'df' parameter of {func} must have the columns {missing!r}. Got columns "
            f"{list(df.columns)!r} instead."
        )
