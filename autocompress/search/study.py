"""The run's Optuna study: created or loaded (and checked against the config that made it),
which trials count towards ``search.n_trials``, and the retry of trials that an interruption cut
off."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from ..config import RunConfig, dump_config
from ..core.errors import ConfigError
from ..core.files import write_text_atomic
from ..core.rundir import RunDir
from ..core.trials import RETRY_ATTR, retried_trials
from .samplers import make_sampler
from .storage import make_storage, redact

STOPPED_ATTR = "stopped_epochs"  # user attribute of a trial stopped early: its epochs trained


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
    storage in error messages; ``sampler`` defaults to ``make_sampler(config)``."""
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
            storage.set_trial_user_attr(trial._trial_id, "interrupted", True)
            storage.set_trial_user_attr(
                trial._trial_id, "fail_reason", "interrupted: the search process stopped"
            )
            storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs={RETRY_ATTR: trial.number})
        retried += 1
    return retried


def counted(trial: FrozenTrial, retried: frozenset[int] | set[int] = frozenset()) -> bool:
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
    """How many of ``trials`` count towards ``search.n_trials`` (see :func:`counted`)."""
    trials = list(trials)
    retried = retried_trials(trials)
    return sum(counted(t, retried) for t in trials)


def write_config(config: RunConfig, run_dir: Path | RunDir) -> None:
    write_text_atomic(RunDir(run_dir).config_file, dump_config(config))
