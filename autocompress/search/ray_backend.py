"""The Ray Tune backend (``search.backend: ray``): the same search, its trials spread over a Ray
cluster. Imported only when that backend is chosen; needs ``pip install autocompress[ray]``.

Who does what:

* the driver (this process) owns the Optuna study, in the run folder's study.db (or
  ``search.storage``), so optuna-dashboard shows it as for the Optuna backend. Ray Tune's
  ``OptunaSearch`` asks the study for a trial and runs :class:`PricingSpace`, a define-by-run
  function that suggests the candidate with ``JointSearchSpace.suggest`` AND prices it on the
  hardware profile (cheap, and known at suggest time): the budget constraints are recorded at
  once, so NSGA-II ranks over-budget trials exactly as with the Optuna backend;
* a Ray worker trains the candidate (``Objective.train``, as everywhere) and reports;
* the driver records the result on the study trial (:class:`StudySearcher`) and, for a trial
  whose Ray worker died, queues it again (as an interrupted trial is) up to ``max_failures``
  times, then records the error (:class:`StudyCallback`);
* after each result the driver runs the callbacks the Optuna backend passes to
  ``study.optimize`` (``search.surrogate``): a proposal is queued in the study, and the next
  ``OptunaSearch`` ask takes it, as it takes ``search.warm_start``'s queued candidates.

Fault tolerance: a trial whose worker dies is failed as interrupted (it does not count) and its
candidate queued again in the study, which the next ask takes, in a new worker. A driver that
dies leaves a Tune experiment under ``<run>/ray/``; running the same command restores it
(``Tuner.restore``): finished trials are kept, unfinished ones run again. Two windows are
covered by the study, which is the source of truth: a trial that finished after Tune's last
experiment checkpoint is answered from its saved result (never retrained), and the trial budget
is counted on the study, so such a trial is not replaced by an extra one.

Multi-machine clusters: every node must be able to import autocompress and reach the run folder
(a shared disk: workers read the teacher and write trained models there).
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import pickle
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import ray
import torch
from optuna.trial import FrozenTrial, TrialState
from ray import cloudpickle, tune
from ray.tune.search import ConcurrencyLimiter, Searcher
from ray.tune.search.optuna import OptunaSearch

from ..config import RayConfig, RunConfig, import_plugins
from ..core.files import write_text_atomic
from ..core.rundir import RunDir
from ..core.trials import RETRY_ATTR, retry_depth
from ..spaces import Candidate
from .objective import Priced, TrialObjective, describe_failure
from .results import SearchResult, write_run_results
from .setup import prepare_setup
from .storage import make_storage, one_transaction
from .study import (
    REPEAT_LIMIT,
    count_done,
    fail_as_interrupted,
    open_study,
    repeat_streak,
    write_config,
)
from .warm_start import warm_start_

logger = logging.getLogger(__name__)

FINISHED_FILE = "finished"  # written into an experiment folder once Tuner.fit() completed it

# Keys of a Tune trial's config (besides the captured Optuna parameters) and of its result.
TRIAL_KEY = "optuna_trial"
CANDIDATE_KEY = "candidate"
HARDWARE_KEY = "hardware"
FEASIBLE_KEY = "feasible"
FAILED_KEY = "failed"
PRUNED_KEY = "pruned"  # skipped by the prescreen (driver) or stopped early (worker)
SKIPPED_KEY = "skipped"
ATTRS_KEY = "trial_attrs"

_OBJECTIVES: dict[tuple[str, str], TrialObjective] = {}
_OBJECTIVES_LOCK = threading.Lock()
# run folder -> the caller's per-trial callback; a module-level table rather than an attribute
# of the Tune callback, because Tune pickles its callbacks into the experiment (a console does
# not pickle) and a restored experiment must still print.
_ON_TRIAL: dict[str, Callable[[optuna.Study, FrozenTrial, int], None]] = {}


def shared_objective(config: RunConfig, run_dir: Path) -> TrialObjective:
    """The process's ``Objective`` for this run: the setup (data, teacher, profile) is built once
    per process, whether the driver (pricing) or a Ray worker (training) asks."""
    key = (str(run_dir), config.fingerprint())
    with _OBJECTIVES_LOCK:
        if key not in _OBJECTIVES:
            # A Ray worker receives the config, not the imports that made it valid.
            import_plugins(config.plugins)
            # Early stopping keeps its rung records in the study, which every process on the
            # cluster reaches through the run's storage (the run folder is shared).
            url = config.search.storage or RunDir(run_dir).study_url
            study = optuna.load_study(study_name=config.name, storage=make_storage(url))
            _OBJECTIVES[key] = TrialObjective(prepare_setup(config, run_dir, study=study))
        return _OBJECTIVES[key]


class PricingSpace:
    """OptunaSearch's define-by-run function: suggest a candidate and price it (in the driver).

    Returns the constants the trainable needs (trial number, candidate, hardware metrics); a
    candidate that cannot be built is handed on as failed, so the trainable records it."""

    def __init__(self, config: RunConfig, run_dir: Path) -> None:
        self.config = config
        self.run_dir = run_dir

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        objective = shared_objective(self.config, self.run_dir)
        try:
            priced = objective.price(trial)
        except Exception as err:
            trial.set_user_attr("fail_reason", describe_failure(err))
            return {TRIAL_KEY: trial.number, FAILED_KEY: describe_failure(err)}
        if priced.skipped is not None:
            return {TRIAL_KEY: trial.number, SKIPPED_KEY: priced.skipped}
        return {
            TRIAL_KEY: trial.number,
            CANDIDATE_KEY: priced.candidate.to_dict(),
            HARDWARE_KEY: priced.metrics,
            FEASIBLE_KEY: priced.feasible,
        }


def train_trial(params: dict[str, Any], *, config: RunConfig, run_dir: Path) -> dict[str, Any]:
    """Train the candidate priced by ``PricingSpace``; the result to report to Tune."""
    start = time.perf_counter()
    names = [o.name for o in config.objectives()]
    number = params[TRIAL_KEY]
    if FAILED_KEY in params:
        return _failed_result(names, params[FAILED_KEY])
    if SKIPPED_KEY in params:  # its attributes were recorded by the driver when pricing
        return {**dict.fromkeys(names, math.nan), ATTRS_KEY: {}, PRUNED_KEY: True}
    cached = RunDir(run_dir).ray_result_file(number)
    if cached.is_file():
        # Trained before the driver restarted: answer from the saved result, never retrain.
        return json.loads(cached.read_text())
    objective = shared_objective(config, run_dir)
    try:
        candidate = Candidate.from_dict(params[CANDIDATE_KEY])
        feasible = params[FEASIBLE_KEY]
        priced = Priced(
            candidate=candidate,
            model=objective.build(candidate) if feasible else None,
            metrics=params[HARDWARE_KEY],
            feasible=feasible,
        )
        outcome = objective.train(number, priced)
        attrs = {**outcome.attrs, "duration_s": time.perf_counter() - start}
        outcome.check_finite()
    except Exception as err:
        return _failed_result(names, describe_failure(err))
    if outcome.stopped:
        values = dict.fromkeys(names, math.nan)
        result = {**values, ATTRS_KEY: attrs, FAILED_KEY: False, PRUNED_KEY: True}
    else:
        values = dict(zip(names, outcome.values, strict=True))
        result = {**values, ATTRS_KEY: attrs, FAILED_KEY: False}
    if feasible:
        write_text_atomic(cached, json.dumps(result))
    return result


def _failed_result(names: list[str], reason: str) -> dict[str, Any]:
    # Every objective is reported (as NaN): Tune checks that the searcher's metrics are present.
    return {
        **dict.fromkeys(names, math.nan),
        ATTRS_KEY: {"fail_reason": reason},
        FAILED_KEY: True,
    }


def _ray_trial(params: dict[str, Any], config: RunConfig, run_dir: Path) -> None:
    """The Tune function trainable (runs in a Ray worker process)."""
    # Ray reserves cpus_per_trial cores for this trial; torch would otherwise use every core.
    torch.set_num_threads(max(1, int(config.search.ray.cpus_per_trial)))
    tune.report(train_trial(params, config=config, run_dir=run_dir))


class StudySearcher(OptunaSearch):
    """``OptunaSearch`` that records our trials' outcome on the study and counts the trial budget
    on the study itself (see the module docstring)."""

    def __init__(self, space: PricingSpace, *, n_trials: int, **kwargs: Any) -> None:
        super().__init__(space, **kwargs)
        self._pricing = space
        self._n_trials = n_trials

    def __getstate__(self) -> dict:
        # Tune pickles the searcher into the experiment it creates and checkpoints.
        return {"pickled": _pickle_lock_free(self.__dict__)}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(pickle.loads(state["pickled"]))

    def save(self, checkpoint_path: str) -> None:
        # OptunaSearch.save pickles its __dict__ itself, past __getstate__; restore loads it.
        Path(checkpoint_path).write_bytes(_pickle_lock_free(self.__dict__.copy()))

    def suggest(self, trial_id: str) -> dict | None:
        if trial_id not in self._ot_trials and self._budget_spent():
            return Searcher.FINISHED
        with warnings.catch_warnings():
            # Pricing builds and profiles a model: slower than the plain suggests Ray expects.
            warnings.filterwarnings("ignore", message="Define-by-run function")
            return super().suggest(trial_id)

    def _budget_spent(self) -> bool:
        trials = self._ot_study.get_trials(deepcopy=False)
        states = {t._trial_id: t.state for t in trials}
        live = sum(
            1
            for tune_id, ot_trial in self._ot_trials.items()
            if tune_id not in self._completed_trials
            and states.get(ot_trial._trial_id) == TrialState.RUNNING
        )
        return count_done(trials) + live >= self._n_trials

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is None or trial_id in self._completed_trials or (not result and not error):
            return super().on_trial_complete(trial_id, result=result, error=error)
        self._completed_trials.add(trial_id)
        storage = self._ot_study._storage
        if storage.get_trial(ot_trial._trial_id).state.is_finished():
            return  # recorded before the driver restarted; this was its cached re-run
        if error:
            return  # StudyCallback.on_trial_error records it, with Ray's error message
        prefix = f"{ATTRS_KEY}/"  # Tune flattens nested result dicts with "/"
        with one_transaction(ot_trial):
            for key, value in result.items():
                if key.startswith(prefix):
                    ot_trial.set_user_attr(key.removeprefix(prefix), value)
        if result.get(FAILED_KEY):
            self._ot_study.tell(ot_trial, state=TrialState.FAIL)
        elif result.get(PRUNED_KEY):
            self._ot_study.tell(ot_trial, state=TrialState.PRUNED)
        else:
            self._ot_study.tell(ot_trial, [result[name] for name in self.metric])
        # Looked up, not held: Tune pickles the searcher into its checkpoints, and the
        # proposer (a lock, a fitted forest, its pool) is per process, like the objective.
        objective = shared_objective(self._pricing.config, self._pricing.run_dir)
        finished = storage.get_trial(ot_trial._trial_id)
        for callback in objective.callbacks():
            callback(self._ot_study, finished)


_LOCK_TYPES = (type(threading.Lock()), type(threading.RLock()))


class _LockFreePickler(cloudpickle.Pickler):
    """Pickles samplers without their locks, which get new ones when loaded: Optuna's NSGA-II
    sampler holds a ``threading.Lock``, which does not pickle. Every reference to a sampler
    (the searcher's, the study's, its trials') loads as the same sampler."""

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, optuna.samplers.BaseSampler):
            fields = vars(obj)
            # name -> whether it is reentrant
            locks = {
                name: isinstance(v, _LOCK_TYPES[1])
                for name, v in fields.items()
                if isinstance(v, _LOCK_TYPES)
            }
            if locks:
                state = {name: v for name, v in fields.items() if name not in locks}
                return _relocked, (type(obj), state, locks)
        return super().reducer_override(obj)


