"""One trial, in two steps: ``price`` (suggest a candidate, build it, cost it on the hardware
profile, record the budget constraints) and ``train`` (evaluate it when within budget, save the
model). The Ray backend runs the two steps in different processes; the Optuna backend and the
workers call both through :meth:`TrialObjective.__call__`."""

from __future__ import annotations

import json
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState
from torch import nn

from ..compression import build_compressed, count_parameters, save_model
from ..core.files import write_text_atomic
from ..core.trials import RETRY_ATTR, TASK_METRICS_ATTR, retried_trials
from ..data import make_loaders
from ..evaluators import CandidateError, CandidateStopped, TrialContext
from ..evaluators.train import recalibrate_bn_
from ..hardware_profiles import HardwareMetrics
from ..spaces import Candidate
from .prescreen import SKIPPED_ATTR, Prescreener, cost_vector
from .setup import SearchSetup
from .storage import one_transaction
from .study import DUPLICATE_ATTR, STOPPED_ATTR, count_done
from .surrogate import Proposer

__all__ = ["Priced", "TrialObjective", "TrialOutcome", "describe_failure", "trial_metrics"]


def trial_metrics(hw: HardwareMetrics) -> dict[str, float]:
    """The hardware metrics a trial records (and may optimise), in their table units."""
    return {
        "latency_ms": hw.latency_ms,
        "energy_mj": hw.energy_mj,
        "size_kb": hw.size_bytes / 1024,
        "peak_mem_kb": hw.peak_mem_bytes / 1024,
    }


