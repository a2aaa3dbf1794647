"""What a finished (or resumed, or interrupted) run writes into its folder: the trials table,
the Pareto front, the hypervolume history and their plots."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import optuna
import pandas as pd

from ..core.files import atomic_path, file_lock
from ..core.objectives import Objective
from ..core.pareto import hypervolume_history, pareto_front
from ..core.rundir import RunDir
from ..core.trials import trials_dataframe
from ..report.plots import plot_hypervolume, plot_pareto


@dataclass(frozen=True)
class SearchResult:
    """A run's state when a search (or worker) returns: its folder, the study, every trial of
    the study as a table (see ``core.trials``), the Pareto front and the teacher's metrics."""

    run_dir: Path
    study: optuna.Study
    trials: pd.DataFrame
    front: pd.DataFrame
    teacher_metrics: dict


def write_results(
    trials: pd.DataFrame, run_dir: Path | RunDir, objectives: Sequence[Objective]
) -> pd.DataFrame:
    """Write the result tables and plots of a run into its folder; return the Pareto front."""
    run = RunDir(run_dir)
    front = pareto_front(trials, objectives)
    # Each file is replaced whole: a run killed while writing leaves the previous version.
    with atomic_path(run.trials_table) as tmp:
        trials.to_csv(tmp, index=False)
    with atomic_path(run.front_table) as tmp:
        front.to_csv(tmp, index=False)
    usable = trials[(trials["state"] == "COMPLETE") & trials["feasible"]]
    if len(usable):
        history = hypervolume_history(trials, objectives)
        with atomic_path(run.hypervolume_table) as tmp:
            history.to_csv(tmp, index=False)
        with atomic_path(run.front_plot) as tmp:
            plot_pareto(trials, objectives, tmp)
        with atomic_path(run.hypervolume_plot) as tmp:
            plot_hypervolume(history, tmp)
    return front


def write_run_results(
    study: optuna.Study,
    run_dir: Path | RunDir,
    objectives: Sequence[Objective],
    *,
    teacher_metrics: dict,
) -> SearchResult:
    """Write the tables and plots of the study into the run folder; returns the run's state.

    One writer at a time: several workers sharing the folder may finish together."""
    run = RunDir(run_dir)
    with file_lock(run.results_lock):
        trials = trials_dataframe(study)
        front = write_results(trials, run, objectives)
    return SearchResult(
        run_dir=run.path, study=study, trials=trials, front=front, teacher_metrics=teacher_metrics
    )
