"""One line per finished trial, with the front size and hypervolume so far."""

from __future__ import annotations

import threading

import optuna
from optuna.trial import FrozenTrial
from rich.console import Console

from ..config import RunConfig
from ..report.pareto import hypervolume, pareto_front, reference_point
from .results import trials_dataframe


class TrialPrinter:
    def __init__(self, config: RunConfig, console: Console) -> None:
        self.objectives = config.objectives()
        self.console = console
        self._lock = threading.Lock()  # --n-jobs threads finish trials concurrently

    def __call__(self, study: optuna.Study, trial: FrozenTrial, n_trials: int) -> None:
        with self._lock:
            trials = trials_dataframe(study)
            done = int(trials["state"].isin(["COMPLETE", "FAIL"]).sum())
            a = trial.user_attrs
            if trial.state.name == "FAIL":
                status = f"[red]failed[/]: {a.get('fail_reason', '?')}"
            elif not a.get("trained"):
                status = (
                    f"[yellow]over budget[/] (not trained) lat {a['latency_ms']:.3g} ms "
                    f"size {a['size_kb']:.3g} kB"
                )
            else:
                status = (
                    f"acc {a['accuracy']:.2%} lat {a['latency_ms']:.3g} ms "
                    f"energy {a['energy_mj']:.3g} mJ size {a['size_kb']:.3g} kB"
                )
            front = pareto_front(trials, self.objectives)
            hv = ""
            if len(front):
                names = [o.name for o in self.objectives]
                value = hypervolume(
                    front[names].to_numpy(dtype=float),
                    [o.direction for o in self.objectives],
                    reference_point(trials, self.objectives),
                )
                hv = f" HV {value:.4g}"
            self.console.print(
                f"[{done}/{n_trials}] trial {trial.number}: {status} | front {len(front)}{hv}",
                highlight=False,
            )
