"""Optuna storages that several processes (or machines) can share, with heartbeats.

``sqlite:///PATH``, ``postgresql://...`` and ``mysql://...`` open an ``RDBStorage``;
``journal:PATH`` opens a ``JournalStorage`` on a journal file (append-only, safe on NFS).

With heartbeats on, each running trial records a heartbeat every ``heartbeat_interval`` seconds;
before asking for a trial, every worker fails the RUNNING trials whose heartbeat is older than
``grace_period`` (their worker died) and queues their parameters again through
:class:`RetryStaleTrial`, so another worker evaluates them.

Optuna 5's ``RDBStorage`` implements heartbeats; its ``JournalStorage`` does not, so
:class:`HeartbeatJournalStorage` adds them (a heartbeat is a system attribute holding the
worker's wall-clock time: the workers' clocks must agree to within the grace period, e.g. NTP).
"""

from __future__ import annotations

import importlib.util
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages import RetryHeartbeatStaleTrialCallback as _RetryCallback
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.exc import SQLAlchemyError

from ..config import WorkerConfig
from ..core.errors import ConfigError, DamagedFileError
from ..core.trials import RETRY_ATTR, unreadable_storage_message
from ..evaluators.early_stopping import RUNG_ATTR_PREFIX

HEARTBEAT_ATTR = "autocompress:heartbeat"


class RetryStaleTrial(_RetryCallback):
    """Queue a stale trial's parameters again (Optuna's retry callback), and mark the retry with
    ``retry_of`` like the retries of interrupted trials, so that the trial tables and the trial
    budget treat both kinds alike."""

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        # ``trial`` is the caller's deep copy (fail_stale_trials), so changing it is safe.
        attrs = {**trial.user_attrs, RETRY_ATTR: trial.number}
        # The retry must not inherit the dead attempt's outcome (it never finished it), nor its
        # rung records (the retry measures its own; inherited ones would judge it by itself).
        for key in ("fail_reason", "interrupted"):
            attrs.pop(key, None)
        attrs = {k: v for k, v in attrs.items() if not k.startswith(RUNG_ATTR_PREFIX)}
        trial.user_attrs = attrs
        # Nor its heartbeat (the retry would look stale between its start and first beat) or
        # its constraints (pricing the retry records them again).
        trial.system_attrs = {
            key: value
            for key, value in trial.system_attrs.items()
            if key != HEARTBEAT_ATTR and key.split(":")[0] != "constraints"
        }
        super().__call__(study, trial)


class HeartbeatJournalStorage(JournalStorage, BaseHeartbeat):
    """A journal storage with Optuna's heartbeat protocol (which ``JournalStorage`` lacks)."""

    def __init__(
        self,
        backend: JournalFileBackend,
        *,
        heartbeat_interval: int,
        grace_period: int | None = None,
        heartbeat_stale_trial_callback: Callable[[optuna.Study, FrozenTrial], None] | None = None,
    ) -> None:
        super().__init__(backend)
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period
        self.heartbeat_stale_trial_callback = heartbeat_stale_trial_callback

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            self.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())
        except UpdateFinishedTrialError:
            # Finished meanwhile, or failed as stale by another worker after a long stall.
            pass

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        grace = self.grace_period or 2 * self.heartbeat_interval
        now = time.time()
        running = self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
        return [
            t._trial_id
            for t in running
            if HEARTBEAT_ATTR in t.system_attrs and now - t.system_attrs[HEARTBEAT_ATTR] > grace
        ]

    def get_heartbeat_interval(self) -> int | None:
        return self.heartbeat_interval

    def get_heartbeat_stale_trial_callback(
        self,
    ) -> Callable[[optuna.Study, FrozenTrial], None] | None:
        return self.heartbeat_stale_trial_callback


def make_storage(url: str, *, heartbeat: WorkerConfig | None = None) -> BaseStorage:
    """Open the storage at ``url``; with ``heartbeat``, dead workers' trials are retried."""
    beat = {}
    if heartbeat is not None:
        with warnings.catch_warnings():
            # Heartbeats have been "experimental" in Optuna since 2.x; say it once, in the docs.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            retry = RetryStaleTrial(max_retry=heartbeat.max_retry)
        beat = {
            "heartbeat_interval": heartbeat.heartbeat_interval,
            "grace_period": heartbeat.grace_period,
            "heartbeat_stale_trial_callback": retry,
        }
    if url.startswith("journal:"):
        path = Path(url.removeprefix("journal:").removeprefix("//"))
        path.parent.mkdir(parents=True, exist_ok=True)
        backend = JournalFileBackend(str(path))
        return HeartbeatJournalStorage(backend, **beat) if beat else JournalStorage(backend)
    engine_kwargs: dict = {}
    if url.startswith("postgresql://"):
        url = _postgres_driver(url)
    if url.startswith("sqlite"):
        # Several threads or processes write: wait for SQLite's file lock instead of failing.
        engine_kwargs = {"connect_args": {"timeout": 60}}
        Path(url.split(":///", 1)[1]).parent.mkdir(parents=True, exist_ok=True)
    else:
        # Long trials leave pooled connections idle; the server may have closed them meanwhile.
        engine_kwargs = {"pool_pre_ping": True}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(url, engine_kwargs=engine_kwargs, **beat)
    except SQLAlchemyError as err:
        raise DamagedFileError(unreadable_storage_message(url, err)) from None
    except ImportError as err:  # Optuna re-raises the driver's ModuleNotFoundError as this
        missing = getattr(err.__cause__, "name", None) or "its database driver"
        raise ConfigError(
            f"The storage URL {redact(url)!r} needs {missing!r}, which is not installed "
            "(PostgreSQL: pip install autocompress[postgres])."
        ) from None


def _postgres_driver(url: str) -> str:
    # SQLAlchemy >= 2.1 reads a plain postgresql:// URL as psycopg (3), 2.0 as psycopg2: use
    # whichever of the two is installed.
    for module, dialect in (("psycopg", "psycopg"), ("psycopg2", "psycopg2")):
        if importlib.util.find_spec(module) is not None:
            return url.replace("postgresql://", f"postgresql+{dialect}://", 1)
    raise ConfigError(
        f"The storage URL {redact(url)!r} needs a PostgreSQL driver: "
        "pip install autocompress[postgres] (psycopg), or psycopg2-binary."
    )


def redact(url: str) -> str:
    """``url`` without its password, for messages and logs."""
    head, sep, tail = url.partition("://")
    if sep and "@" in tail:
        user, _, host = tail.rpartition("@")
        return f"{head}://{user.split(':', 1)[0]}:***@{host}" if ":" in user else url
    return url
