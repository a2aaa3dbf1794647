"""Workers sharing one study: ``autocompress worker CONFIG --storage URL`` on many machines.

Every worker opens the same study (same name, same config fingerprint), asks it for trials and
evaluates them with the same ``TrialObjective`` as the single-process search. The study's storage is
the only thing they share, plus (for models, teacher and result tables) the run folder, which on
several machines should be on a shared disk.

Workers hold the run lock shared (many processes per run folder is the point; a single-process
search is refused beside them, and they beside it); besides:

* the teacher is trained once, by the first worker, under a file lock; the others wait and load
  it (``prepare_setup``). Without a shared run folder each machine trains the same seeded one;
* heartbeats: a worker that dies mid-trial stops beating, and after ``search.worker.grace_period``
  seconds the next worker to ask for a trial fails it and queues its parameters again;
* trials stopped by Ctrl-C are queued again by the next worker to start.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import threading
import time
import warnings
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import torch
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import fail_stale_trials
from optuna.trial import FrozenTrial, TrialState

from ..config import RunConfig
from ..core.errors import ConfigError
from ..core.files import RunLock, file_lock
from ..core.rundir import RunDir
from ..core.trials import RETRY_ATTR
from .objective import TrialObjective
from .results import SearchResult, write_run_results
from .samplers import make_sampler
from .setup import prepare_setup
from .storage import failed_since, make_storage, owed_retries, queue_retry, redact
from .study import (
    DUPLICATE_ATTR,
    RepeatGuard,
    count_done,
    open_study,
    retry_interrupted,
    write_config,
)
from .warm_start import warm_start_

logger = logging.getLogger(__name__)

# How Optuna's tell refuses a trial that was finished meanwhile (e.g. failed as stale).
TAKEN_OVER = "Cannot tell a "


def taken_over(err: BaseException) -> BaseException | None:
    """The error in ``err``'s chain saying that this worker's trial was finished by another
    process, or None. Optuna raises ``UpdateFinishedTrialError`` when the trial was finished
    before a write, and a ``ValueError`` from its tell when it was finished before the tell,
    which its ``optimize`` then hides behind an ``AssertionError`` ("Should not reach")."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, UpdateFinishedTrialError) or (
            isinstance(seen, ValueError) and str(seen).startswith(TAKEN_OVER)
        ):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


@dataclass(frozen=True)
class WorkerResult(SearchResult):
    """A :class:`SearchResult` (whose ``trials`` are every worker's) and ``ran``, the trials
    this worker evaluated."""

    ran: int


def run_worker(
    config: RunConfig,
    *,
    storage: str | None = None,
    n_trials: int | None = None,
    runs_dir: str | Path = Path("runs"),
    on_trial: Callable[[optuna.Study, FrozenTrial, int], None] | None = None,
) -> WorkerResult:
    """Join the study at ``storage`` (default ``search.storage``) and evaluate trials.

    ``n_trials``: this worker runs that many trials (N workers x M trials = N*M trials). By
    default it works until the study holds ``search.n_trials`` finished trials, counting those
    of every worker (each worker may finish one trial beyond, as they stop independently).
    """
    url = storage or config.search.storage
    if url is None:
        raise ConfigError(
            "A worker needs a study that all workers share: pass --storage URL "
            "(postgresql://..., sqlite:///PATH, journal:PATH) or set 'search.storage'."
        )
    if n_trials is not None and n_trials < 1:
        raise ValueError(f"The 'n_trials' parameter of run_worker must be >= 1. Got {n_trials}.")
    run = RunDir(Path(runs_dir) / config.name)
    run.path.mkdir(parents=True, exist_ok=True)
    # Shared: any number of workers, but no single-process search beside them (it fails every
    # RUNNING trial it finds on start, taking them for its own, cut off by a crash).
    with RunLock(run.search_lock, shared=True):
        return _join(config, run=run, url=url, n_trials=n_trials, on_trial=on_trial)


