"""Multi-objective successive halving: stop a candidate that others beat at no higher cost.

Optuna cannot prune multi-objective trials, so the stopping rule lives in the evaluator. A trial
trains epoch by epoch; at each *rung* (an epoch budget ``min_epochs * eta**k``, see
:func:`rung_schedule`) it measures its validation score (the task's primary metric,
accuracy for classification) and reports it to a shared
:class:`RungTable` together with its hardware costs (known before training). The table answers
with a :class:`StopDecision`; a stopped trial raises :class:`CandidateStopped`.

The rule. Let ``n`` be the number of earlier records at the rung. A record *dominates* the
candidate when its accuracy is ``>=`` the candidate's and every one of its costs is ``<=`` the
candidate's (it did at least as well with no cost advantage to the candidate). The candidate is
stopped when ``n >= min_records`` and at least ``k = max(min_dominators, (n + 1) // eta)``
earlier records dominate it.

Why this ``k``: with no costs, dominance is "at least as accurate", and stopping when
``(n + 1) // eta`` others are at least as good is exactly successive halving / ASHA (only the
top ``1/eta`` of the ``n + 1`` candidates seen at the rung go on; Optuna's
``SuccessiveHalvingPruner`` uses the same ``n // eta`` index). With costs it is strictly more
conservative: a candidate cheaper than the others in any cost is never dominated, so it is never
stopped, however low its accuracy. ``min_dominators`` (default 2) keeps one lucky early leader
from stopping anyone on its own, since accuracies after one epoch are noisy; ``min_records``
keeps the first trials of a run from being judged against almost nothing.

Storage. Records go through a :class:`RungStore`: :class:`InMemoryRungStore` for one process,
or :class:`OptunaRungStore`, which keeps them in the study's trial user attributes so they
survive a resume and are shared by every process on the same storage.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from torch import nn

from ..core.trials import retried_trials
from ..core.validation import check_int
from ..spaces import Candidate
from ._base import CandidateError, CandidateStopped, TaskMetrics, TrialContext
from .train import TrainEvaluator

__all__ = [
    "CandidateStopped",
    "EarlyStoppingTrainEvaluator",
    "InMemoryRungStore",
    "OptunaRungStore",
    "RungRecord",
    "RungStore",
    "RungTable",
    "StopDecision",
    "dominates",
    "rung_schedule",
]

RUNG_ATTR_PREFIX = "rung."  # Optuna user attribute "rung.<epochs>" holds a RungRecord dict


def rung_schedule(*, max_epochs: int, min_epochs: int = 1, eta: int = 3) -> tuple[int, ...]:
    """Epoch budgets at which a trial is judged: ``min_epochs * eta**k`` below ``max_epochs``.

    The full budget itself is not a rung: a trial that reaches it is finished, and stopping it
    then would save nothing. ``rung_schedule(max_epochs=10)`` is ``(1, 3, 9)``;
    ``rung_schedule(max_epochs=9)`` is ``(1, 3)``; a budget of ``min_epochs`` or less has none.
    """
    for name, value, minimum in (("max_epochs", max_epochs, 1), ("min_epochs", min_epochs, 1)):
        check_int(value, name=name, where="rung_schedule", minimum=minimum)
    check_int(eta, name="eta", where="rung_schedule", minimum=2)
    rungs = []
    epochs = min_epochs
    while epochs < max_epochs:
        rungs.append(epochs)
        epochs *= eta
    return tuple(rungs)


@dataclass(frozen=True)
class RungRecord:
    """One trial's result at one rung: its score after the rung's epochs (the task's primary
    metric, negated when that is minimised: higher is better) and its hardware costs (every one
    minimised, in the table's fixed order)."""

    trial: int
    score: float
    costs: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"trial": self.trial, "score": self.score, "costs": list(self.costs)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RungRecord:
        try:
            return cls(
                trial=int(data["trial"]),
                # Records of runs made before tasks hold the accuracy under its own name.
                score=float(data["score"] if "score" in data else data["accuracy"]),
                costs=tuple(float(c) for c in data["costs"]),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(
                "A stored rung record must hold an int 'trial', a float 'score' and a list "
                f"of float 'costs'. Got {data!r} instead."
            ) from err


def dominates(a: RungRecord, b: RungRecord) -> bool:
    """Whether ``a`` scores at least as well as ``b`` at no higher cost (weak dominance: equal
    records dominate each other)."""
    return a.score >= b.score and all(ca <= cb for ca, cb in zip(a.costs, b.costs, strict=True))


@runtime_checkable
class RungStore(Protocol):
    """Where a :class:`RungTable` keeps its records. ``rung`` is the rung's epoch budget.

    ``records`` returns the records added so far at that rung, oldest first (any order is
    correct, since the rule only counts). The table serialises its own calls with a lock; a store
    shared between processes needs nothing more than atomic single writes.
    """

    def records(self, rung: int) -> list[RungRecord]: ...

    def add(self, rung: int, record: RungRecord) -> None: ...


class InMemoryRungStore:
    """Records in a dict: for one process and one run (lost when the process ends)."""

    def __init__(self) -> None:
        self._records: dict[int, list[RungRecord]] = {}

    def records(self, rung: int) -> list[RungRecord]:
        return list(self._records.get(rung, ()))

    def add(self, rung: int, record: RungRecord) -> None:
        self._records.setdefault(rung, []).append(record)


class OptunaRungStore:
    """Records kept as user attributes ``"rung.<epochs>"`` of the study's trials.

    They live in the study's storage, so a resumed run and every process working on the same
    study see them. Records of all trials count, failed or stopped ones included: their
    accuracy at the rung was really measured. Except those of an attempt that was retried (a
    trial some other trial names in its ``retry_of`` attribute): the retry measures the same
    candidate again, and judged against its own first attempt it would count itself as a
    dominator (equal records dominate each other). ``add`` needs the record's trial to exist in
    the study (it is the running trial).
    """

    def __init__(self, study: Any) -> None:
        self.study = study

    def records(self, rung: int) -> list[RungRecord]:
        key = f"{RUNG_ATTR_PREFIX}{rung}"
        trials = self.study.get_trials(deepcopy=False)
        retried = retried_trials(trials)
        return [
            RungRecord.from_dict(trial.user_attrs[key])
            for trial in trials
            if key in trial.user_attrs and trial.number not in retried
        ]

    def add(self, rung: int, record: RungRecord) -> None:
        # A running trial's attributes can only be set through the storage (the Trial object
        # belongs to the objective's thread); run.py writes fail reasons the same way.
        storage, study_id = self.study._storage, self.study._study_id
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, record.trial)
        storage.set_trial_user_attr(trial_id, f"{RUNG_ATTR_PREFIX}{rung}", record.to_dict())


@dataclass(frozen=True)
class StopDecision:
    """The table's answer at one rung. ``competitors``: earlier records at the rung;
    ``dominators``: how many of them dominate the candidate; ``required``: the ``k`` of the rule
    (0 while there are fewer than ``min_records`` competitors, when nothing is stopped)."""

    stop: bool
    competitors: int
    dominators: int
    required: int


class RungTable:
    """The shared state of multi-objective successive halving (see the module docstring).

    Thread-safe: :meth:`report` compares with the earlier records and adds the new one under one
    lock, so of two trials reaching a rung at once, exactly one sees the other. Across processes
    (a shared Optuna storage) the lock does not reach; two trials may then miss each other,
    which only makes the rule more lenient.
    """

    def __init__(
        self,
        *,
        rungs: Sequence[int],
        eta: int = 3,
        min_dominators: int = 2,
        min_records: int = 4,
        store: RungStore | None = None,
    ) -> None:
        rungs = tuple(rungs)
        for rung in rungs:  # 0: judged before any training (see EarlyStoppingTrainEvaluator)
            check_int(rung, name="rungs", where="RungTable", minimum=0)
        if list(rungs) != sorted(set(rungs)):
            raise ValueError(
                "The 'rungs' parameter of RungTable must be strictly increasing epoch budgets. "
                f"Got {rungs!r} instead."
            )
        check_int(eta, name="eta", where="RungTable", minimum=2)
        check_int(min_dominators, name="min_dominators", where="RungTable", minimum=1)
        check_int(min_records, name="min_records", where="RungTable", minimum=0)
        if store is not None and not isinstance(store, RungStore):
            raise ValueError(
                "The 'store' parameter of RungTable must have records(rung) and add(rung, "
                f"record) methods. Got {type(store).__name__} instead."
            )
        self.rungs = rungs
        self.eta = eta
        self.min_dominators = min_dominators
        self.min_records = min_records
        self.store: RungStore = store if store is not None else InMemoryRungStore()
        self._lock = threading.Lock()

    def required_dominators(self, competitors: int) -> int:
        """``k`` for a candidate arriving after ``competitors`` records: at least
        ``min_dominators``, and at least ``(competitors + 1) // eta`` (the ASHA quota)."""
        return max(self.min_dominators, (competitors + 1) // self.eta)

    def report(self, rung: int, record: RungRecord) -> StopDecision:
        """Judge ``record`` against the earlier records at ``rung`` (an epoch budget of
        ``rungs``), then add it. A stopped record is added too: it was really measured."""
        if rung not in self.rungs:
            raise ValueError(
                f"The 'rung' parameter of RungTable.report must be one of {self.rungs}. "
                f"Got {rung!r} instead."
            )
        _check_record(record)
        with self._lock:
            earlier = self.store.records(rung)
            if earlier and len(earlier[0].costs) != len(record.costs):
                raise ValueError(
                    "The 'record.costs' parameter of RungTable.report must have as many costs "
                    f"as the records already at rung {rung} ({len(earlier[0].costs)}). "
                    f"Got {record.costs!r} instead."
                )
            n = len(earlier)
            dominators = sum(dominates(other, record) for other in earlier)
            required = self.required_dominators(n) if n >= self.min_records else 0
            self.store.add(rung, record)
        return StopDecision(
            stop=required > 0 and dominators >= required,
            competitors=n,
            dominators=dominators,
            required=required,
        )

    def judge(
        self, rung: int, record: RungRecord, *, metric: str = "accuracy", value: float | None = None
    ) -> None:
        """:meth:`report`, raising :class:`CandidateStopped` when the table says stop; the
        exception reports ``value`` of ``metric`` (default: the record's score)."""
        if self.report(rung, record).stop:
            raise CandidateStopped(
                rung=self.rungs.index(rung),
                epochs=rung,
                value=record.score if value is None else value,
                metric=metric,
            )


class EarlyStoppingTrainEvaluator(TrainEvaluator):
    """:class:`TrainEvaluator` that trains epoch by epoch and may stop at each rung.

    Called through ``evaluate_trial`` (the search's entry point) with the trial's number and
    hardware costs, it reports the validation accuracy at every rung of ``table`` below
    ``epochs`` and raises :class:`CandidateStopped` when the table says stop. ``evaluate``
    (no costs known) trains the full budget without stopping. A candidate that is never stopped
    gets exactly the result :class:`TrainEvaluator` gives it: same loader order, optimizer and
    cosine schedule over the full budget (so rung accuracies of different trials are measured at
    the same point of the same schedule). The rung evaluations only add eval-mode passes.

    ``train``: :class:`TrainEvaluator`'s keyword arguments. ``cost_names``: which entries of
    ``context.costs`` make up a record's cost tuple, in that
    order (all are minimised); ``None`` uses every entry, in sorted order. Include only the
    costs that are search objectives: an extra cost makes dominance rarer, the rule laxer.
    """

    def __init__(
        self, *, table: RungTable, cost_names: Sequence[str] | None = None, **train: Any
    ) -> None:
        super().__init__(**train)
        check_int(self.epochs, name="epochs", where="EarlyStoppingTrainEvaluator", minimum=1)
        if isinstance(cost_names, str):
            raise ValueError(
                "The 'cost_names' parameter of EarlyStoppingTrainEvaluator must be a sequence "
                f"of cost names, e.g. ['latency_ms']. Got {cost_names!r} instead."
            )
        self.table = table
        self.cost_names = None if cost_names is None else tuple(cost_names)

    def evaluate_trial(
        self, model: nn.Module, candidate: Candidate, *, context: TrialContext
    ) -> TaskMetrics:
        costs = self.cost_tuple(context.costs)
        rungs = {r for r in self.table.rungs if 0 < r < self.epochs}
        start = self.ptq_start(model, always=0 in self.table.rungs)

        def judge(rung: int, metrics: Mapping[str, float]) -> None:
            value = metrics[self.task.primary]
            record = RungRecord(
                trial=context.number, score=self.task.score.maximised(value), costs=costs
            )
            self.table.judge(rung, record, metric=self.task.primary, value=value)

        if 0 in self.table.rungs and start is not None:
            judge(0, start.metrics)
        if not self.ptq_fallback:
            start = None  # judged at rung 0 only: the fine-tune keeps its own result

        def judge_at_rungs(epoch: int, val_loader: Any) -> None:
            if epoch not in rungs:
                return
            metrics = self.rung_metrics(model, val_loader)
            if not math.isfinite(metrics["loss"]):
                raise CandidateError(f"non-finite validation loss after epoch {epoch}")
            if start is not None and self.better(start.metrics, than=metrics):
                metrics = start.metrics  # what the candidate would end with, at worst
            judge(epoch, metrics)
            model.train()  # evaluate left it in eval mode

        return self.fine_tune(model, after_epoch=judge_at_rungs, start=start)

    def rung_metrics(self, model: nn.Module, val_loader: Any) -> dict[str, float]:
        """The task's metrics (and ``loss``) on the validation split at a rung."""
        return self.task.evaluate(model, val_loader, device=self.device)

    def cost_tuple(self, costs: Mapping[str, float]) -> tuple[float, ...]:
        """The record's cost tuple from a trial's named costs (see ``cost_names``)."""
        names = self.cost_names if self.cost_names is not None else tuple(sorted(costs))
        missing = [name for name in names if name not in costs]
        if missing:
            raise ValueError(
                f"The 'context.costs' parameter of EarlyStoppingTrainEvaluator must hold the "
                f"costs {list(names)}. Got {dict(costs)!r} instead (missing {missing})."
            )
        return tuple(float(costs[name]) for name in names)


def _check_record(record: RungRecord) -> None:
    if not isinstance(record, RungRecord):
        raise ValueError(
            "The 'record' parameter of RungTable.report must be a RungRecord. "
            f"Got {type(record).__name__} instead."
        )
    if not math.isfinite(record.score):
        raise ValueError(
            "The 'record.score' parameter of RungTable.report must be a finite number. "
            f"Got {record.score!r} instead."
        )
    if not all(math.isfinite(c) for c in record.costs):
        raise ValueError(
            "The 'record.costs' parameter of RungTable.report must hold finite numbers. "
            f"Got {record.costs!r} instead."
        )
