"""The Optuna backend: ask a candidate, price it on hardware, train it if it fits, tell the result.

A run lives in one folder (``runs/<name>/``): the resolved config, the SQLite study, the cached
teacher, one saved model per trained trial, and the result tables and plots. Re-running the same
command resumes: completed and failed trials are kept, trials cut off by a crash are retried.

The setup (``prepare_setup``) and the trial (``Objective``: ``price`` then ``train``) defined
here are shared by the three ways of running trials: this process (``run_search``), workers
sharing a study (``worker.run_worker``) and a Ray cluster (``ray_backend``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import torch
from optuna.trial import FrozenTrial, TrialState
from torch import nn

from ..compression.apply import build_compressed
from ..config import ConfigError, RunConfig, dump_config
from ..evaluators import CandidateError
from ..evaluators._base import CandidateStopped, Evaluator, TrialContext
from ..evaluators.data import DataBundle, load_data, make_loaders
from ..evaluators.early_stopping import (
    RETRY_ATTR,
    EarlyStoppingTrainEvaluator,
    InMemoryRungStore,
    OptunaRungStore,
    RungTable,
    retried_trials,
    rung_schedule,
)
from ..evaluators.supernet import recalibrate_bn_
from ..evaluators.train import TrainEvaluator, evaluate_accuracy, resolve_device
from ..export.artifacts import save_model
from ..hardware_profiles import HardwareMetrics, HardwareProfile, create_hardware_profile
from ..spaces import Candidate, JointSearchSpace
from .locks import file_lock, write_text_atomic
from .prescreen import SKIPPED_ATTR, Prescreener, cost_vector
from .results import trials_dataframe, write_results
from .storage import STUDY_FILE, default_storage_url, make_storage, redact
from .surrogate import Proposer
from .teacher import get_teacher

logger = logging.getLogger(__name__)

__all__ = ["STUDY_FILE", "Objective", "SearchResult", "SearchSetup", "open_study", "run_search"]

STOPPED_ATTR = "stopped_epochs"  # user attribute of a trial stopped early: its epochs trained
LOCK_FILE = "search.lock"
TEACHER_LOCK = "teacher.lock"
RESULTS_LOCK = "results.lock"
WORKER_FILE = "worker.json"


@dataclass(frozen=True)
class SearchResult:
    run_dir: Path
    study: optuna.Study
    trials: pd.DataFrame
    front: pd.DataFrame
    teacher_metrics: dict


def hardware_metrics_dict(hw: HardwareMetrics) -> dict[str, float]:
    return {
        "latency_ms": hw.latency_ms,
        "energy_mj": hw.energy_mj,
        "size_kb": hw.size_bytes / 1024,
        "peak_mem_kb": hw.peak_mem_bytes / 1024,
    }


def make_sampler(config: RunConfig, *, seed: int | None = None) -> optuna.samplers.BaseSampler:
    """The sampler of ``search.sampler``, seeded with ``seed`` (default: the config's seed)."""
    # Budget violations are stored on each trial with ``Trial.set_constraint``; the NSGA-II and
    # TPE samplers read them and rank infeasible trials below every feasible one.
    search = config.search
    seed = config.seed if seed is None else seed
    if search.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=search.population_size, seed=seed)
    if search.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=search.population_size)
    return optuna.samplers.RandomSampler(seed=seed)


def make_hardware_profile(config: RunConfig):
    hw = config.hardware
    try:
        if hw.profile == "analytic":
            return create_hardware_profile("analytic", device=hw.device, **hw.options)
        return create_hardware_profile(hw.profile, **hw.options)
    except (TypeError, ValueError, FileNotFoundError) as err:
        raise ConfigError(f"hardware: {err}") from None


