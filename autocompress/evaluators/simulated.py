"""A simulated evaluator: answer a trial from a table of recorded fine-tunes, after sleeping for
the training time the table recorded. For measuring the search's coordination layer (storage,
sampler, proposals, early stopping, heartbeats, Ray scheduling) at many workers on a machine that
could not train that many candidates at once: everything but the training runs for real.

    evaluator:
      name: simulated
      options:
        table: /data/small.json    # required: the recorded fine-tunes (format below)
        time_scale: 1.0            # sleep = recorded seconds x time_scale
        trial_seconds: null        # or: a full fine-tune sleeps this long, whatever was recorded
        jitter: 0.0                # sleep x exp(jitter x N(0, 1)), drawn per candidate
        seed: null                 # of the jitter; default: the run's seed

``table`` is relative to the directory a process starts in: give Ray (whose trials run in
their own directories) an absolute path. It is a JSON object keyed by :func:`table_key` (the
candidate's sorted JSON), each value ``{"curve": [accuracy after epoch 1, 2, ...], "epoch_s":
[seconds of epoch 1, 2, ...]}`` and optionally its hardware costs (``latency_ms``, ``size_kb``:
the search prices candidates on its own profile; these are for a benchmark's reference front).
``benchmarks/search_efficiency.py`` writes such a table by training every candidate of a small
space; :func:`synthetic_table` makes one in milliseconds from a formula, for tests.

A trial of ``train.epochs`` epochs (the table's curve length: they must match) returns
``curve[-1]`` as its ``accuracy`` (classification only) after sleeping the sum of ``epoch_s``.
With ``search.early_stopping`` on, it reports ``curve[rung - 1]`` at each rung to the run's rung
table after sleeping that far, and stops where the table says, as a trained candidate would (a
``ptq_rung`` at 0 epochs is not judged: the table records no post-training score). A candidate
missing from the table fails its trial (:class:`CandidateError`).

Sleeping releases the GIL, so ``--n-jobs`` threads of one process simulate that many workers.
"""

from __future__ import annotations

import copy
import json
import math
import time
import zlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from ..spaces import Candidate
from ._base import (
    CandidateError,
    Evaluator,
    EvaluatorContext,
    TaskMetrics,
    TrialContext,
    register_evaluator,
)
from .early_stopping import RungRecord, RungTable

__all__ = [
    "SimulatedEvaluator",
    "SimulatedOptions",
    "load_table",
    "simulated_options",
    "synthetic_table",
    "table_key",
]

METRIC = "accuracy"  # what the table's curves record


class SimulatedOptions(BaseModel):
    """``evaluator.options`` of ``evaluator: {name: simulated}`` (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    table: Path
    time_scale: float = Field(default=1.0, ge=0, description="sleep = recorded seconds x this")
    trial_seconds: float | None = Field(
        default=None, ge=0, description="a full fine-tune sleeps this long instead"
    )
    jitter: float = Field(default=0.0, ge=0, description="log-normal spread of each sleep")
    seed: int | None = Field(default=None, description="of the jitter; default: the run's seed")


def table_key(candidate: Candidate) -> str:
    """The table's key of ``candidate``: its JSON with sorted keys."""
    return candidate.to_json()


def load_table(path: str | Path) -> dict[str, dict[str, Any]]:
    """The table at ``path``, checked: every row has a ``curve`` and as many ``epoch_s``."""
    path = Path(path)
    try:
        table = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(
            f"The 'evaluator.options.table' field must be a readable JSON table. Got {str(path)!r} "
            f"instead ({err})."
        ) from None
    if not isinstance(table, dict) or not table:
        raise ValueError(
            "The 'evaluator.options.table' field must name a non-empty JSON object of rows. "
            f"Got {str(path)!r} instead."
        )
    for key, row in table.items():
        curve, seconds = row.get("curve"), row.get("epoch_s")
        if not curve or not isinstance(seconds, list) or len(seconds) != len(curve):
            raise ValueError(
                f"Every row of the simulated table {str(path)!r} must hold a 'curve' and as many "
                f"'epoch_s'. Got {row!r} for {key} instead."
            )
    return table


