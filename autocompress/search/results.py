"""Trials as a table, and the files a finished (or resumed) run writes."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd

from ..evaluators.early_stopping import RETRY_ATTR
from ..report.pareto import Objective, hypervolume_history, pareto_front
from ..report.plots import plot_hypervolume, plot_pareto

METRICS = ("accuracy", "latency_ms", "energy_mj", "size_kb", "peak_mem_kb")


def candidate_summary(candidate: dict[str, Any] | None) -> str:
    """One short line: family, arch knobs, mean bits and mean pruning ratio."""
    if not candidate:
        return ""
    arch = candidate["arch"]
    knobs = ",".join(
        f"{k}={_short(v)}"
        for k, v in arch.items()
        if k not in {"strides", "stem", "stem_stride", "last"}
    )
    layers = candidate["layers"].values()
    w = np.mean([c["w_bits"] for c in layers]) if layers else 32
    a = np.mean([c["a_bits"] for c in layers]) if layers else 32
    pruned = [c["prune_ratio"] for c in layers if c["prune_ratio"] > 0]
    prune = f" prune~{np.mean(pruned):.0%}x{len(pruned)}" if pruned else ""
    return f"{candidate['family']} {knobs} W{w:.1f}b A{a:.1f}b{prune}"


def _short(value: Any) -> str:
    if isinstance(value, list):
        if value and isinstance(value[0], dict):  # mobilenetv2 stages: depth/kernel/expand
            return "/".join(f"{s['n']}{s['k']}{s['t']}" for s in value)
        return "-".join(str(v) for v in value)
    return str(value)


def trials_dataframe(study: optuna.Study) -> pd.DataFrame:
    rows = []
    trials = study.get_trials(deepcopy=False)
    retried_as = {t.user_attrs[RETRY_ATTR]: t.number for t in trials if RETRY_ATTR in t.user_attrs}
    for t in trials:
        attrs = t.user_attrs
        row: dict[str, Any] = {"number": t.number, "state": t.state.name}
        for metric in METRICS:
            row[metric] = attrs.get(metric, np.nan)
        row["feasible"] = bool(attrs.get("feasible", False))
        row["trained"] = bool(attrs.get("trained", False))
        row["params"] = attrs.get("params", np.nan)
        row["train_seconds"] = attrs.get("train_seconds", np.nan)
        row["duration_s"] = attrs.get("duration_s", np.nan)
        row["fail_reason"] = attrs.get("fail_reason", "")
        row["pruned_reason"] = attrs.get("pruned_reason", "")
        if t.state.name == "FAIL" and not row["fail_reason"]:
            row["fail_reason"] = _silent_failure(t.number, retried_as)
        row["summary"] = candidate_summary(attrs.get("candidate"))
        row["candidate"] = json.dumps(attrs["candidate"]) if "candidate" in attrs else ""
        rows.append(row)
    columns = [
        "number",
        "state",
        *METRICS,
        "feasible",
        "trained",
        "params",
        "train_seconds",
        "duration_s",
        "fail_reason",
        "pruned_reason",
        "summary",
        "candidate",
    ]
    return pd.DataFrame(rows, columns=columns)


def _silent_failure(number: int, retried_as: dict[int, int]) -> str:
    # A worker killed mid-trial cannot record why; its heartbeat went stale and another worker
    # failed the trial (Optuna's heartbeat protocol), queueing it again unless out of retries.
    if number in retried_as:
        retry = retried_as[number]
        return f"stale: its worker stopped sending heartbeats (retried as trial {retry})"
    return "no reason recorded: the process running it died"


def write_results(
    trials: pd.DataFrame, run_dir: Path, objectives: Sequence[Objective]
) -> pd.DataFrame:
    """Write the result tables and plots of a run into its folder; return the Pareto front."""
    trials.to_csv(run_dir / "trials.csv", index=False)
    front = pareto_front(trials, objectives)
    front.to_csv(run_dir / "pareto.csv", index=False)
    usable = trials[(trials["state"] == "COMPLETE") & trials["feasible"]]
    if len(usable):
        history = hypervolume_history(trials, objectives)
        history.to_csv(run_dir / "hypervolume.csv", index=False)
        plot_pareto(trials, objectives, run_dir / "pareto.png")
        plot_hypervolume(history, run_dir / "hypervolume.png")
    return front


def load_trials(run_dir: Path) -> pd.DataFrame:
    """The trials of a run folder: live from its study (so a running or interrupted search shows
    its latest state), else from trials.csv."""
    study_file = run_dir / "study.db"
    if study_file.is_file():
        storage = f"sqlite:///{study_file}"
        names = optuna.get_all_study_names(storage)
        if len(names) == 1:
            return trials_dataframe(optuna.load_study(study_name=names[0], storage=storage))
    path = run_dir / "trials.csv"
    if not path.is_file():
        raise FileNotFoundError(
            f"{str(run_dir)!r} is not a finished run folder: trials.csv is missing "
            "(run `autocompress search CONFIG` first)."
        )
    text_columns = {
        "state": str,
        "fail_reason": str,
        "pruned_reason": str,
        "summary": str,
        "candidate": str,
    }
    return pd.read_csv(
        path,
        dtype=text_columns,
        keep_default_na=False,
        na_values={metric: ["", "nan", "NaN"] for metric in METRICS},
    )
