"""Search progress: one line per finished trial and, on a terminal, a live progress bar below the
lines with the trials done, the size of the Pareto front and its hypervolume."""

from __future__ import annotations

import atexit
import math
import threading
from collections.abc import Sequence
from typing import NamedTuple

import optuna
from optuna.trial import FrozenTrial
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from ..core.objectives import Objective
from ..core.pareto import hypervolume, pareto_front, reference_point
from ..core.trials import TASK_METRICS_ATTR, trials_dataframe
from ..report.tables import format_metric
from .study import count_done


class ProgressSnapshot(NamedTuple):
    """Where a search stands after a trial.

    ``done``: trials that count towards ``n_trials`` (finished and not retried, as
    ``study.count_done`` counts them for ``run_search``). ``hypervolume``: of the current front
    against the current reference point, so it can dip when a new trial widens the reference;
    NaN while the front is empty.
    """

    done: int
    total: int
    front_size: int
    hypervolume: float


def progress_snapshot(
    study: optuna.Study, objectives: Sequence[Objective], *, n_trials: int
) -> ProgressSnapshot:
    """The trials done, front size and hypervolume of ``study`` now.

    Cheap enough to run after every trial: one pass over the trials and the hypervolume of the
    front alone (not the whole ``hypervolume_history``).
    """
    done = count_done(study.get_trials(deepcopy=False))
    trials = trials_dataframe(study)
    front = pareto_front(trials, objectives)
    value = math.nan
    if len(front):
        names = [o.name for o in objectives]
        value = hypervolume(
            front[names].to_numpy(dtype=float),
            [o.direction for o in objectives],
            reference_point(trials, objectives),
        )
    return ProgressSnapshot(done=done, total=n_trials, front_size=len(front), hypervolume=value)


class TrialPrinter:
    """``run_search(on_trial=...)`` callback: prints one line per finished trial and, when the
    console is a terminal, keeps a rich progress bar below those lines.

    Thread-safe: ``--n-jobs`` threads finish trials concurrently, so each call holds a lock. The
    bar starts with the first finished trial and stops by itself once ``n_trials`` are done;
    ``close()`` (or leaving a ``with TrialPrinter(...)`` block) stops it earlier, e.g. after a
    timeout, and an ``atexit`` hook stops it on Ctrl-C so the terminal gets its cursor back.
    When the console is not a terminal (CI logs, pipes) only the lines are printed, because a
    redrawn bar would fill the log with copies of itself.
    """

    def __init__(
        self, objectives: Sequence[Objective], console: Console, *, live: bool | None = None
    ) -> None:
        self.objectives = list(objectives)
        self.console = console
        self.live = (console.is_terminal and not console.is_dumb_terminal) if live is None else live
        self.last: ProgressSnapshot | None = None
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._closed = False
        self._lock = threading.Lock()

    def __call__(self, study: optuna.Study, trial: FrozenTrial, n_trials: int) -> None:
        with self._lock:
            snapshot = progress_snapshot(study, self.objectives, n_trials=n_trials)
            self.last = snapshot
            hv = "" if math.isnan(snapshot.hypervolume) else f" HV {snapshot.hypervolume:.4g}"
            if self.live and self._progress is None and not self._closed:
                self._start(snapshot)
            # Printed through the bar's console, so the line lands above the bar.
            self.console.print(
                f"[{snapshot.done}/{n_trials}] trial {trial.number}: {describe_trial(trial)} "
                f"| front {snapshot.front_size}{hv}",
                highlight=False,
            )
            if self._progress is not None and self._task is not None:
                self._progress.update(
                    self._task,
                    completed=snapshot.done,
                    total=n_trials,
                    front=snapshot.front_size,
                    hv=_format_hv(snapshot.hypervolume),
                )
            if snapshot.done >= n_trials:
                self._stop()

    @property
    def active(self) -> bool:
        """Whether the progress bar is on screen now."""
        return self._progress is not None

    def close(self) -> None:
        """Stop the bar (leaving its last state on screen); later trials print lines only."""
        with self._lock:
            self._stop()

    def __enter__(self) -> TrialPrinter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start(self, snapshot: ProgressSnapshot) -> None:
        self._progress = Progress(
            TextColumn("[bold]search"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("trials · front {task.fields[front]} · HV {task.fields[hv]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=self.console,
        )
        # Started at the current count, so a resumed run's earlier trials do not make the first
        # speed sample (and the ETA) look absurdly fast.
        self._task = self._progress.add_task(
            "search",
            total=snapshot.total,
            completed=snapshot.done,
            front=snapshot.front_size,
            hv=_format_hv(snapshot.hypervolume),
        )
        self._progress.start()
        atexit.register(self._stop)

    def _stop(self) -> None:
        self._closed = True
        if self._progress is not None:
            self._progress.stop()
            atexit.unregister(self._stop)
            self._progress = None


def describe_trial(trial: FrozenTrial) -> str:
    """What happened to a finished trial, as the progress line says it (rich markup)."""
    a = trial.user_attrs
    if trial.state.name == "FAIL":
        # Escaped: a reason such as "values [nan, 1.0]" would otherwise read as rich markup.
        return f"[red]failed[/]: {escape(str(a.get('fail_reason', '?')))}"
    if trial.state.name == "PRUNED":
        # Stopped early at a rung (trained, counted) or skipped by the prescreen (not counted).
        return f"[cyan]{escape(str(a.get('pruned_reason', 'pruned')))}[/]"
    if not a.get("trained"):
        return (
            f"[yellow]over budget[/] (not trained) lat {a['latency_ms']:.3g} ms "
            f"size {a['size_kb']:.3g} kB"
        )
    names = a.get(TASK_METRICS_ATTR, ["accuracy"])
    scores = " ".join(
        f"acc {a[n]:.2%}" if n == "accuracy" else f"{n} {format_metric(n, a.get(n))}" for n in names
    )
    return (
        f"{scores} lat {a['latency_ms']:.3g} ms "
        f"energy {a['energy_mj']:.3g} mJ size {a['size_kb']:.3g} kB"
    )


def _format_hv(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.4g}"