def _pickle_lock_free(obj: Any) -> bytes:
    buffer = io.BytesIO()
    _LockFreePickler(buffer).dump(obj)
    return buffer.getvalue()


def _relocked(cls: type, state: dict[str, Any], locks: dict[str, bool]) -> Any:
    obj = cls.__new__(cls)
    obj.__dict__.update(state)
    for name, reentrant in locks.items():
        setattr(obj, name, threading.RLock() if reentrant else threading.Lock())
    return obj


class StudyCallback(tune.Callback):
    """Records trials whose Ray worker failed for good, and reports each finished trial."""

    def __init__(
        self,
        *,
        study_name: str,
        storage: optuna.storages.BaseStorage,
        run_key: str,
        n_trials: int,
        max_failures: int = 0,
    ) -> None:
        self.study_name = study_name
        self.max_failures = max_failures
        self.storage = storage
        self.run_key = run_key
        self.n_trials = n_trials
        self._study: optuna.Study | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_study": None}

    def study(self) -> optuna.Study:
        if self._study is None:
            self._study = optuna.load_study(study_name=self.study_name, storage=self.storage)
        return self._study

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._report(trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        number = trial.config.get(TRIAL_KEY)
        if number is not None:
            study = self.study()
            everything = study.get_trials(deepcopy=False)
            frozen = everything[number]
            if frozen.state == TrialState.RUNNING:
                attempts = 1 + retry_depth(everything, number)
                error = _last_error_line(trial)
                storage = study._storage
                # Not counted (interrupted) and queued again while attempts are left: the next
                # ask takes it, in this experiment or the driver's next one.
                retry = attempts <= self.max_failures
                if retry:
                    storage.set_trial_user_attr(frozen._trial_id, "interrupted", True)
                    reason = f"its Ray worker died (attempt {attempts}), queued again: {error}"
                else:
                    reason = f"Ray trial failed {attempts} time(s): {error}"
                storage.set_trial_user_attr(frozen._trial_id, "fail_reason", reason)
                study.tell(number, state=TrialState.FAIL)
                if retry:
                    study.enqueue_trial(frozen.params, user_attrs={RETRY_ATTR: number})
        self._report(trial)

    def _report(self, trial: Any) -> None:
        on_trial = _ON_TRIAL.get(self.run_key)
        number = trial.config.get(TRIAL_KEY)
        if on_trial is None or number is None:
            return
        study = self.study()
        frozen = study.get_trials(deepcopy=False)[number]
        if frozen.state.is_finished():
            on_trial(study, frozen, self.n_trials)


def _last_error_line(trial: Any) -> str:
    path = trial.error_file
    if path and Path(path).is_file():
        lines = [line for line in Path(path).read_text().splitlines() if line.strip()]
        if lines:
            return lines[-1].strip()
    return f"see the Ray logs of trial {trial.trial_id}"


def _trial_dirname(trial: Any) -> str:
    # Tune's default folder name lists the whole config: far too long for our parameters.
    return f"trial_{trial.trial_id}"


def connect(config: RayConfig) -> bool:
    """Join the configured cluster, or start a private one; True when this call connected (the
    caller then disconnects). An already initialised Ray (e.g. in tests) is used as it is."""
    if ray.is_initialized():
        return False
    quiet = {"log_to_driver": False, "logging_level": logging.WARNING}
    if config.address is not None:
        ray.init(address=config.address, **quiet)
        return True
    # A private cluster on this machine, no dashboard. Ray (2.60) turns a loopback node address
    # into this machine's routable one and its gRPC servers listen on every interface, so what
    # keeps others out is the token authentication that Ray >= 2.59 turns on for clusters that
    # ray.init() starts unless RAY_AUTH_MODE says otherwise. (Setting RAY_AUTH_MODE here would
    # skip Ray's own token set-up.) See docs/guide/distributed.md.
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        logger.warning(
            "RAY_AUTH_MODE=disabled: the local Ray cluster accepts anyone who can reach this "
            "machine's ports; unset it to require a token."
        )
    ray.init(_node_ip_address="127.0.0.1", include_dashboard=False, **quiet)
    _restrict_token_file()
    return True


def _restrict_token_file() -> None:
    # Ray writes the token it generates as ~/.ray/auth_token with the umask's mode, often
    # world-readable: any local user could then read it and submit code to the cluster.
    token = Path.home() / ".ray" / "auth_token"
    try:
        if token.is_file() and token.stat().st_mode & 0o077:
            token.chmod(0o600)
    except OSError as err:  # not ours to change: say so, do not fail the search
        logger.warning("Could not make %s private (%s); chmod 600 it yourself.", token, err)


def run_ray_search(
    config: RunConfig,
    *,
    run_dir: Path,
    sampler: optuna.samplers.BaseSampler | None = None,
    on_trial: Callable[[optuna.Study, FrozenTrial, int], None] | None = None,
) -> SearchResult:
    """Run or resume the search on Ray (called by ``run_search`` under the run lock) with
    ``sampler`` (default: the config's, continuing the study) proposing every experiment's
    trials."""
    run_dir = run_dir.resolve()  # Ray workers run in their trial folders
    study, storage = open_study(config, run_dir, sampler=sampler)
    write_config(config, run_dir)
    sampler = study.sampler
    # Trains (or loads) the teacher here, before any worker needs it.
    objective = shared_objective(config, run_dir)
    warm_start_(study, objective.setup)
    experiments = RunDir(run_dir).ray_dir
    owned = connect(config.search.ray)
    _ON_TRIAL[str(run_dir)] = on_trial
    # Ctrl-C must stop the search as with the Optuna backend; Tune's own handler would instead
    # return from fit() as if the experiment were complete. Restored afterwards.
    sigint_env = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    try:
        trainable = tune.with_resources(
            tune.with_parameters(_ray_trial, config=config, run_dir=run_dir),
            {"cpu": config.search.ray.cpus_per_trial, "gpu": config.search.ray.gpus_per_trial},
        )
        latest = _latest_experiment(experiments)
        if (
            latest is not None
            and not (latest / FINISHED_FILE).exists()
            and tune.Tuner.can_restore(str(latest))
        ):
            logger.info("Resuming the interrupted Ray experiment %s.", latest)
            _fit(tune.Tuner.restore(str(latest), trainable=trainable), latest, study)
        # Trials skipped by search.prescreen use up Tune samples but not n_trials: as
        # driver.optimize_until_done does, start another experiment for the trials still
        # missing. One sampler for all of them: a fresh one would restart from the seed and
        # suggest the earlier experiments' candidates again.
        timeout = config.search.timeout_s
        deadline = None if timeout is None else time.monotonic() + timeout
        while (
            remaining := config.search.n_trials - count_done(study.get_trials(deepcopy=False))
        ) > 0:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            if repeat_streak(study.get_trials(deepcopy=False)) >= REPEAT_LIMIT:
                logger.warning(
                    "Stopping: the last %d proposals were all candidates this run has already "
                    "evaluated; the search space looks exhausted.",
                    REPEAT_LIMIT,
                )
                break
            index = 0 if latest is None else int(latest.name.removeprefix("exp")) + 1
            latest = experiments / f"exp{index}"
            tuner = _new_tuner(
                config,
                trainable=trainable,
                study=study,
                storage=storage,
                run_dir=run_dir,
                name=latest.name,
                n_samples=remaining,
                time_budget_s=left,
                sampler=sampler,
            )
            _fit(tuner, latest, study)
    finally:
        _ON_TRIAL.pop(str(run_dir), None)
        if sigint_env is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = sigint_env
        if owned:
            ray.shutdown()
        teacher = objective.setup.teacher_metrics
        result = write_run_results(study, run_dir, config.objectives(), teacher_metrics=teacher)
    return result


def _new_tuner(
    config: RunConfig,
    *,
    trainable: Any,
    study: optuna.Study,
    storage: optuna.storages.BaseStorage,
    run_dir: Path,
    name: str,
    n_samples: int,
    time_budget_s: float | None,
    sampler: optuna.samplers.BaseSampler,
) -> tune.Tuner:
    objectives = config.objectives()
    searcher = StudySearcher(
        PricingSpace(config, run_dir),
        n_trials=config.search.n_trials,
        metric=[o.name for o in objectives],
        mode=["max" if o.direction == "maximize" else "min" for o in objectives],
        sampler=sampler,
        storage=storage,
        study_name=study.study_name,
    )
    callback = StudyCallback(
        study_name=study.study_name,
        storage=storage,
        run_key=str(run_dir),
        n_trials=config.search.n_trials,
        max_failures=config.search.ray.max_failures,
    )
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=ConcurrencyLimiter(searcher, max_concurrent=config.search.ray.workers),
            num_samples=n_samples,
            # One worker process evaluates trial after trial: data and teacher load once.
            reuse_actors=True,
            trial_dirname_creator=_trial_dirname,
            time_budget_s=time_budget_s,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=str(RunDir(run_dir).ray_dir),
            # Retried through the study instead (StudyCallback.on_trial_error): Tune's own
            # restart of a dead worker's trial can land on that worker's cached actor (reuse_actors)
            # and count one death twice, giving the trial up after a single kill.
            failure_config=tune.FailureConfig(max_failures=0),
            callbacks=[callback],
            verbose=0,
        ),
    )


def _fit(tuner: tune.Tuner, experiment: Path, study: optuna.Study) -> None:
    tuner.fit()
    # fit() returned without an interruption: no Tune trial is live any more. A study trial
    # still RUNNING was asked after Tune's last experiment checkpoint by a driver that then
    # died; no Tune trial will finish it.
    storage = study._storage
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        fail_as_interrupted(storage, trial._trial_id, "the Ray driver stopped")
    experiment.mkdir(parents=True, exist_ok=True)
    (experiment / FINISHED_FILE).write_text(time.strftime("%Y-%m-%d %H:%M:%S\n"))


def _latest_experiment(experiments: Path) -> Path | None:
    found = [p for p in experiments.glob("exp*") if p.is_dir() and p.name[3:].isdigit()]
    return max(found, key=lambda p: int(p.name[3:]), default=None)
