"""The trials table: one row per trial of a study, as ``trials.csv`` stores it and as the
Pareto functions (``core.pareto``) and the report read it; and the bookkeeping of retried trials.

Columns: ``number``, ``state`` (Optuna's state name), the metrics (the task's, ``accuracy`` for
classification, then ``HARDWARE_METRICS``; NaN when unknown), ``feasible`` (within the hardware
budget), ``trained``, ``params``, ``train_seconds``, ``duration_s``, ``fail_reason``,
``pruned_reason``, ``summary`` (one line describing the candidate) and ``candidate`` (its
JSON).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .errors import DamagedFileError
from .rundir import RunDir

if TYPE_CHECKING:
    import optuna

logger = logging.getLogger(__name__)

HARDWARE_METRICS = ("latency_ms", "energy_mj", "size_kb", "peak_mem_kb")
METRICS = ("accuracy", *HARDWARE_METRICS)  # the metric columns of a classification run
# User attribute of a trial of a task other than classification: the names of its task metrics.
TASK_METRICS_ATTR = "task_metrics"
RETRY_ATTR = "retry_of"  # user attribute of a retry: the number of the attempt it repeats
_TEXT_COLUMNS = ("state", "fail_reason", "pruned_reason", "summary", "candidate")
_BOOKKEEPING_COLUMNS = (
    "number",
    "feasible",
    "trained",
    "params",
    "train_seconds",
    "duration_s",
    *_TEXT_COLUMNS,
)


def unreadable_storage_message(url: str, err: Exception) -> str:
    """What to say about a study storage that exists but cannot be read."""
    where = url.removeprefix("sqlite:///")
    message = f"{where} cannot be read ({_reason(err)})."
    trials = Path(where).with_name("trials.csv")
    if url.startswith("sqlite:///") and trials.is_file():
        message += (
            f" The run's trials as last written are in {trials}: `autocompress pareto`, `report` "
            "and `export` read them from there. To search again, use another run name, or move "
            "study.db away to start this run afresh."
        )
    return message


def _reason(err: Exception) -> str:
    # SQLAlchemy's message ends in the SQL and a URL about the error class: keep the cause.
    return str(getattr(err, "orig", None) or err).splitlines()[0]


def retried_trials(trials: Iterable[Any]) -> set[int]:
    """Numbers of the trials (Optuna ``FrozenTrial``) that a later trial retries."""
    return {t.user_attrs[RETRY_ATTR] for t in trials if RETRY_ATTR in t.user_attrs}


def retry_depth(trials: Sequence[Any], number: int) -> int:
    """How many earlier attempts trial ``number`` retries (0 for a first attempt): the length
    of its chain of ``RETRY_ATTR`` links. ``trials``: all the study's trials, by number."""
    depth, attrs = 0, trials[number].user_attrs
    while RETRY_ATTR in attrs:
        depth += 1
        attrs = trials[attrs[RETRY_ATTR]].user_attrs
    return depth


def candidate_summary(candidate: dict[str, Any] | None) -> str:
    """One short line: family, arch knobs, mean bits, mean pruning ratio and mean rank ratio of
    the pruned and of the factorized layers (with their counts), and each layer's weight
    quantizer when some are non-uniform."""
    if not candidate:
        return ""
    arch = candidate["arch"]
    if "factory" in arch:  # a user's network: its name, and the blocks dropped
        name = arch["factory"].rpartition(":")[2]
        knobs = f"{name} dropped={len(arch.get('dropped', []))}"
    else:
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
    # Absent in candidates that do not factorize (and in those written before the field).
    ranked = [c["rank_ratio"] for c in layers if c.get("rank_ratio", 1.0) < 1.0]
    rank = f" rank~{np.mean(ranked):.0%}x{len(ranked)}" if ranked else ""
    spatial = sum(c.get("factorization") == "spatial" for c in layers if c.get("rank_ratio", 1) < 1)
    rank += f" ({spatial} spatial)" if spatial else ""
    # Each layer's weight quantizer, one letter a layer in network order (u uniform, p pot,
    # a apot, c codebook, - float), only where some layer is non-uniform.
    kinds = [c.get("quantizer", "uniform") for c in layers]
    quant = ""
    if any(k != "uniform" for k in kinds):
        letters = [k[0] if c["w_bits"] < 32 else "-" for k, c in zip(kinds, layers, strict=True)]
        quant = " Q=" + "".join(letters)
    # Likewise absent where a layer is dense: "sparse 2:4x3 50%x1" counts the layers per value.
    sparse_values = [c["sparsity"] for c in layers if c.get("sparsity", 0.0) not in (0, 0.0)]
    counts: dict[str, int] = {}
    for value in sparse_values:
        label = value if isinstance(value, str) else f"{value:.0%}"
        counts[label] = counts.get(label, 0) + 1
    sparse = " sparse " + " ".join(f"{k}x{n}" for k, n in counts.items()) if counts else ""
    return f"{candidate['family']} {knobs} W{w:.1f}b A{a:.1f}b{prune}{rank}{quant}{sparse}"