def describe_failure(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"


@dataclass(frozen=True)
class Priced:
    """A suggested candidate, built and priced on the hardware profile (not trained yet)."""

    candidate: Candidate
    model: nn.Module | None  # None: over budget, and not built where it is not trained
    metrics: dict[str, float]  # trial_metrics and the parameter count
    feasible: bool
    skipped: str | None = None  # why search.prescreen skips it untrained, if it does


@dataclass(frozen=True)
class TrialOutcome:
    values: list[float]  # one per objective, in config order; empty when stopped
    attrs: dict[str, Any]  # user attributes recorded on the trial
    stopped: bool = False  # stopped early by search.early_stopping: recorded as PRUNED

    def check_finite(self) -> None:
        # An untrained trial's placeholder score may be infinite (a minimised primary metric).
        if self.attrs.get("trained") and not all(math.isfinite(v) for v in self.values):
            raise CandidateError(f"non-finite objective values {self.values}")


class TrialObjective:
    """Callable run by ``study.optimize`` for each trial (thread-safe: no per-trial state).
    (Not to be confused with ``core.Objective``, a metric and its direction.)

    A trial is two steps that the Ray backend runs in different processes: ``price`` (suggest,
    build, hardware cost, budget constraints; cheap, in the process that owns the study) and
    ``train`` (QAT + distillation when within budget, save the model; wherever there is room).
    """

    def __init__(self, setup: SearchSetup) -> None:
        self.setup = setup
        self.config = setup.config
        self.objectives = setup.config.objectives()
        self.task = setup.config.make_task()
        self.score = self.task.score  # the primary metric: what an untrained trial lacks
        self.limits = setup.config.hardware.budget.limits()
        self._keys: dict[int, str] = {}  # trial number -> its candidate's JSON
        self._callbacks: list[Callable[[optuna.Study, FrozenTrial], None]] | None = None
        self._callbacks_lock = threading.Lock()
        self.prescreener: Prescreener | None = None
        if self.config.search.prescreen.enabled and self.config.score_objective() is not None:
            self.prescreener = Prescreener(
                self.config.search.prescreen,
                objectives=self.objectives,
                num_classes=setup.data.num_classes,
                input_shape=setup.data.input_shape,
                seed=self.config.seed,
                score=self.score,
                score_range=self.task.range_of(self.score.name),
            )

    def __call__(self, trial: optuna.Trial) -> list[float]:
        start = time.perf_counter()
        try:
            priced = self.price(trial)
            if priced.skipped is not None:
                trial.set_user_attr("duration_s", time.perf_counter() - start)
                raise optuna.TrialPruned(priced.skipped)
            outcome = self.train(trial.number, priced)
            with one_transaction(trial):
                for key, value in outcome.attrs.items():
                    trial.set_user_attr(key, value)
                trial.set_user_attr("duration_s", time.perf_counter() - start)
            if outcome.stopped:
                raise optuna.TrialPruned(outcome.attrs["pruned_reason"])
            outcome.check_finite()
            return outcome.values
        except optuna.TrialPruned:
            raise
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)
            trial.set_user_attr("fail_reason", "interrupted by the user")
            raise
        except Exception as err:
            # Recorded as a failed trial with its reason; study.optimize(catch=...) goes on.
            trial.set_user_attr("fail_reason", describe_failure(err))
            raise

    def build(self, candidate: Candidate) -> nn.Module:
        data = self.setup.data
        try:
            return build_compressed(
                candidate,
                num_classes=data.num_classes,
                input_shape=data.input_shape,
                teacher_state=self.setup.teacher_state,
                pruning_importance=self.config.space.pruning_importance,
                pruning_scores=self.setup.pruning_scores,
            )
        except ValueError as err:
            raise CandidateError(f"invalid compression plan: {err}") from err

    def price(self, trial: optuna.Trial) -> Priced:
        """Suggest a candidate and record its hardware cost and budget constraints on ``trial``.

        Runs before any training: a candidate over budget is never trained, and the samplers
        see the constraints of every trial as soon as it is suggested. A candidate that an
        earlier trial of the run already evaluated (or is evaluating) is skipped, not trained
        again: the sampler draws another one (explicit retries of interrupted trials excepted)."""
        # Written before the duplicate check, so that concurrent trials see this candidate.
        with one_transaction(trial):
            candidate = self.setup.space.suggest(trial)
            trial.set_user_attr("candidate", candidate.to_dict())
        repeated = self.repeated_trial(trial, candidate)
        if repeated is not None:
            reason = f"duplicate of trial {repeated}"
            with one_transaction(trial):
                trial.set_user_attr(DUPLICATE_ATTR, repeated)
                trial.set_user_attr("pruned_reason", reason)
            return Priced(
                candidate=candidate, model=None, metrics={}, feasible=False, skipped=reason
            )
        model = self.build(candidate)
        metrics, violations = self._costs(model)
        feasible = all(v <= 0 for v in violations.values())
        with one_transaction(trial):
            for key, value in metrics.items():
                trial.set_user_attr(key, value)
            for key, value in violations.items():
                trial.set_constraint(key, value)
            trial.set_user_attr("feasible", feasible)
        skipped = None
        if feasible and self.prescreener is not None:
            skipped = self.prescreener.skip_reason(trial.study, candidate, self.costs(metrics))
            if skipped is not None:
                trial.set_user_attr(SKIPPED_ATTR, skipped)
                trial.set_user_attr("pruned_reason", f"skipped: {skipped}")
        return Priced(
            candidate=candidate, model=model, metrics=metrics, feasible=feasible, skipped=skipped
        )

    def repeated_trial(self, trial: optuna.Trial, candidate: Candidate) -> int | None:
        """The number of an earlier trial of the study with the same candidate that was (or is
        being) evaluated, or None. Trials that evaluated nothing (skipped, or cut off and queued
        again) do not count, and a queued retry is never a repeat."""
        if RETRY_ATTR in trial.user_attrs:
            return None
        key = candidate.to_json()
        trials = trial.study.get_trials(deepcopy=False)
        retried = retried_trials(trials)
        for other in trials:
            evaluated = other.state in (TrialState.COMPLETE, TrialState.RUNNING) or (
                other.state == TrialState.PRUNED and STOPPED_ATTR in other.user_attrs
            )
            evaluated |= other.state == TrialState.FAIL and other.number not in retried
            # Of two trials running the same candidate at once, the later one is the repeat
            # (else each would skip itself as the other's repeat, and neither count).
            later = other.state == TrialState.RUNNING and other.number > trial.number
            if other.number == trial.number or not evaluated or later:
                continue
            if self._candidate_key(other) == key:
                return other.number
        return None

    def _candidate_key(self, trial: FrozenTrial) -> str | None:
        # Cached: a trial's candidate never changes, and every suggestion scans the study.
        key = self._keys.get(trial.number)
        if key is None and "candidate" in trial.user_attrs:
            key = Candidate.from_dict(trial.user_attrs["candidate"]).to_json()
            self._keys[trial.number] = key
        return key

    def _costs(self, model: nn.Module) -> tuple[dict[str, float], dict[str, float]]:
        """Hardware metrics and parameter count of a built candidate, and its budget violations
        (> 0: over)."""
        profiled = self.setup.profile.profile(model, input_shape=self.setup.data.input_shape)
        metrics = {**trial_metrics(profiled), "params": count_parameters(model)}
        violations = {f"max_{name}": metrics[name] - limit for name, limit in self.limits.items()}
        return metrics, violations

    def price_candidate(self, candidate: Candidate) -> tuple[dict[str, float], bool]:
        """Hardware metrics of ``candidate`` and whether it is within budget (no trial)."""
        metrics, violations = self._costs(self.build(candidate))
        return metrics, all(v <= 0 for v in violations.values())

    def costs(self, metrics: dict[str, float]) -> dict[str, float]:
        """The hardware objectives of a priced trial as costs to minimise, by name."""
        return cost_vector(metrics, self.objectives, score=self.score.name)

    def proxy_score(
        self, candidate: Candidate, *, calib_batches: int = 4, val_batches: int = 16
    ) -> float:
        """Zero-shot validation score (primary metric) of ``candidate``: built from the
        teacher's weights, compressed, BatchNorm statistics recalibrated on a few training
        batches, not trained, scored on the first ``val_batches`` validation batches (the
        surrogate scores whole pools: a full pass over a large validation split each would rival
        the trials' cost)."""
        model = self.build(candidate)
        evaluator = self.setup.evaluator
        train_loader, val_loader = make_loaders(
            self.setup.data,
            batch_size=self.config.train.batch_size or self.config.data.batch_size,
            num_workers=0,
            seed=self.config.seed,
        )
        device = getattr(evaluator, "device", torch.device("cpu"))
        recalibrate_bn_(model, train_loader, batches=calib_batches, device=device, task=self.task)
        scored = self.task.evaluate(model, islice(val_loader, val_batches), device=device)
        return scored[self.task.primary]

    def callbacks(self) -> list[Callable[[optuna.Study, FrozenTrial], None]]:
        """``study.optimize`` callbacks the run's config asks for (``search.surrogate``), to
        call after each finished trial. Built once per objective: the Ray driver asks for them
        after every trial, and the surrogate's pool must persist between proposals."""
        with self._callbacks_lock:
            if self._callbacks is None:
                self._callbacks = self._make_callbacks()
        return list(self._callbacks)

    def _make_callbacks(self) -> list[Callable[[optuna.Study, FrozenTrial], None]]:
        score = self.config.score_objective()  # what the predictor learns
        if not self.config.search.surrogate.enabled or score is None:
            return []
        return [
            Proposer(
                self.config.search.surrogate,
                space=self.setup.space,
                objectives=self.objectives,
                price=self.price_candidate,
                budget_left=self._budget_left,
                proxy=self.proxy_score if self.config.search.surrogate.proxy else None,
                seed=self.config.seed,
                score=score,
                score_range=self.task.range_of(score.name),
            )
        ]

    def _budget_left(self, trials: Sequence[FrozenTrial]) -> bool:
        # Running trials will count too (unless skipped): a proposal queued when they fill the
        # budget would never be taken and would sit in the study as WAITING.
        running = sum(t.state == TrialState.RUNNING for t in trials)
        return count_done(trials) + running < self.config.search.n_trials

    def train(self, number: int, priced: Priced) -> TrialOutcome:
        """Fine-tune a priced candidate if it is within budget; its objective values and the
        attributes to record on the trial (the caller records them)."""
        metrics = dict(priced.metrics)
        attrs: dict[str, Any] = {}
        if priced.feasible:
            trial_dir = self.setup.run_dir.trial_dir(number)
            _write_worker_file(self.setup.run_dir.worker_file(number))
            context = TrialContext(number=number, costs=self.costs(metrics))
            try:
                task = self.setup.evaluator.evaluate_trial(
                    priced.model, priced.candidate, context=context
                )
            except CandidateStopped as stop:
                attrs = {
                    "trained": True,
                    STOPPED_ATTR: stop.epochs,
                    "stopped_rung": stop.rung,
                    f"rung_{stop.metric}": stop.value,
                    "pruned_reason": str(stop),
                }
                return TrialOutcome(values=[], attrs=attrs, stopped=True)
            measured = dict(task.metrics)
            if self.score.name not in measured:
                raise CandidateError(
                    f"the evaluator returned {sorted(measured)}, not the task's primary metric "
                    f"{self.score.name!r}"
                )
            metrics.update(measured)
            attrs.update(measured, val_loss=task.loss)
            if set(measured) != {"accuracy"}:  # other tasks name their metrics for the table
                attrs[TASK_METRICS_ATTR] = list(measured)
            attrs["train_seconds"] = task.train_seconds
            if task.kept_ptq:  # the fine-tune ended worse than post-training quantization
                attrs["kept_ptq"] = True
            if self.config.search.save_models:
                save_model(
                    trial_dir,
                    priced.model,
                    candidate=priced.candidate,
                    num_classes=self.setup.data.num_classes,
                    input_shape=self.setup.data.input_shape,
                    metrics={**metrics, "trial": number},
                )
        else:
            # Untrained: a placeholder score (accuracy 0) completes the objective vector; the
            # trial is marked infeasible and never enters the Pareto front.
            metrics[self.score.name] = self.task.worst()
        attrs["trained"] = priced.feasible
        return TrialOutcome(values=[metrics[o.name] for o in self.objectives], attrs=attrs)


def _write_worker_file(path: Path) -> None:
    """Which process trains this trial: lets an operator (or a test) find a trial's process."""
    path.parent.mkdir(parents=True, exist_ok=True)
    info = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}
    write_text_atomic(path, json.dumps(info))