def _join(
    config: RunConfig,
    *,
    run: RunDir,
    url: str,
    n_trials: int | None,
    on_trial: Callable[[optuna.Study, FrozenTrial, int], None] | None,
) -> WorkerResult:
    # Creating the tables and the study is not atomic in every database: workers started
    # together take turns (where the run folder is shared; elsewhere Optuna's own
    # load_if_exists handles the common race).
    with file_lock(run.study_lock):
        study, shared = open_study(
            config,
            run,
            storage=make_storage(url, heartbeat=config.search.worker),
            where=f"The study {config.name!r} in {redact(url)}",
        )
        write_config(config, run)
        index = int(study.user_attrs.get("workers_joined", 0))
        study.set_user_attr("workers_joined", index + 1)
        retried = retry_interrupted(study, shared, running=False)
    # Workers seeded alike would suggest the same candidates in lockstep: each gets its own
    # seed, from the config's seed, its join order and (in case two machines without a shared
    # run folder join at once) its host and pid. Logged, as the run is not replayable anyway.
    seed = worker_seed(config.seed, index=index)
    study.sampler = make_sampler(config, seed=seed)
    if retried:
        logger.info("Retrying %d trial(s) stopped by Ctrl-C in an earlier worker.", retried)
    logger.info(
        "Worker %d joined study %r in %s (sampler seed %d).", index, config.name, redact(url), seed
    )

    threads = torch.get_num_threads()
    if config.search.worker.threads is not None:
        # Workers sharing a machine, each with one thread per core, oversubscribe it: small
        # models then train many times slower than with one thread each.
        torch.set_num_threads(config.search.worker.threads)
    try:
        return _work(config, study=study, run=run, n_trials=n_trials, on_trial=on_trial)
    finally:
        torch.set_num_threads(threads)


def _work(
    config: RunConfig,
    *,
    study: optuna.Study,
    run: RunDir,
    n_trials: int | None,
    on_trial: Callable[[optuna.Study, FrozenTrial, int], None] | None,
) -> WorkerResult:
    setup = prepare_setup(config, run, study=study)
    with file_lock(run.study_lock):  # one worker queues them
        warm_start_(study, setup)
    objective = TrialObjective(setup)
    target = config.search.n_trials
    ran: list[int] = []

    def after_trial(study: optuna.Study, trial: FrozenTrial) -> None:
        ran.append(trial.number)
        if on_trial is not None:
            on_trial(study, trial, target)

    grace = config.search.worker.stale_after_s
    budget = None if n_trials is not None else StudyBudget(target, grace_s=grace)
    repeats = RepeatGuard()
    timeout = config.search.timeout_s
    deadline = None if timeout is None else time.monotonic() + timeout
    stop = threading.Event()
    started = itertools.count(1)  # trials this worker started (with n_trials), across threads

    def serve() -> None:
        """Run trials one at a time while the study wants more. ``search.n_jobs`` threads each
        serve on their own: a thread whose trial ends takes the next one at once, instead of
        waiting for the other threads' trials to end."""
        while not (repeats.exhausted or stop.is_set()):
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            if budget is None:
                if next(started) > n_trials:
                    break
            else:
                room = budget.has_room(study)
                if room is None:
                    budget.drop_waiting(study)
                    break
                if not room:
                    # Every trial still needed is running: wait for them to finish, or for
                    # their heartbeats to stop (then they are failed and queued again).
                    time.sleep(config.search.worker.heartbeat_interval)
                    with warnings.catch_warnings():  # "experimental" since Optuna 2.9
                        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                        fail_stale_trials(study)
                    continue
            try:
                study.optimize(
                    objective if budget is None else budget.guard(objective),
                    n_trials=1,
                    timeout=left,
                    catch=(Exception,),
                    callbacks=[*objective.callbacks(), after_trial, repeats],
                )
            except Exception as err:
                # Another worker failed this worker's trial as stale (its heartbeats were late,
                # e.g. while the database was unreachable) and queued it again: the result is
                # not needed, the worker is.
                reason = taken_over(err)
                if reason is None:
                    raise
                logger.warning("A trial of this worker was taken over by another: %s", reason)

    try:
        if config.search.n_jobs == 1:
            serve()
        else:
            with ThreadPoolExecutor(config.search.n_jobs) as pool:
                threads = [pool.submit(serve) for _ in range(config.search.n_jobs)]
                try:
                    for thread in threads:
                        thread.result()
                except BaseException:
                    stop.set()  # the other threads end after their current trial
                    raise
    finally:
        result = write_run_results(
            study, run, config.objectives(), teacher_metrics=setup.teacher_metrics
        )
    return WorkerResult(**vars(result), ran=len(ran))