def _short(value: Any) -> str:
    if isinstance(value, list):
        if value and isinstance(value[0], dict):  # mobilenetv2 stages: depth/kernel/expand
            return "/".join(f"{s['n']}{s['k']}{s['t']}" for s in value)
        return "-".join(str(v) for v in value)
    return str(value)


def trials_dataframe(study: optuna.Study) -> pd.DataFrame:
    """The trials table of ``study`` (see the module docstring)."""
    rows = []
    trials = study.get_trials(deepcopy=False)
    metrics = [*task_metric_names(trials), *HARDWARE_METRICS]
    retried_as = {t.user_attrs[RETRY_ATTR]: t.number for t in trials if RETRY_ATTR in t.user_attrs}
    for t in trials:
        attrs = t.user_attrs
        row: dict[str, Any] = {"number": t.number, "state": t.state.name}
        for metric in metrics:
            row[metric] = attrs.get(metric, np.nan)
        row["feasible"] = bool(attrs.get("feasible", False))
        row["trained"] = bool(attrs.get("trained", False))
        row["params"] = attrs.get("params", np.nan)
        row["train_seconds"] = attrs.get("train_seconds", np.nan)
        row["duration_s"] = attrs.get("duration_s", np.nan)
        row["fail_reason"] = ""
        if t.state.name == "FAIL":
            row["fail_reason"] = _failure(attrs.get("fail_reason", ""), t.number, retried_as)
        row["pruned_reason"] = attrs.get("pruned_reason", "")
        row["summary"] = candidate_summary(attrs.get("candidate"))
        row["candidate"] = json.dumps(attrs["candidate"]) if "candidate" in attrs else ""
        rows.append(row)
    columns = [
        "number",
        "state",
        *metrics,
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


def metric_columns(frame: pd.DataFrame) -> list[str]:
    """The metric columns of a trials table (the task's and the hardware metrics), in order."""
    return [c for c in frame.columns if c not in _BOOKKEEPING_COLUMNS]


def task_metric_names(trials: Iterable[optuna.trial.FrozenTrial]) -> list[str]:
    """The task metrics the trials recorded, in order: ``["accuracy"]`` for classification (and
    runs that predate tasks)."""
    names: dict[str, None] = {}
    for t in trials:
        names.update(dict.fromkeys(t.user_attrs.get(TASK_METRICS_ATTR, ())))
    return list(names) or ["accuracy"]


def _failure(reason: str, number: int, retried_as: dict[int, int]) -> str:
    # A worker killed mid-trial cannot record why: the worker that fails it as stale records it
    # (runs from before that hold none) and queues it again unless out of retries.
    if not reason:
        reason = (
            "stale: its worker stopped sending heartbeats"
            if number in retried_as
            else "no reason recorded: the process running it died"
        )
    if number in retried_as:
        return f"{reason} (retried as trial {retried_as[number]})"
    return reason


def load_trials(run_dir: str | Path | RunDir) -> pd.DataFrame:
    """The trials of a run folder: live from its study (so a running or interrupted search shows
    its latest state), else from trials.csv (also when the study cannot be read: a warning says
    so)."""
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    run = RunDir(run_dir)
    if run.study_file.is_file():
        storage = run.study_url
        try:
            names = optuna.get_all_study_names(storage)
            if len(names) == 1:
                return trials_dataframe(optuna.load_study(study_name=names[0], storage=storage))
        except SQLAlchemyError as err:
            if not run.trials_table.is_file():
                raise DamagedFileError(unreadable_storage_message(storage, err)) from None
            logger.warning(
                "%s cannot be read (%s): showing %s as the last run wrote it.",
                run.study_file,
                _reason(err),
                run.trials_table,
            )
    path = run.trials_table
    if not path.is_file():
        raise FileNotFoundError(
            f"{str(run_dir)!r} is not a finished run folder: trials.csv is missing "
            "(run `autocompress search CONFIG` first)."
        )
    numeric = [c for c in pd.read_csv(path, nrows=0).columns if c not in _TEXT_COLUMNS]
    return pd.read_csv(
        path,
        dtype=dict.fromkeys(_TEXT_COLUMNS, str),
        keep_default_na=False,
        na_values={column: ["", "nan", "NaN"] for column in numeric},
    )