class _RunLock:
    """One search process per run folder: a second one would retry the first one's live trials."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> _RunLock:
        if self.path.exists():
            pid = int(self.path.read_text().strip() or 0)
            if pid and pid != os.getpid() and _alive(pid):
                raise RuntimeError(
                    f"Another search (pid {pid}) is running in {self.path.parent}. "
                    "Wait for it or stop it, or use another run name."
                )
        self.path.write_text(str(os.getpid()))
        return self

    def __exit__(self, *exc) -> None:
        self.path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _retry_interrupted(
    study: optuna.Study, storage: optuna.storages.BaseStorage, *, running: bool = True
) -> int:
    """Trials left RUNNING by a dead process, or stopped by Ctrl-C, are failed with that reason
    and their parameters queued again, so the resumed search evaluates them once more.

    ``running=False`` leaves RUNNING trials alone: with workers sharing a study they may be
    live in another process (heartbeats find the dead ones there)."""
    trials = study.get_trials(deepcopy=False)
    already_retried = retried_trials(trials)
    retried = 0
    for trial in trials:
        stale = running and trial.state == TrialState.RUNNING
        stopped = trial.state == TrialState.FAIL and trial.user_attrs.get("interrupted")
        if not (stale or stopped) or trial.number in already_retried:
            continue
        if stale:
            storage.set_trial_user_attr(trial._trial_id, "interrupted", True)
            storage.set_trial_user_attr(
                trial._trial_id, "fail_reason", "interrupted: the search process stopped"
            )
            storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs={RETRY_ATTR: trial.number})
        retried += 1
    return retried


def _counted(trial: FrozenTrial, retried: frozenset[int] | set[int] = frozenset()) -> bool:
    """Trials that use up the budget of n_trials: finished, and not cut off by an interruption
    or by the death of their worker (``retried``: numbers of trials queued again). A trial
    stopped early by ``search.early_stopping`` counts (it was trained); one skipped by
    ``search.prescreen`` does not."""
    if trial.state == TrialState.COMPLETE:
        return True
    if trial.state == TrialState.PRUNED:
        return STOPPED_ATTR in trial.user_attrs
    return (
        trial.state == TrialState.FAIL
        and not trial.user_attrs.get("interrupted")
        and trial.number not in retried
    )


def count_done(trials: Iterable[FrozenTrial]) -> int:
    """How many of ``trials`` count towards ``search.n_trials`` (see ``_counted``)."""
    trials = list(trials)
    retried = retried_trials(trials)
    return sum(_counted(t, retried) for t in trials)


def describe_failure(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"


@dataclass(frozen=True)
class SearchSetup:
    """Everything a trial needs, built once per process: by the single-process search, by each
    ``autocompress worker`` and by each Ray worker (and the Ray driver, which prices trials)."""

    config: RunConfig
    run_dir: Path
    data: DataBundle
    space: JointSearchSpace
    profile: HardwareProfile
    evaluator: Evaluator
    teacher_state: dict = field(repr=False)
    teacher_metrics: dict


def make_evaluator(
    config: RunConfig,
    *,
    data: DataBundle,
    device: Any,
    teacher: nn.Module | None,
    study: optuna.Study | None = None,
) -> Evaluator:
    """The evaluator of a run's trials: QAT + distillation as ``train`` describes, with
    multi-objective early stopping when ``search.early_stopping`` is on and ``train.epochs``
    leaves room for a rung. Rung records live in ``study`` (shared by every process on its
    storage, kept across resumes), else in this process's memory."""
    stopping = config.search.early_stopping
    rungs = rung_schedule(
        max_epochs=max(config.train.epochs, 1), min_epochs=stopping.min_epochs, eta=stopping.eta
    )
    judged = "accuracy" in {o.name for o in config.objectives()}  # what rungs compare
    if not stopping.enabled or not rungs or not judged:
        return TrainEvaluator.from_run_config(config, data=data, device=device, teacher=teacher)
    table = RungTable(
        rungs=rungs,
        eta=stopping.eta,
        min_dominators=stopping.min_dominators,
        min_records=stopping.min_records,
        store=InMemoryRungStore() if study is None else OptunaRungStore(study),
    )
    cost_names = [o.name for o in config.objectives() if o.name != "accuracy"]
    return EarlyStoppingTrainEvaluator.from_run_config(
        config, data=data, device=device, teacher=teacher, table=table, cost_names=cost_names
    )


def prepare_setup(
    config: RunConfig, run_dir: Path, *, study: optuna.Study | None = None
) -> SearchSetup:
    """Load the data, build the space and the hardware profile, and train or load the teacher.
    ``study``: the run's study, where early stopping keeps its rung records (see
    :func:`make_evaluator`)."""
    device = resolve_device(config.train.device)
    data = load_data(config.data, seed=config.seed)
    space = JointSearchSpace(
        config.space, num_classes=data.num_classes, input_shape=data.input_shape
    )
    profile = make_hardware_profile(config)
    # Processes sharing the run folder train the teacher once: the first one takes the lock and
    # trains it, the others wait for the lock and then load the cached teacher.
    with file_lock(
        run_dir / TEACHER_LOCK, waiting="Waiting for another process to train the teacher..."
    ):
        teacher, teacher_metrics = get_teacher(
            config, space=space, data=data, directory=run_dir / "teacher", device=device
        )
    evaluator = make_evaluator(config, data=data, device=device, teacher=teacher, study=study)
    return SearchSetup(
        config=config,
        run_dir=run_dir,
        data=data,
        space=space,
        profile=profile,
        evaluator=evaluator,
        teacher_state=teacher.state_dict(),
        teacher_metrics=teacher_metrics,
    )


