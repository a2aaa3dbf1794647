"""Where a run's trials stand: how many ended which way, and what a figure of the front says
in words when there is nothing to plot.

A trial ends COMPLETE (trained and scored, or over the hardware budget and never trained), FAIL
or PRUNED, or is still RUNNING (WAITING: queued). PRUNED covers two different outcomes, told
apart by the ``pruned_reason`` column: a trial stopped early at a rung of
``search.early_stopping`` (trained, a finished trial that counts towards ``search.n_trials``;
its reason starts with ``"stopped at rung"``) and one skipped untrained (by
``search.prescreen``, ``"skipped: ..."``, or as a duplicate).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from autocompress.core.objectives import Objective
from autocompress.core.pareto import check_trials_frame, eligible_mask, objective_values

# The start of the reason of a trial stopped by early stopping (evaluators.CandidateStopped);
# spelled here because importing the evaluators would pull torch into the report.
STOPPED_REASON_PREFIX = "stopped at rung"
STOPPED = "stopped early"
SKIPPED = "skipped"
_REASON_LIMIT = 160


class TrialCounts(NamedTuple):
    """How many of ``total`` trials ended which way.

    ``complete``: COMPLETE within budget (trained); ``over_budget``: COMPLETE over the hardware
    budget (never trained); ``stopped``: PRUNED by early stopping (trained); ``skipped``: PRUNED
    untrained (prescreen or duplicate); ``failed``: FAIL; ``running``: RUNNING or WAITING;
    ``other``: any other state. ``top_fail_reason`` is the most common non-empty
    ``fail_reason`` ("" when none) and ``top_fail_count`` how many failed trials give it.
    """

    total: int
    complete: int
    over_budget: int
    stopped: int
    skipped: int
    failed: int
    running: int
    other: int
    top_fail_reason: str
    top_fail_count: int

    def describe(self) -> str:
        """E.g. "5 complete, 1 over budget (not trained), 2 stopped early, 1 failed": each
        outcome that occurred (complete always), in the order of the fields."""
        parts = [
            (self.complete, "complete"),
            (self.over_budget, "over budget (not trained)"),
            (self.stopped, STOPPED),
            (self.skipped, f"{SKIPPED} (not trained)"),
            (self.failed, "failed"),
            (self.running, "running"),
            (self.other, "other"),
        ]
        return ", ".join(f"{n} {label}" for i, (n, label) in enumerate(parts) if n or i == 0)


def pruned_kind(reason: Any) -> str:
    """``STOPPED`` or ``SKIPPED``: which of the two PRUNED outcomes a ``pruned_reason`` names."""
    return STOPPED if text_cell(reason).startswith(STOPPED_REASON_PREFIX) else SKIPPED


def count_trials(df: pd.DataFrame) -> TrialCounts:
    """The outcomes of the trials in ``df`` (a trials DataFrame; see ``core.trials``)."""
    state = df["state"].astype(str)
    complete = state == "COMPLETE"
    feasible = df["feasible"].eq(True)
    pruned = state == "PRUNED"
    reasons = df["pruned_reason"] if "pruned_reason" in df.columns else pd.Series("", df.index)
    stopped = pruned & np.array([pruned_kind(r) == STOPPED for r in reasons], dtype=bool)
    failed = state == "FAIL"
    running = state.isin(["RUNNING", "WAITING"])
    fail_reasons = df.loc[failed, "fail_reason"] if "fail_reason" in df.columns else []
    common = Counter(r for r in map(text_cell, fail_reasons) if r).most_common(1)
    top_reason, top_count = common[0] if common else ("", 0)
    return TrialCounts(
        total=len(df),
        complete=int((complete & feasible).sum()),
        over_budget=int((complete & ~feasible).sum()),
        stopped=int(stopped.sum()),
        skipped=int((pruned & ~stopped).sum()),
        failed=int(failed.sum()),
        running=int(running.sum()),
        other=int((~(complete | pruned | failed | running)).sum()),
        top_fail_reason=top_reason,
        top_fail_count=top_count,
    )


def nothing_to_plot(df: pd.DataFrame, objectives: Sequence[Objective]) -> str | None:
    """``None`` when some feasible COMPLETE trial has every objective finite (a front exists);
    else what a figure of the front says instead, with the counts of ``count_trials`` and the
    most common failure, e.g. "No completed trial within the hardware budget yet: nothing to
    plot. 4 trials: 0 complete, 4 failed. Most common failure (3 of 4): CUDA out of memory"."""
    check_trials_frame(df, objectives, func="nothing_to_plot")
    finite = np.isfinite(objective_values(df, objectives)).all(axis=1)
    if (eligible_mask(df) & finite).any():
        return None
    if len(df) == 0:
        return "No trial yet: nothing to plot."
    counts = count_trials(df)
    if counts.complete:
        names = ", ".join(o.name for o in objectives)
        head = (
            f"None of the {counts.complete} completed trials within the hardware budget has "
            f"every objective ({names}) measured: nothing to plot."
        )
    else:
        head = "No completed trial within the hardware budget yet: nothing to plot."
    plural = "" if counts.total == 1 else "s"
    text = f"{head} {counts.total} trial{plural}: {counts.describe()}."
    if counts.top_fail_reason:
        reason = counts.top_fail_reason
        if len(reason) > _REASON_LIMIT:
            reason = reason[: _REASON_LIMIT - 1] + "…"
        text += f" Most common failure ({counts.top_fail_count} of {counts.failed}): {reason}"
    return text


def text_cell(value: Any) -> str:
    """A text cell of the trials table as a str: "" for None and NaN (an empty CSV cell)."""
    return "" if value is None or (isinstance(value, float) and pd.isna(value)) else str(value)
