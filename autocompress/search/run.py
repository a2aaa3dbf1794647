"""The Optuna backend: ask a candidate, price it on hardware, train it if it fits, tell the result.

A run lives in one folder (``runs/<name>/``): the resolved config, the SQLite study, the cached
teacher, one saved model per trained trial, and the result tables and plots. Re-running the same
command resumes: completed and failed trials are kept, trials cut off by a crash are retried.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from ..compression.apply import build_compressed
from ..config import ConfigError, RunConfig, dump_config
from ..evaluators import CandidateError
from ..evaluators.data import load_data
from ..evaluators.train import TrainEvaluator, resolve_device
from ..export.artifacts import save_model
from ..hardware_profiles import HardwareMetrics, create_hardware_profile
from ..spaces import JointSearchSpace
from .results import trials_dataframe, write_results
from .teacher import get_teacher

logger = logging.getLogger(__name__)

STUDY_FILE = "study.db"
LOCK_FILE = "search.lock"


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


def make_sampler(config: RunConfig) -> optuna.samplers.BaseSampler:
    # Budget violations are stored on each trial with ``Trial.set_constraint``; the NSGA-II and
    # TPE samplers read them and rank infeasible trials below every feasible one.
    search, seed = config.search, config.seed
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
        return create_hardware_profile("measured", **hw.options)
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


def _retry_interrupted(study: optuna.Study, storage: optuna.storages.BaseStorage) -> int:
    """Trials left RUNNING by a dead process, or stopped by Ctrl-C, are failed with that reason
    and their parameters queued again, so the resumed search evaluates them once more."""
    trials = study.get_trials(deepcopy=False)
    already_retried = {t.user_attrs.get("retry_of") for t in trials}
    retried = 0
    for trial in trials:
        stale = trial.state == TrialState.RUNNING
        stopped = trial.state == TrialState.FAIL and trial.user_attrs.get("interrupted")
        if not (stale or stopped) or trial.number in already_retried:
            continue
        if stale:
            storage.set_trial_user_attr(trial._trial_id, "interrupted", True)
            storage.set_trial_user_attr(
                trial._trial_id, "fail_reason", "interrupted: the search process stopped"
            )
            storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
        retried += 1
    return retried


def _counted(trial: FrozenTrial) -> bool:
    """Trials that use up the budget of n_trials: finished, and not cut off by an interruption."""
    if trial.state == TrialState.COMPLETE:
        return True
    return trial.state == TrialState.FAIL and not trial.user_attrs.get("interrupted")


class Objective:
    """Callable run by ``study.optimize`` for each trial (thread-safe: no per-trial state)."""

    def __init__(
        self, config: RunConfig, *, space, profile, evaluator, teacher_state, data, run_dir: Path
    ) -> None:
        self.config = config
        self.space = space
        self.profile = profile
        self.evaluator = evaluator
        self.teacher_state = teacher_state
        self.data = data
        self.run_dir = run_dir
        self.objectives = config.objectives()
        self.limits = config.hardware.budget.limits()

    def __call__(self, trial: optuna.Trial) -> list[float]:
        try:
            return self._evaluate(trial)
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)
            trial.set_user_attr("fail_reason", "interrupted by the user")
            raise
        except Exception as err:
            # Recorded as a failed trial with its reason; study.optimize(catch=...) goes on.
            trial.set_user_attr("fail_reason", f"{type(err).__name__}: {err}")
            raise

    def _evaluate(self, trial: optuna.Trial) -> list[float]:
        start = time.perf_counter()
        candidate = self.space.suggest(trial)
        trial.set_user_attr("candidate", candidate.to_dict())
        try:
            model = build_compressed(
                candidate,
                num_classes=self.data.num_classes,
                input_shape=self.data.input_shape,
                teacher_state=self.teacher_state,
            )
        except ValueError as err:
            raise CandidateError(f"invalid compression plan: {err}") from err

        # Hardware cost first: it is cheap, and a candidate over budget is never trained.
        metrics = hardware_metrics_dict(
            self.profile.profile(model, input_shape=self.data.input_shape)
        )
        violations = {f"max_{name}": metrics[name] - limit for name, limit in self.limits.items()}
        feasible = all(v <= 0 for v in violations.values())
        for key, value in metrics.items():
            trial.set_user_attr(key, value)
        for key, value in violations.items():
            trial.set_constraint(key, value)
        trial.set_user_attr("feasible", feasible)
        trial.set_user_attr("params", sum(p.numel() for p in model.parameters()))

        if feasible:
            task = self.evaluator.evaluate(model, candidate)
            metrics["accuracy"] = task.accuracy
            trial.set_user_attr("accuracy", task.accuracy)
            trial.set_user_attr("val_loss", task.loss)
            trial.set_user_attr("train_seconds", task.train_seconds)
            if self.config.search.save_models:
                save_model(
                    self.run_dir / "trials" / str(trial.number),
                    model,
                    candidate=candidate,
                    num_classes=self.data.num_classes,
                    input_shape=self.data.input_shape,
                    metrics={**metrics, "trial": trial.number},
                )
        else:
            # Untrained: accuracy is reported as 0 so that the objective vector is complete;
            # the trial is marked infeasible and never enters the Pareto front.
            metrics["accuracy"] = 0.0
        trial.set_user_attr("trained", feasible)
        trial.set_user_attr("duration_s", time.perf_counter() - start)

        values = [metrics[o.name] for o in self.objectives]
        if not all(math.isfinite(v) for v in values):
            raise CandidateError(f"non-finite objective values {values}")
        return values


def open_study(config: RunConfig, run_dir: Path) -> tuple[optuna.Study, optuna.storages.RDBStorage]:
    storage = optuna.storages.RDBStorage(
        f"sqlite:///{run_dir / STUDY_FILE}",
        engine_kwargs={"connect_args": {"timeout": 60}},  # several --n-jobs threads write
    )
    directions = [o.direction for o in config.objectives()]
    study = optuna.create_study(
        study_name=config.name,
        storage=storage,
        directions=directions,
        sampler=make_sampler(config),
        load_if_exists=True,
    )
    if study.directions and [d.name.lower() for d in study.directions] != directions:
        raise ConfigError(
            f"The run folder {run_dir} holds a study with objectives "
            f"{study.user_attrs.get('objectives')}; this config asks for "
            f"{config.search.objectives}. Use another 'name' or delete the folder."
        )
    saved = study.user_attrs.get("fingerprint")
    if saved is None:
        study.set_user_attr("fingerprint", config.fingerprint())
        study.set_user_attr("objectives", config.search.objectives)
    elif saved != config.fingerprint():
        raise ConfigError(
            f"The run folder {run_dir} was created by a different config (only search.n_trials, "
            "search.n_jobs, search.timeout_s and search.save_models may change on resume). "
            "Use another 'name' or delete the folder."
        )
    return study, storage


def run_search(
    config: RunConfig,
    *,
    runs_dir: Path = Path("runs"),
    on_trial: Callable[[optuna.Study, FrozenTrial, int], None] | None = None,
) -> SearchResult:
    """Run (or resume) the search described by ``config``; writes the result files."""
    run_dir = runs_dir / config.name
    run_dir.mkdir(parents=True, exist_ok=True)
    with _RunLock(run_dir / LOCK_FILE):
        (run_dir / "config.yaml").write_text(dump_config(config))
        study, storage = open_study(config, run_dir)
        retried = _retry_interrupted(study, storage)
        if retried:
            logger.info("Retrying %d trial(s) interrupted in an earlier run.", retried)

        device = resolve_device(config.train.device)
        data = load_data(config.data, seed=config.seed)
        space = JointSearchSpace(
            config.space, num_classes=data.num_classes, input_shape=data.input_shape
        )
        profile = make_hardware_profile(config)
        teacher, teacher_metrics = get_teacher(
            config, space=space, data=data, directory=run_dir / "teacher", device=device
        )
        evaluator = TrainEvaluator(
            data=data,
            epochs=config.train.epochs,
            lr=config.train.lr,
            weight_decay=config.train.weight_decay,
            batch_size=config.train.batch_size or config.data.batch_size,
            num_workers=config.data.num_workers,
            kd_alpha=config.train.kd_alpha,
            kd_temperature=config.train.kd_temperature,
            device=device,
            teacher=teacher,
            seed=config.seed,
        )
        objective = Objective(
            config,
            space=space,
            profile=profile,
            evaluator=evaluator,
            teacher_state=teacher.state_dict(),
            data=data,
            run_dir=run_dir,
        )

        done = sum(_counted(t) for t in study.get_trials(deepcopy=False))
        remaining = config.search.n_trials - done
        try:
            if remaining > 0:
                callbacks = (
                    [lambda s, t: on_trial(s, t, config.search.n_trials)] if on_trial else []
                )
                study.optimize(
                    objective,
                    n_trials=remaining,
                    n_jobs=config.search.n_jobs,
                    timeout=config.search.timeout_s,
                    catch=(Exception,),
                    callbacks=callbacks,
                )
        finally:
            # Also after Ctrl-C: the tables and plots then show what was finished so far.
            trials = trials_dataframe(study)
            front = write_results(trials, run_dir, config.objectives())
    return SearchResult(
        run_dir=run_dir, study=study, trials=trials, front=front, teacher_metrics=teacher_metrics
    )