@dataclass(frozen=True)
class Priced:
    """A suggested candidate, built and priced on the hardware profile (not trained yet)."""

    candidate: Candidate
    model: nn.Module | None  # None: over budget, and not built where it is not trained
    metrics: dict[str, float]  # hardware metrics, see hardware_metrics_dict
    feasible: bool
    skipped: str | None = None  # why search.prescreen skips it untrained, if it does


@dataclass(frozen=True)
class TrialOutcome:
    values: list[float]  # one per objective, in config order; empty when stopped
    attrs: dict[str, Any]  # user attributes recorded on the trial
    stopped: bool = False  # stopped early by search.early_stopping: recorded as PRUNED

    def check_finite(self) -> None:
        if not all(math.isfinite(v) for v in self.values):
            raise CandidateError(f"non-finite objective values {self.values}")


class Objective:
    """Callable run by ``study.optimize`` for each trial (thread-safe: no per-trial state).

    A trial is two steps that the Ray backend runs in different processes: ``price`` (suggest,
    build, hardware cost, budget constraints; cheap, in the process that owns the study) and
    ``train`` (QAT + distillation when within budget, save the model; wherever there is room).
    """

    def __init__(self, setup: SearchSetup) -> None:
        self.setup = setup
        self.config = setup.config
        self.objectives = setup.config.objectives()
        self.limits = setup.config.hardware.budget.limits()
        self.prescreener: Prescreener | None = None
        if self.config.search.prescreen.enabled:
            self.prescreener = Prescreener(
                self.config.search.prescreen,
                objectives=self.objectives,
                num_classes=setup.data.num_classes,
                input_shape=setup.data.input_shape,
                seed=self.config.seed,
            )

    def __call__(self, trial: optuna.Trial) -> list[float]:
        start = time.perf_counter()
        try:
            priced = self.price(trial)
            if priced.skipped is not None:
                trial.set_user_attr("duration_s", time.perf_counter() - start)
                raise optuna.TrialPruned(priced.skipped)
            outcome = self.train(trial.number, priced)
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
            )
        except ValueError as err:
            raise CandidateError(f"invalid compression plan: {err}") from err

    def price(self, trial: optuna.Trial) -> Priced:
        """Suggest a candidate and record its hardware cost and budget constraints on ``trial``.

        Runs before any training: a candidate over budget is never trained, and the samplers
        see the constraints of every trial as soon as it is suggested."""
        candidate = self.setup.space.suggest(trial)
        trial.set_user_attr("candidate", candidate.to_dict())
        model = self.build(candidate)
        metrics, violations = self._costs(model)
        feasible = all(v <= 0 for v in violations.values())
        for key, value in metrics.items():
            trial.set_user_attr(key, value)
        for key, value in violations.items():
            trial.set_constraint(key, value)
        trial.set_user_attr("feasible", feasible)
        trial.set_user_attr("params", sum(p.numel() for p in model.parameters()))
        skipped = None
        if feasible and self.prescreener is not None:
            skipped = self.prescreener.skip_reason(
                trial.study, candidate, cost_vector(metrics, self.objectives)
            )
            if skipped is not None:
                trial.set_user_attr(SKIPPED_ATTR, skipped)
                trial.set_user_attr("pruned_reason", f"skipped: {skipped}")
        return Priced(
            candidate=candidate, model=model, metrics=metrics, feasible=feasible, skipped=skipped
        )

    def _costs(self, model: nn.Module) -> tuple[dict[str, float], dict[str, float]]:
        """Hardware metrics of a built candidate and its budget violations (> 0: over)."""
        profiled = self.setup.profile.profile(model, input_shape=self.setup.data.input_shape)
        metrics = hardware_metrics_dict(profiled)
        violations = {f"max_{name}": metrics[name] - limit for name, limit in self.limits.items()}
        return metrics, violations

    def price_candidate(self, candidate: Candidate) -> tuple[dict[str, float], bool]:
        """Hardware metrics of ``candidate`` and whether it is within budget (no trial)."""
        metrics, violations = self._costs(self.build(candidate))
        return metrics, all(v <= 0 for v in violations.values())

    def proxy_accuracy(
        self, candidate: Candidate, *, calib_batches: int = 4, val_batches: int = 16
    ) -> float:
        """Zero-shot validation accuracy of ``candidate``: built from the teacher's weights,
        compressed, BatchNorm statistics recalibrated on a few training batches, not trained,
        scored on the first ``val_batches`` validation batches (the surrogate scores whole
        pools: a full pass over a large validation split each would rival the trials' cost)."""
        model = self.build(candidate)
        evaluator = self.setup.evaluator
        train_loader, val_loader = make_loaders(
            self.setup.data,
            batch_size=self.config.train.batch_size or self.config.data.batch_size,
            num_workers=0,
            seed=self.config.seed,
        )
        device = getattr(evaluator, "device", torch.device("cpu"))
        recalibrate_bn_(model, train_loader, batches=calib_batches, device=device)
        return evaluate_accuracy(model, islice(val_loader, val_batches), device=device)[0]

    def callbacks(self) -> list[Callable[[optuna.Study, FrozenTrial], None]]:
        """``study.optimize`` callbacks the run's config asks for (``search.surrogate``)."""
        judged = "accuracy" in {o.name for o in self.objectives}  # what the predictor learns
        if not self.config.search.surrogate.enabled or not judged:
            return []
        return [
            Proposer(
                self.config.search.surrogate,
                space=self.setup.space,
                objectives=self.objectives,
                price=self.price_candidate,
                budget_left=lambda trials: count_done(trials) < self.config.search.n_trials,
                proxy=self.proxy_accuracy if self.config.search.surrogate.proxy else None,
                seed=self.config.seed,
            )
        ]

    def train(self, number: int, priced: Priced) -> TrialOutcome:
        """Fine-tune a priced candidate if it is within budget; its objective values and the
        attributes to record on the trial (the caller records them)."""
        metrics = dict(priced.metrics)
        attrs: dict[str, Any] = {}
        if priced.feasible:
            trial_dir = self.setup.run_dir / "trials" / str(number)
            _write_worker_file(trial_dir)
            context = TrialContext(number=number, costs=cost_vector(metrics, self.objectives))
            try:
                task = self.setup.evaluator.evaluate_trial(
                    priced.model, priced.candidate, context=context
                )
            except CandidateStopped as stop:
                attrs = {
                    "trained": True,
                    STOPPED_ATTR: stop.epochs,
                    "stopped_rung": stop.rung,
                    "rung_accuracy": stop.accuracy,
                    "pruned_reason": str(stop),
                }
                return TrialOutcome(values=[], attrs=attrs, stopped=True)
            metrics["accuracy"] = task.accuracy
            attrs.update(accuracy=task.accuracy, val_loss=task.loss)
            attrs["train_seconds"] = task.train_seconds
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
            # Untrained: accuracy is reported as 0 so that the objective vector is complete;
            # the trial is marked infeasible and never enters the Pareto front.
            metrics["accuracy"] = 0.0
        attrs["trained"] = priced.feasible
        return TrialOutcome(values=[metrics[o.name] for o in self.objectives], attrs=attrs)