class StudyBudget:
    """Exactly ``target`` trials that count (``study.counted``) across every worker of a study.

    A worker asks for a trial only while finished and running trials leave room
    (:meth:`has_room`); workers that ask at the same moment for the last free slot can still
    both get a trial, so each trial also checks, before its work, that the trials numbered before
    it leave it room (:meth:`guard`): the later one is pruned unevaluated, as not needed.
    Trial numbers order the claims: every worker sees the same order, so exactly one gets the
    slot."""

    def __init__(self, target: int, *, grace_s: float = 0.0) -> None:
        self.target = target
        self.grace_s = grace_s

    def has_room(self, study: optuna.Study) -> bool | None:
        """Whether a trial may start now (False: wait), or None when the study is done.

        A trial failed as stale whose retry is not queued yet is owed one: it counts as running
        for ``grace_s`` seconds (the process that failed it queues the retry right after), then
        this worker queues the retry itself."""
        trials = study.get_trials(deepcopy=False)
        owed, queued = [], False
        for trial in owed_retries(study, trials):
            if failed_since(trial) <= self.grace_s:  # its failing process may queue it yet
                owed.append(trial)
                continue
            logger.warning("Queueing the retry of stale trial %d, still missing", trial.number)
            queue_retry(study, trial)
            queued = True
        if queued:
            trials = study.get_trials(deepcopy=False)
        done = count_done(trials) - len(owed)
        if done >= self.target:
            return None
        running = sum(t.state == TrialState.RUNNING for t in trials) + len(owed)
        return done + running < self.target

    def drop_waiting(self, study: optuna.Study) -> None:
        """Close the trials still queued once the study is done, as pruned (they never ran and
        do not count) with that reason: no worker will take them (e.g. a retry queued twice
        when the database lost its answer to the first request)."""
        for trial in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            storage = study._storage
            reason = f"not needed: the study holds its {self.target} trials"
            try:
                storage.set_trial_user_attr(trial._trial_id, "pruned_reason", reason)
                storage.set_trial_state_values(trial._trial_id, TrialState.PRUNED)
            except UpdateFinishedTrialError:
                pass  # another worker got there first

    def guard(self, objective: Callable[[optuna.Trial], list[float]]) -> Callable:
        def guarded(trial: optuna.Trial) -> list[float]:
            # The trials as the sampler read them for this trial (after it was created, so
            # every trial numbered before it is there); trials that finished since are counted
            # as running ahead, which adds up the same.
            trials = trial.study._get_trials(deepcopy=False, use_cache=True)
            if RETRY_ATTR in trial.user_attrs:
                # Two processes can queue the retry of one trial (see has_room; or a database
                # that lost its answer to the first request): the first retry is the one.
                of = trial.user_attrs[RETRY_ATTR]
                first = min(t.number for t in trials if t.user_attrs.get(RETRY_ATTR) == of)
                if first != trial.number:
                    reason = f"not needed: trial {first} already retries trial {of}"
                    trial.set_user_attr(DUPLICATE_ATTR, first)
                    trial.set_user_attr("pruned_reason", reason)
                    raise optuna.TrialPruned(reason)
            ahead = sum(t.state == TrialState.RUNNING and t.number < trial.number for t in trials)
            if count_done(trials) + ahead >= self.target:
                reason = f"not needed: the {self.target} trials were all taken when it started"
                if RETRY_ATTR in trial.user_attrs:  # a retry: its candidate is still owed
                    trial.study.enqueue_trial(trial.params, user_attrs={RETRY_ATTR: trial.number})
                    reason += "; queued again"
                trial.set_user_attr("pruned_reason", reason)
                raise optuna.TrialPruned(reason)
            return objective(trial)

        return guarded


def worker_seed(seed: int, *, index: int) -> int:
    host = zlib.crc32(socket.gethostname().encode())
    return int(np.random.SeedSequence([seed, index, host, os.getpid()]).generate_state(1)[0])
