"""``run_search``: run or resume a search in this process (the Optuna backend) or, with
``search.backend: ray``, on a Ray cluster.

A run lives in one folder (``runs/<name>/``, see ``core.rundir``): the resolved config, the
study, the cached teacher, one saved model per trained trial, and the result tables and plots.
Re-running the same command resumes: completed and failed trials are kept, trials cut off by a
crash are retried. For workers sharing a study see ``worker.run_worker``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial

from ..config import RunConfig
from ..core.files import RunLock
from ..core.rundir import RunDir
from ..hardware_profiles import HardwareProfile
from .objective import TrialObjective
from .results import SearchResult, write_run_results
from .setup import EvaluatorSpec, prepare_setup
from .study import RepeatGuard, count_done, open_study, retry_interrupted, write_config
from .warm_start import warm_start_

logger = logging.getLogger(__name__)

OnTrial = Callable[[optuna.Study, FrozenTrial, int], None]


def run_search(
    config: RunConfig,
    *,
    runs_dir: str | Path = Path("runs"),
    evaluator: EvaluatorSpec | None = None,
    sampler: optuna.samplers.BaseSampler | None = None,
    profile: HardwareProfile | None = None,
    on_trial: OnTrial | None = None,
) -> SearchResult:
    """Run (or resume) the search described by ``config`` in ``runs_dir / config.name``; writes
    the result files there.

    ``evaluator``, ``sampler``, ``profile``: configured objects to use instead of the ones the
    config names (``evaluator`` may also be a factory taking an ``EvaluatorContext``, like the
    registered ones). The config still describes the run (its fingerprint guards resumes), so
    pass the same objects when resuming. ``on_trial(study, trial, n_trials)`` is called after
    each finished trial (the CLI prints progress with it).

    ``search.backend: optuna`` evaluates trials in this process (``search.n_jobs`` threads);
    ``ray`` spreads them over a Ray cluster, whose workers build the evaluator and profile from
    the config (``evaluator`` and ``profile`` objects cannot travel there)."""
    if config.search.backend == "ray" and (evaluator is not None or profile is not None):
        raise ValueError(
            "The 'evaluator' and 'profile' parameters of run_search must be None with "
            "search.backend: ray: Ray workers build them from the config (register a custom "
            "one and name it in the config instead)."
        )
    run = RunDir(Path(runs_dir) / config.name)
    run.path.mkdir(parents=True, exist_ok=True)
    with RunLock(run.search_lock):
        if config.search.backend == "ray":
            return _ray_backend().run_ray_search(
                config, run_dir=run.path, sampler=sampler, on_trial=on_trial
            )
        # Nothing is written before open_study accepts the run (same config, or a fresh study).
        study, storage = open_study(config, run, sampler=sampler)
        write_config(config, run)
        retried = retry_interrupted(study, storage)
        if retried:
            logger.info("Retrying %d trial(s) interrupted in an earlier run.", retried)
        setup = prepare_setup(config, run, study=study, evaluator=evaluator, profile=profile)
        warm_start_(study, setup)
        objective = TrialObjective(setup)
        callbacks = objective.callbacks()
        if on_trial:
            callbacks.append(lambda s, t: on_trial(s, t, config.search.n_trials))
        try:
            optimize_until_done(study, objective, config, callbacks=callbacks)
        finally:
            # Also after Ctrl-C: the tables and plots then show what was finished so far.
            result = write_run_results(
                study, run, config.objectives(), teacher_metrics=setup.teacher_metrics
            )
    return result


def optimize_until_done(
    study: optuna.Study, objective: TrialObjective, config: RunConfig, *, callbacks: list
) -> None:
    """``study.optimize`` until ``search.n_trials`` trials count (see ``study.counted``) or
    ``search.timeout_s`` runs out: trials skipped by the prescreen or as repeats do not count,
    so one pass of ``n_trials=remaining`` may leave some to run. Each pass asks for exactly the
    trials still missing, so ``--n-jobs`` threads never overshoot the budget. Ends early when
    the sampler only proposes candidates already evaluated (:class:`study.RepeatGuard`)."""
    timeout = config.search.timeout_s
    deadline = None if timeout is None else time.monotonic() + timeout
    repeats = RepeatGuard()
    while not repeats.exhausted:
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
            callbacks=[*callbacks, repeats],
        )


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