def _write_worker_file(trial_dir: Path) -> None:
    """Which process trains this trial: lets an operator (or a test) find a trial's process."""
    trial_dir.mkdir(parents=True, exist_ok=True)
    info = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}
    write_text_atomic(trial_dir / WORKER_FILE, json.dumps(info))


def open_study(
    config: RunConfig,
    run_dir: Path,
    *,
    storage: optuna.storages.BaseStorage | None = None,
    where: str | None = None,
    sampler: optuna.samplers.BaseSampler | None = None,
) -> tuple[optuna.Study, optuna.storages.BaseStorage]:
    """Create or load the run's study (in ``storage``; by default ``search.storage`` or the run
    folder's study.db) and check that it was made by the same config. ``where`` names the
    storage in error messages; ``sampler`` defaults to ``make_sampler(config)``."""
    url = config.search.storage or default_storage_url(run_dir)
    if storage is None:
        storage = make_storage(url)
    if where is None:
        where = (
            f"The run folder {run_dir}"
            if config.search.storage is None
            else f"The study {config.name!r} in {redact(url)}"
        )
    directions = [o.direction for o in config.objectives()]
    study = optuna.create_study(
        study_name=config.name,
        storage=storage,
        directions=directions,
        sampler=sampler or make_sampler(config),
        load_if_exists=True,
    )
    if study.directions and [d.name.lower() for d in study.directions] != directions:
        raise ConfigError(
            f"{where} holds a study with objectives {study.user_attrs.get('objectives')}; this "
            f"config asks for {config.search.objectives}. Use another 'name' or delete it."
        )
    saved = study.user_attrs.get("fingerprint")
    if saved is None:
        study.set_user_attr("fingerprint", config.fingerprint())
        study.set_user_attr("objectives", config.search.objectives)
    elif saved != config.fingerprint():
        raise ConfigError(
            f"{where} was created by a different config (only search.n_trials, search.n_jobs, "
            "search.timeout_s, search.save_models and where trials run - search.backend, "
            "storage, ray, worker - may change on resume). Use another 'name' or delete it."
        )
    return study, storage