class SimulatedEvaluator(Evaluator):
    """Looks a candidate up in ``table`` and sleeps its recorded training time (see the module
    docstring). ``epochs``: a full fine-tune's (every row's curve length). ``rungs``: the run's
    rung table when early stopping is on, ``cost_names`` the costs a rung record holds.
    Thread-safe: nothing per call is kept on ``self``."""

    def __init__(
        self,
        *,
        table: Mapping[str, Mapping[str, Any]],
        epochs: int,
        time_scale: float = 1.0,
        trial_seconds: float | None = None,
        jitter: float = 0.0,
        seed: int = 0,
        rungs: RungTable | None = None,
        cost_names: Sequence[str] = (),
    ) -> None:
        lengths = {len(row["curve"]) for row in table.values()}
        if lengths != {epochs}:
            raise ValueError(
                f"The simulated table records {sorted(lengths)} epoch(s) per candidate; the run's "
                f"'train.epochs' must be the same. Got {epochs} instead."
            )
        self.table = table
        self.epochs = epochs
        self.time_scale = time_scale
        self.trial_seconds = trial_seconds
        self.jitter = jitter
        self.seed = seed
        self.rungs = rungs
        self.cost_names = tuple(cost_names)

    def evaluate(self, model: nn.Module, candidate: Candidate) -> TaskMetrics:
        return self._simulate(candidate, context=None)

    def evaluate_trial(
        self, model: nn.Module, candidate: Candidate, *, context: TrialContext
    ) -> TaskMetrics:
        return self._simulate(candidate, context=context)

    def with_early_stopping(
        self, table: RungTable, *, cost_names: Sequence[str]
    ) -> SimulatedEvaluator:
        judged = copy.copy(self)  # the same table and sleeps, with the run's rungs
        judged.rungs, judged.cost_names = table, tuple(cost_names)
        return judged

    def seconds(self, candidate: Candidate, epochs: int) -> float:
        """What the first ``epochs`` epochs of ``candidate``'s fine-tune sleep."""
        key = table_key(candidate)
        row = self._row(key)
        if self.trial_seconds is not None:
            base = self.trial_seconds * epochs / self.epochs
        else:
            base = self.time_scale * float(sum(row["epoch_s"][:epochs]))
        if self.jitter:
            # Seeded by the candidate: every backend and rerun sleeps it alike.
            rng = np.random.default_rng([self.seed, zlib.crc32(key.encode())])
            base *= math.exp(self.jitter * rng.standard_normal())
        return base

    def _row(self, key: str) -> Mapping[str, Any]:
        row = self.table.get(key)
        if row is None:
            raise CandidateError(
                f"the candidate is not in the simulated table ({len(self.table)} rows): {key}"
            )
        return row

    def _simulate(self, candidate: Candidate, *, context: TrialContext | None) -> TaskMetrics:
        curve = self._row(table_key(candidate))["curve"]
        start = time.perf_counter()
        slept = 0  # epochs slept so far
        if self.rungs is not None and context is not None:
            costs = tuple(float(context.costs[name]) for name in self.cost_names)
            for rung in self.rungs.rungs:
                if not 0 < rung < self.epochs:
                    continue  # rung 0 (PTQ) is not in the table; the full budget is no rung
                time.sleep(self.seconds(candidate, rung) - self.seconds(candidate, slept))
                slept = rung
                value = float(curve[rung - 1])
                record = RungRecord(trial=context.number, score=value, costs=costs)
                self.rungs.judge(rung, record, metric=METRIC, value=value)
        time.sleep(self.seconds(candidate, self.epochs) - self.seconds(candidate, slept))
        return TaskMetrics(
            metrics={METRIC: float(curve[-1])},
            loss=0.0,
            epochs=self.epochs,
            train_seconds=time.perf_counter() - start,
        )


def simulated_options(options: Mapping[str, Any]) -> SimulatedOptions:
    """``options`` validated, with errors that name the config field (``evaluator.options.X``)."""
    try:
        return SimulatedOptions.model_validate(dict(options))
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(part) for part in ("evaluator", "options", *first["loc"]))
        raise ValueError(
            f"The {field!r} field is invalid ({first['msg']}); the simulated evaluator's options "
            f"are {', '.join(SimulatedOptions.model_fields)}. Got {first.get('input')!r} instead."
        ) from None


@register_evaluator("simulated")
def simulated_evaluator(context: EvaluatorContext, **options: Any) -> SimulatedEvaluator:
    """``evaluator: {name: simulated, options: {table: PATH, ...}}`` (see the module docstring)."""
    parsed = simulated_options(options)
    if context.task.primary != METRIC:
        raise ValueError(
            f"The simulated evaluator's table records accuracy: the run's task must score "
            f"{METRIC!r}. Got {context.task.primary!r} instead."
        )
    return SimulatedEvaluator(
        table=load_table(parsed.table),
        epochs=context.train.epochs,
        time_scale=parsed.time_scale,
        trial_seconds=parsed.trial_seconds,
        jitter=parsed.jitter,
        seed=context.seed if parsed.seed is None else parsed.seed,
    )


def synthetic_table(
    candidates: Iterable[Candidate], *, epochs: int = 3, epoch_seconds: float = 1.0, seed: int = 0
) -> dict[str, dict[str, Any]]:
    """A table for ``candidates`` without training (for tests): each one's final accuracy falls
    with fewer bits and more pruning (averaged over its layers), plus seeded noise; its curve
    rises to it over ``epochs``; an epoch takes ``epoch_seconds``, less for pruned candidates."""
    table: dict[str, dict[str, Any]] = {}
    for candidate in candidates:
        key = table_key(candidate)
        rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
        layers = list(candidate.layers.values()) or [None]
        bits_loss = np.mean([0.3 * 2.0 ** (1 - c.w_bits) if c else 0.0 for c in layers])
        prune = float(np.mean([c.prune_ratio if c else 0.0 for c in layers]))
        final = 0.97 - bits_loss - 0.1 * prune**1.5 + 0.01 * rng.standard_normal()
        curve = [
            final - 0.2 * (1 - e / epochs) ** 2 + 0.005 * rng.standard_normal()
            for e in range(1, epochs + 1)
        ]
        curve[-1] = final
        table[key] = {
            "curve": [float(np.clip(a, 0.0, 1.0)) for a in curve],
            "epoch_s": [epoch_seconds * (1 - 0.5 * prune)] * epochs,
        }
    return table
