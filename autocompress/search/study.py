"""The run's Optuna study: created or loaded (and checked against the config that made it),
which trials count towards ``search.n_trials``, and the retry of trials that an interruption cut
off."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from ..config import RunConfig, dump_config
from ..core.errors import ConfigError
from ..core.files import write_text_atomic
from ..core.rundir import RunDir
from ..core.trials import RETRY_ATTR, retried_trials
from .samplers import make_sampler
from .storage import make_storage, redact

logger = logging.getLogger(__name__)

STOPPED_ATTR = "stopped_epochs"  # user attribute of a trial stopped early: its epochs trained
DUPLICATE_ATTR = "duplicate_of"  # user attribute of a skipped repeat: the trial it repeats


def open_study(
    config: RunConfig,
    run_dir: Path | RunDir,
    *,
    storage: optuna.storages.BaseStorage | None = None,
    where: str | None = None,
    sampler: optuna.samplers.BaseSampler | None = None,
) -> tuple[optuna.Study, optuna.storages.BaseStorage]:
    """Create or load the run's study (in ``storage``; by default ``search.storage`` or the run
    folder's study.db) and check that it was made by the same config. ``where`` names the
    storage in error messages.

    A study that holds trials made by another config is refused without writing anything. One
    that holds no trial yet (a first start that failed before its first trial, e.g. on a bad
    dataset) takes this config. ``sampler`` defaults to the config's, seeded by
    :func:`sampler_seed` so that a resumed run continues the search instead of replaying it."""
    url = config.search.storage or RunDir(run_dir).study_url
    if storage is None:
        storage = make_storage(url)
    if where is None:
        where = (
            f"The run folder {run_dir}"
            if config.search.storage is None
            else f"The study {config.name!r} in {redact(url)}"
        )
    directions = [o.direction for o in config.objectives()]
    study = _load(config.name, storage)
    if study is not None and study.get_trials(deepcopy=False):
        _check_made_by(study, config, directions=directions, where=where)
    else:
        if study is not None and [d.name.lower() for d in study.directions] != directions:
            optuna.delete_study(study_name=config.name, storage=storage)
            study = None
        if study is None:
            study = optuna.create_study(
                study_name=config.name, storage=storage, directions=directions
            )
        study.set_user_attr("fingerprint", config.fingerprint())
        study.set_user_attr("objectives", config.search.objectives)
    trials = len(study.get_trials(deepcopy=False))
    study.sampler = sampler or make_sampler(config, seed=sampler_seed(config.seed, trials=trials))
    return study, storage


def sampler_seed(seed: int, *, trials: int) -> int:
    """The sampler's seed for a study that already holds ``trials`` trials: the config's own
    seed for a new study (a run is reproducible from its config), and one derived from it and
    the trial count on every resume, so a resumed or extended run draws new candidates instead
    of replaying the first ones."""
    if trials == 0:
        return seed
    return int(np.random.SeedSequence([seed, trials]).generate_state(1)[0])


def _load(name: str, storage: optuna.storages.BaseStorage) -> optuna.Study | None:
    # Looked up first: create_study(load_if_exists=True) would try to write a new study.
    if name not in optuna.get_all_study_names(storage):
        return None
    return optuna.load_study(study_name=name, storage=storage)


def _check_made_by(
    study: optuna.Study, config: RunConfig, *, directions: list[str], where: str
) -> None:
    if [d.name.lower() for d in study.directions] != directions:
        raise ConfigError(
            f"{where} holds a study with objectives {study.user_attrs.get('objectives')}; this "
            f"config asks for {config.search.objectives}. Use another 'name' or delete it."
        )
    saved = study.user_attrs.get("fingerprint")
    if saved is None:  # a study made outside autocompress: adopt it
        study.set_user_attr("fingerprint", config.fingerprint())
        study.set_user_attr("objectives", config.search.objectives)
    elif saved != config.fingerprint():
        raise ConfigError(
            f"{where} was created by a different config (only search.n_trials, search.n_jobs, "
            "search.timeout_s, search.save_models and where trials run - search.backend, "
            "storage, ray, worker - may change on resume). Use another 'name' or delete it."
        )


def retry_interrupted(
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
            fail_as_interrupted(storage, trial._trial_id, "the search process stopped")
        study.enqueue_trial(trial.params, user_attrs={RETRY_ATTR: trial.number})
        retried += 1
    return retried


def fail_as_interrupted(storage: optuna.storages.BaseStorage, trial_id: int, why: str) -> None:
    """Fail a trial that a stopped process left RUNNING, as interrupted (it does not count
    towards n_trials) with the reason ``"interrupted: " + why``. The attributes are written
    first: a process that dies in between leaves a running trial, never a reasonless failure."""
    storage.set_trial_user_attr(trial_id, "interrupted", True)
    storage.set_trial_user_attr(trial_id, "fail_reason", f"interrupted: {why}")
    storage.set_trial_state_values(trial_id, TrialState.FAIL)


def counted(trial: FrozenTrial, retried: frozenset[int] | set[int] = frozenset()) -> bool:
    """Trials that use up the budget of n_trials: finished, and not cut off by an interruption
    or by the death of their worker (``retried``: numbers of trials queued again). A trial
    stopped early by ``search.early_stopping`` counts (it was trained); one skipped by
    ``search.prescreen`` or as a repeat of an earlier candidate does not."""
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
    """How many of ``trials`` count towards ``search.n_trials`` (see :func:`counted`)."""
    trials = list(trials)
    retried = retried_trials(trials)
    return sum(counted(t, retried) for t in trials)


def write_config(config: RunConfig, run_dir: Path | RunDir) -> None:
    write_text_atomic(RunDir(run_dir).config_file, dump_config(config))


# Proposals in a row that repeat evaluated candidates before a search calls its space exhausted:
# a few repeats are normal (a reseeded sampler, a small space), an endless run of them is not.
REPEAT_LIMIT = 50


def repeat_streak(trials: Iterable[FrozenTrial]) -> int:
    """How many of the last finished ``trials`` in a row were skipped as repeats."""
    streak = 0
    for trial in reversed([t for t in trials if t.state.is_finished()]):
        if DUPLICATE_ATTR not in trial.user_attrs:
            break
        streak += 1
    return streak


class RepeatGuard:
    """``study.optimize`` callback that stops the study once ``limit`` trials in a row were
    skipped as repeats: the sampler keeps proposing candidates the run has evaluated, so the
    space is (nearly) exhausted and more trials would never count. Thread-safe."""

    def __init__(self, limit: int = REPEAT_LIMIT) -> None:
        self.limit = limit
        self.exhausted = False
        self._streak = 0
        self._lock = threading.Lock()

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        with self._lock:
            self._streak = self._streak + 1 if DUPLICATE_ATTR in trial.user_attrs else 0
            if self._streak >= self.limit and not self.exhausted:
                self.exhausted = True
                logger.warning(
                    "Stopping: the last %d proposals were all candidates this run has already "
                    "evaluated; the search space looks exhausted (%d trials count).",
                    self.limit,
                    count_done(study.get_trials(deepcopy=False)),
                )
                study.stop()