def write_run_results(
    study: optuna.Study, run_dir: Path, config: RunConfig
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write the tables and plots of the study into the run folder; returns (trials, front).

    One writer at a time: several workers sharing the folder may finish together."""
    with file_lock(run_dir / RESULTS_LOCK):
        trials = trials_dataframe(study)
        front = write_results(trials, run_dir, config.objectives())
    return trials, front


def write_config(config: RunConfig, run_dir: Path) -> None:
    write_text_atomic(run_dir / "config.yaml", dump_config(config))


def _ray_backend():
    try:
        from . import ray_backend
    except ModuleNotFoundError as err:
        if (err.name or "").split(".")[0] != "ray":
            raise
        raise ImportError(
            "The Ray backend (search.backend: ray, --backend ray) needs Ray Tune: "
            "pip install autocompress[ray]"
        ) from None
    return ray_backend


def _optimize_until_done(
    study: optuna.Study, objective: Objective, config: RunConfig, *, callbacks: list
) -> None:
    """``study.optimize`` until ``search.n_trials`` trials count (see ``_counted``) or
    ``search.timeout_s`` runs out: trials skipped by the prescreen do not count, so one pass of
    ``n_trials=remaining`` may leave some to run. Each pass asks for exactly the trials still
    missing, so ``--n-jobs`` threads never overshoot the budget."""
    timeout = config.search.timeout_s
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        remaining = config.search.n_trials - count_done(study.get_trials(deepcopy=False))
        left = None if deadline is None else deadline - time.monotonic()
        if remaining <= 0 or (left is not None and left <= 0):
            return
        study.optimize(
            objective,
            n_trials=remaining,
            n_jobs=config.search.n_jobs,
            timeout=left,
            catch=(Exception,),
            callbacks=callbacks,
        )


def run_search(
    config: RunConfig,
    *,
    runs_dir: Path = Path("runs"),
    on_trial: Callable[[optuna.Study, FrozenTrial, int], None] | None = None,
) -> SearchResult:
    """Run (or resume) the search described by ``config``; writes the result files.

    ``search.backend: optuna`` evaluates trials in this process (``search.n_jobs`` threads);
    ``ray`` spreads them over a Ray cluster. For workers sharing a study see ``run_worker``."""
    run_dir = runs_dir / config.name
    run_dir.mkdir(parents=True, exist_ok=True)
    with _RunLock(run_dir / LOCK_FILE):
        write_config(config, run_dir)
        if config.search.backend == "ray":
            return _ray_backend().run_ray_search(config, run_dir=run_dir, on_trial=on_trial)

        study, storage = open_study(config, run_dir)
        retried = _retry_interrupted(study, storage)
        if retried:
            logger.info("Retrying %d trial(s) interrupted in an earlier run.", retried)
        setup = prepare_setup(config, run_dir, study=study)
        objective = Objective(setup)
        callbacks = objective.callbacks()
        if on_trial:
            callbacks.append(lambda s, t: on_trial(s, t, config.search.n_trials))
        try:
            _optimize_until_done(study, objective, config, callbacks=callbacks)
        finally:
            # Also after Ctrl-C: the tables and plots then show what was finished so far.
            trials, front = write_run_results(study, run_dir, config)
    return SearchResult(
        run_dir=run_dir,
        study=study,
        trials=trials,
        front=front,
        teacher_metrics=setup.teacher_metrics,
    )
