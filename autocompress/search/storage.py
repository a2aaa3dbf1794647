"""Optuna storages that several processes (or machines) can share, with heartbeats.

``sqlite:///PATH``, ``postgresql://...`` and ``mysql://...`` open an ``RDBStorage``;
``journal:PATH`` opens a ``JournalStorage`` on a journal file (append-only, safe on NFS).

With heartbeats on, each running trial records a heartbeat every ``heartbeat_interval`` seconds;
before asking for a trial, every worker fails the RUNNING trials whose heartbeat is older than
``grace_period`` (their worker died) and queues their parameters again through
:class:`RetryStaleTrial`, so another worker evaluates them. A trial that never beat (its worker
died between creating it and its first heartbeat) is stale ``grace_period`` seconds after it
started, by the clock of the worker that finds it.

A database server that is briefly unreachable (restarted, failed over, a network blip) does not
stop the processes that share it: :class:`PatientRDBStorage` retries each call that failed on
the connection, for up to ``DB_PATIENCE_S`` seconds.

On a database, the objective writes a trial's suggestion, its price and its result in one
transaction each (:func:`one_transaction`), and :class:`HeartbeatRDBStorage` reads a study's
trials without ORM objects: with many workers, these are what a trial costs the database.
:class:`TrialCache` (Optuna's cache of a database's trials, which every study puts in front of
one) lists a study's trials without sorting every trial object on each read.

Optuna 5's ``RDBStorage`` implements heartbeats; its ``JournalStorage`` does not, so
:class:`HeartbeatJournalStorage` adds them (a heartbeat is a system attribute holding the
worker's wall-clock time: the workers' clocks must agree to within the grace period, e.g. NTP).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib.util
import json
import logging
import threading
import time
import warnings
from collections.abc import Callable, Container, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from itertools import chain
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    check_distribution_compatibility,
    distribution_to_json,
)
from optuna.exceptions import StorageInternalError, UpdateFinishedTrialError
from optuna.storages import BaseStorage, JournalStorage, RDBStorage, _CachedStorage
from optuna.storages import RetryHeartbeatStaleTrialCallback as _RetryCallback
from optuna.storages._heartbeat import BaseHeartbeat, is_heartbeat_enabled
from optuna.storages._rdb import models as rdb_models
from optuna.storages._rdb.storage import _create_scoped_session
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import (
    Float,
    Integer,
    String,
    Text,
    bindparam,
    cast,
    insert,
    literal,
    null,
    or_,
    select,
    union_all,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import (
    DBAPIError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    PendingRollbackError,
    SQLAlchemyError,
)
from sqlalchemy.orm import sessionmaker

from ..config import WorkerConfig
from ..core.errors import ConfigError, DamagedFileError
from ..core.trials import RETRY_ATTR, retried_trials, unreadable_storage_message
from ..evaluators.early_stopping import RUNG_ATTR_PREFIX

logger = logging.getLogger(__name__)

HEARTBEAT_ATTR = "autocompress:heartbeat"
STALE_REASON = "stale: its worker stopped sending heartbeats"
# How long a process waits for an unreachable database server before it gives up (and fails).
DB_PATIENCE_S = 120.0


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

    def owes(self, trial: FrozenTrial) -> bool:
        """Whether failing ``trial`` as stale calls for a retry (``max_retry`` not used up)."""
        tries = len(trial.system_attrs.get("retry_history", [])) + 1
        return self._max_retry is None or tries <= self._max_retry


def owed_retries(study: optuna.Study, trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """The trials failed as stale whose retry is still owed: the process that fails a stale
    trial queues its retry right after (Optuna's ``fail_stale_trials``), and it can die, or lose
    the database and be killed while it waits, in between. See :func:`queue_retry`."""
    storage = study._storage
    if not (isinstance(storage, BaseHeartbeat) and is_heartbeat_enabled(storage)):
        return []
    retry = storage.get_heartbeat_stale_trial_callback()
    if not isinstance(retry, RetryStaleTrial):
        return []
    retried = retried_trials(trials)
    return [
        t
        for t in trials
        if t.state == TrialState.FAIL
        and t.user_attrs.get("fail_reason") == STALE_REASON
        and t.number not in retried
        and retry.owes(t)
    ]


def queue_retry(study: optuna.Study, trial: FrozenTrial) -> None:
    """Queue the owed retry of ``trial`` (one of :func:`owed_retries`) in place of the process
    that failed it. Should that process still queue its own, the later of the two retries is
    skipped when it starts (``StudyBudget.guard``)."""
    study._storage.get_heartbeat_stale_trial_callback()(study, copy.deepcopy(trial))


def failed_since(trial: FrozenTrial) -> float:
    """Seconds since ``trial`` finished, by this process's clock."""
    end = trial.datetime_complete
    return 0.0 if end is None else time.time() - end.timestamp()


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
        stale = [
            t._trial_id
            for t in running
            if now - t.system_attrs.get(HEARTBEAT_ATTR, _started(t)) > grace
        ]
        return _label_stale(self, stale)

    def get_heartbeat_interval(self) -> int | None:
        return self.heartbeat_interval

    def get_heartbeat_stale_trial_callback(
        self,
    ) -> Callable[[optuna.Study, FrozenTrial], None] | None:
        return self.heartbeat_stale_trial_callback


def _started(trial: FrozenTrial) -> float:
    # Optuna stamps datetime_start with the creating process's local (naive) time.
    start = trial.datetime_start
    return start.timestamp() if start is not None else time.time()


def _connection_lost(err: Exception) -> bool:
    """Whether a storage error says the database could not be reached (worth waiting for), not
    that the request was wrong. ``RDBStorage`` wraps SQLAlchemy's errors in
    ``StorageInternalError``. A pooled connection that the server dropped mid-transaction can
    surface as ``PendingRollbackError`` on the next use; the failed session is rolled back, so
    a retry starts clean."""
    cause = err.__cause__ if isinstance(err, StorageInternalError) else err
    if isinstance(cause, DBAPIError) and cause.connection_invalidated:
        return True
    return isinstance(cause, (OperationalError, InterfaceError, PendingRollbackError))


def _patient(method: Callable) -> Callable:
    @functools.wraps(method)
    def call(self: PatientRDBStorage, *args, **kwargs):
        deadline = time.monotonic() + self.patience_s
        delay = 0.1
        retrying = False
        while True:
            try:
                return method(self, *args, **kwargs)
            except UpdateFinishedTrialError:
                # The attempt that lost its connection had committed the new state after all.
                if retrying and method.__name__ == "set_trial_state_values":
                    state = kwargs["state"] if "state" in kwargs else args[1]
                    if RDBStorage.get_trial(self, args[0]).state == state:
                        return True
                raise
            except (StorageInternalError, SQLAlchemyError) as err:
                if not _connection_lost(err) or time.monotonic() + delay > deadline:
                    raise
                if not retrying:
                    logger.warning(
                        "The database is unreachable (%s); retrying for up to %.0f s.",
                        _reason(err),
                        self.patience_s,
                    )
                retrying = True
                time.sleep(delay)
                delay = min(2 * delay, 2.0)

    return call


def _read_sessions(engine: Any) -> Any:
    """Sessions for the trial reads, in autocommit mode on PostgreSQL, else None (reads run in
    a transaction). A read there needs no transaction: the trials and their rows are read with
    separate statements, and in PostgreSQL's default isolation (READ COMMITTED) each statement
    of a transaction sees its own snapshot anyway, so the transaction only adds its BEGIN and
    COMMIT round trips (about ten per trial)."""
    if engine.name != "postgresql":
        return None
    return sessionmaker(bind=engine.execution_options(isolation_level="AUTOCOMMIT"))


def _reason(err: Exception) -> str:
    cause = err.__cause__ if isinstance(err, StorageInternalError) else err
    return str(getattr(cause, "orig", None) or cause).strip().splitlines()[0]


class HeartbeatRDBStorage(RDBStorage):
    """``RDBStorage`` whose heartbeats also fail trials that never beat, each with its reason,
    and that can write a trial's parameters and attributes in one transaction
    (:func:`one_transaction`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # This thread's writes held for one transaction, and the trial it created last
        # (until it is read back or written to).
        self._batch = threading.local()
        self._read_sessions = _read_sessions(self.engine)

    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()
        state.pop("_batch", None)
        state.pop("_read_sessions", None)
        return state

    def __setstate__(self, state: dict[Any, Any]) -> None:
        super().__setstate__(state)
        self._batch = threading.local()
        self._read_sessions = _read_sessions(self.engine)

    @contextlib.contextmanager
    def _reading(self) -> Iterator[Any]:
        """A session for reads only: outside a transaction where :func:`_read_sessions` says
        so, else in one as RDBStorage's reads are."""
        if self._read_sessions is None:
            with _create_scoped_session(self.scoped_session) as session:
                yield session
            return
        session = self._read_sessions()
        try:
            yield session
        except SQLAlchemyError as err:
            raise StorageInternalError("Reading the study from the database failed.") from err
        finally:
            session.close()

    @contextlib.contextmanager
    def batching(self, trial_id: int) -> Iterator[None]:
        """Hold this thread's writes to ``trial_id`` (parameters, user and system attributes)
        and commit them together when the block ends."""
        if getattr(self._batch, "trial_id", None) is not None:  # nested: the outer block commits
            yield
            return
        self._batch.trial_id, self._batch.writes = trial_id, []
        try:
            yield
        finally:
            writes = self._batch.writes
            self._batch.trial_id, self._batch.writes = None, []
            if writes:
                self._write_batch(trial_id, writes)

    def _held(self, trial_id: int, write: tuple) -> bool:
        """Whether ``write`` to ``trial_id`` was held for this thread's batch."""
        self._batch.created = None  # the trial as created is no longer the trial
        if getattr(self._batch, "trial_id", None) != trial_id:
            return False
        self._batch.writes.append(write)
        return True

    def _write_batch(self, trial_id: int, writes: list[tuple]) -> None:
        """``writes`` to ``trial_id`` in one transaction: the trial's state is read once, the
        parameters inserted together, each kind of attribute upserted in one statement."""
        with _create_scoped_session(self.scoped_session, True) as session:
            state = session.execute(_TRIAL_STATE, {"trial_id": trial_id}).scalar_one_or_none()
            if state is None:
                raise KeyError(rdb_models.NOT_FOUND_MSG)
            self.check_trial_is_updatable(trial_id, state)
            params = []
            for kind, *args in writes:
                if kind != "param":
                    continue
                name, value, distribution, previous = args
                if previous is None:  # the first use of the name in this process: look it up
                    self._set_trial_param_without_commit(session, trial_id, *args)
                    continue
                check_distribution_compatibility(previous, distribution)
                params.append(
                    {
                        "trial_id": trial_id,
                        "param_name": name,
                        "param_value": value,
                        "distribution_json": distribution_to_json(distribution),
                    }
                )
            if params:
                session.execute(insert(rdb_models.TrialParamModel), params)
            for kind, model in _ATTR_MODELS.items():
                attrs = {w[1]: w[2] for w in writes if w[0] == kind}  # the last write wins
                if not attrs:
                    continue
                if self.engine.name not in _UPSERTS:
                    for key, value in attrs.items():
                        self._set_trial_attr_without_commit(session, model, trial_id, key, value)
                    continue
                rows = [
                    {"trial_id": trial_id, "key": key, "value_json": json.dumps(value)}
                    for key, value in attrs.items()
                ]
                self._upsert(session, model, rows, unique=("trial_id", "key"))

    def _upsert(self, session: Any, model: Any, rows: list[dict], *, unique: tuple) -> None:
        """Insert ``rows`` into ``model``'s table in one round trip, each row that repeats the
        ``unique`` columns of an existing one overwriting its other columns (PostgreSQL and
        SQLite: ``_UPSERTS``)."""
        updated = tuple(sorted(rows[0].keys() - set(unique)))
        session.execute(_upsert_statement(self.engine.name, model, unique, updated), rows)

    def _set_trial_param(
        self,
        trial_id: int,
        param_name: str,
        param_value_internal: float,
        distribution: BaseDistribution,
        previous_distribution: BaseDistribution | None,
    ) -> None:
        args = (param_name, param_value_internal, distribution, previous_distribution)
        if not self._held(trial_id, ("param", *args)):
            super()._set_trial_param(trial_id, *args)

    def set_trial_intermediate_value(self, trial_id: int, step: int, value: float) -> None:
        self._batch.created = None
        super().set_trial_intermediate_value(trial_id, step, value)

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        if not self._held(trial_id, ("user", key, value)):
            super().set_trial_user_attr(trial_id, key, value)

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        if not self._held(trial_id, ("system", key, value)):
            super().set_trial_system_attr(trial_id, key, value)

    def set_trial_state_values(
        self, trial_id: int, state: TrialState, values: Sequence[float] | None = None
    ) -> bool:
        """As RDBStorage's, with the objective values written in one statement (RDBStorage
        looks each up and inserts it on its own: two round trips per objective)."""
        self._batch.created = None
        if values is None or self.engine.name not in _UPSERTS:
            return super().set_trial_state_values(trial_id, state, values)
        value_model = rdb_models.TrialValueModel
        try:
            with _create_scoped_session(self.scoped_session) as session:
                trial = rdb_models.TrialModel.find_or_raise_by_id(
                    trial_id, session, for_update=True
                )
                self.check_trial_is_updatable(trial_id, trial.state)
                rows = []
                for objective, value in enumerate(values):
                    stored, value_type = value_model.value_to_stored_repr(value)
                    rows.append(
                        {
                            "trial_id": trial_id,
                            "objective": objective,
                            "value": stored,
                            "value_type": value_type,
                        }
                    )
                self._upsert(session, value_model, rows, unique=("trial_id", "objective"))
                if state == TrialState.RUNNING and trial.state != TrialState.WAITING:
                    return False
                trial.state = state
                if state == TrialState.RUNNING:
                    trial.datetime_start = datetime.now()
                if state.is_finished():
                    trial.datetime_complete = datetime.now()
        except IntegrityError:
            return False
        return True

    def _get_trials(
        self,
        study_id: int,
        states: Container[TrialState] | None,
        included_trial_ids: set[int],
        trial_id_greater_than: int,
    ) -> list[FrozenTrial]:
        listed = [i for i in included_trial_ids if i <= trial_id_greater_than]
        params = {"study_id": study_id, "after": trial_id_greater_than, "listed": listed}
        if listed and trial_id_greater_than > -1:
            where = "newer_or_listed"
        else:
            where = "newer" if trial_id_greater_than > -1 else "study"
        with self._reading() as session:
            trials = self._read_trials(session, where, params, states=states)
            if not trials:  # a study that has trials exists: look it up only when none came
                rdb_models.StudyModel.find_or_raise_by_id(study_id, session)
            return trials

    def _create_new_trial(
        self, study_id: int, template_trial: FrozenTrial | None = None
    ) -> FrozenTrial:
        trial = super()._create_new_trial(study_id, template_trial)
        # Study.ask reads a new trial back at once (see get_trial); one made from a template
        # (enqueue_trial, add_trial) is changed first.
        self._batch.created = trial if template_trial is None else None
        return trial

    def _get_prepared_new_trial(
        self, study_id: int, template_trial: FrozenTrial | None, session: Any
    ) -> Any:
        # Optuna numbers a new trial by counting the study's trials before it, a read of every
        # one of them (milliseconds at 10,000 trials). Trials are created one at a time per
        # study (Optuna's caller holds the study's row lock; SQLite, its file lock) and never
        # deleted alone: the number of the study's latest trial before this one, + 1, is that
        # count, and the primary key's index finds that trial at once.
        if template_trial is not None:  # queued or added trials, numbered as Optuna does
            return super()._get_prepared_new_trial(study_id, template_trial, session)
        trial = rdb_models.TrialModel(
            study_id=study_id, number=None, state=TrialState.RUNNING, datetime_start=datetime.now()
        )
        session.add(trial)
        session.flush()  # its trial_id
        params = {"study_id": study_id, "trial_id": trial.trial_id}
        latest = session.execute(_NUMBER_BEFORE, params).scalar()
        trial.number = 0 if latest is None else latest + 1
        return trial

    def get_trial(self, trial_id: int) -> FrozenTrial:
        # Optuna's cache asks the database for every running trial it is given: the search
        # reads its own trial three times (ask, constraint, tell). The first, right after
        # creating it, is what creating it returned.
        created, self._batch.created = getattr(self._batch, "created", None), None
        if created is not None and created._trial_id == trial_id:
            return copy.deepcopy(created)
        with self._reading() as session:
            found = self._read_trials(session, "trial", {"trial_id": trial_id})
        if not found:
            raise KeyError(rdb_models.NOT_FOUND_MSG)
        return found[0]

    def _read_trials(
        self,
        session: Any,
        where: str,
        params: dict[str, Any],
        *,
        states: Container[TrialState] | None = None,
    ) -> list[FrozenTrial]:
        """The trials that ``where`` (a key of :func:`_trial_reads`, with its ``params``)
        selects, and of ``states``, read with SQL expressions instead of RDBStorage's ORM
        objects, and built by Optuna's own code. Optuna's cache in front of the storage reads
        every running trial again for each ``get_trials``: through the ORM, a read of 64 running
        trials with their parameters and attributes took ~85 ms of CPU."""
        trials, children = _trial_reads(where, states is not None)
        if states is not None:
            params = {**params, "states": list(states)}
        found = {
            row.trial_id: SimpleNamespace(**row._asdict(), **{name: [] for name, *_ in _CHILD_ROWS})
            for row in session.execute(trials, params)
        }
        for row in session.execute(children, params):
            if row.trial_id in found:  # not one added since, or of another state
                name, _, _, build = _CHILD_ROWS[row.kind]
                getattr(found[row.trial_id], name).append(build(row))
        model = rdb_models.TrialModel
        for row in found.values():
            row.datetime_start = model.datetime_start.fget(row)
            row.datetime_complete = model.datetime_complete.fget(row)
        return [self._build_frozen_trial_from_trial_model(row) for row in found.values()]

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        stale = super()._get_stale_trial_ids(study_id)
        # Optuna's RDBStorage skips RUNNING trials that never recorded a heartbeat: one whose
        # process died right after creating it would stay RUNNING forever.
        grace = timedelta(seconds=self.grace_period or 2 * (self.heartbeat_interval or 0))
        # Optuna stores trial times as naive UTC.
        oldest = datetime.now(UTC).replace(tzinfo=None) - grace
        with self.scoped_session() as session:
            never_beat = (
                session.query(rdb_models.TrialModel.trial_id)
                .filter(rdb_models.TrialModel.study_id == study_id)
                .filter(rdb_models.TrialModel.state == TrialState.RUNNING)
                .filter(rdb_models.TrialModel._datetime_start_utc < oldest)
                .filter(~rdb_models.TrialModel.heartbeats.any())
                .all()
            )
            session.rollback()
        return _label_stale(self, stale + [row[0] for row in never_beat if row[0] not in stale])


class PatientRDBStorage(HeartbeatRDBStorage):
    """``RDBStorage`` that waits out a database server that is briefly unreachable instead of
    failing the calling process: a call that failed on the connection is retried, with backoff,
    for up to ``patience_s`` seconds (then its error is raised). The pool pings connections
    before use, so those cut by a restart are replaced.

    Retrying a write whose commit reached the server but whose answer was lost is safe for the
    writes a search makes: attributes and parameters are upserts, a state change that turns out
    to be done already counts as done, and a trial created twice is a RUNNING trial without
    heartbeats, which heartbeats fail as stale (see :meth:`_get_stale_trial_ids`)."""

    patience_s = DB_PATIENCE_S


_ATTR_MODELS = {
    "user": rdb_models.TrialUserAttributeModel,
    "system": rdb_models.TrialSystemAttributeModel,
}


def _child_columns(model: Any, name: Any, number: Any, text: Any, label: Any, index: Any) -> tuple:
    """``model``'s columns as the uniform row of :meth:`HeartbeatRDBStorage._read_trials`'s
    union: row id, trial id, and a name, number, text, enum label and index (or NULL)."""

    def typed(column: Any, kind: Any) -> Any:
        return cast(null(), kind) if column is None else cast(column, kind)

    return (
        model.__table__.primary_key.columns.values()[0].label("row_id"),
        model.trial_id.label("trial_id"),
        typed(name, String).label("name"),
        typed(number, Float).label("number"),
        typed(text, Text).label("text"),
        typed(label, String).label("label"),  # an enum's name, as the column stores it
        typed(index, Integer).label("index"),
    )


_values, _intermediate = rdb_models.TrialValueModel, rdb_models.TrialIntermediateValueModel
_params, _user, _system = rdb_models.TrialParamModel, _ATTR_MODELS["user"], _ATTR_MODELS["system"]
# What a trial is built from: RDBStorage's relationships of TrialModel, each as the union's
# columns and what Optuna's _build_frozen_trial_from_trial_model reads of a row.
_CHILD_ROWS = [
    (
        "params",
        _params,
        _child_columns(
            _params, _params.param_name, _params.param_value, _params.distribution_json, None, None
        ),
        lambda r: SimpleNamespace(
            param_id=r.row_id, param_name=r.name, param_value=r.number, distribution_json=r.text
        ),
    ),
    (
        "values",
        _values,
        _child_columns(_values, None, _values.value, None, _values.value_type, _values.objective),
        lambda r: SimpleNamespace(
            objective=r.index, value=r.number, value_type=_values.TrialValueType[r.label]
        ),
    ),
    (
        "user_attributes",
        _user,
        _child_columns(_user, _user.key, None, _user.value_json, None, None),
        lambda r: SimpleNamespace(key=r.name, value_json=r.text),
    ),
    (
        "system_attributes",
        _system,
        _child_columns(_system, _system.key, None, _system.value_json, None, None),
        lambda r: SimpleNamespace(key=r.name, value_json=r.text),
    ),
    (
        "intermediate_values",
        _intermediate,
        _child_columns(
            _intermediate,
            None,
            _intermediate.intermediate_value,
            None,
            _intermediate.intermediate_value_type,
            _intermediate.step,
        ),
        lambda r: SimpleNamespace(
            step=r.index,
            intermediate_value=r.number,
            intermediate_value_type=_intermediate.TrialIntermediateValueType[r.label],
        ),
    ),
]


@functools.cache
def _trial_reads(where: str, by_state: bool) -> tuple[Any, Any]:
    """The two statements of :meth:`HeartbeatRDBStorage._read_trials`: the trials that
    ``where`` selects (``trial``: one by ``trial_id``; ``study``: a ``study_id``'s; ``newer``:
    those above ``after``; ``newer_or_listed``: or in ``listed``), in ``states`` if
    ``by_state``; and the five kinds of rows they have, in one query (each round trip costs
    ~0.5 ms). Built once: building and keying them took about half of each read's time."""
    trial = rdb_models.TrialModel
    in_study = trial.study_id == bindparam("study_id")
    newer = trial.trial_id > bindparam("after")
    criteria = {
        "trial": [trial.trial_id == bindparam("trial_id")],
        "study": [in_study],
        "newer": [in_study, newer],
        "newer_or_listed": [
            in_study,
            or_(trial.trial_id.in_(bindparam("listed", expanding=True)), newer),
        ],
    }[where]
    # Not by state: a trial may change state between the two statements, and keeps its rows.
    ids = select(trial.trial_id).where(*criteria).scalar_subquery()
    if by_state:
        criteria = [*criteria, trial.state.in_(bindparam("states", expanding=True))]
    columns = (
        trial.trial_id,
        trial.number,
        trial.state,
        trial._datetime_start_utc,
        trial._datetime_complete_utc,
    )
    trials = select(*columns).where(*criteria).order_by(trial.trial_id)
    kinds = [
        select(literal(kind, Integer).label("kind"), *columns).where(model.trial_id.in_(ids))
        for kind, (_, model, columns, _) in enumerate(_CHILD_ROWS)
    ]
    query = union_all(*kinds).subquery()
    return trials, select(query).order_by(query.c.kind, query.c.row_id)


# Databases whose INSERT ... ON CONFLICT DO UPDATE takes many rows (as Optuna's upserts do one).
_UPSERTS = {"postgresql": postgresql_insert, "sqlite": sqlite_insert}

_NUMBER_BEFORE = (
    select(rdb_models.TrialModel.number)
    .where(
        rdb_models.TrialModel.study_id == bindparam("study_id"),
        rdb_models.TrialModel.trial_id < bindparam("trial_id"),
    )
    .order_by(rdb_models.TrialModel.trial_id.desc())
    .limit(1)
)
_TRIAL_STATE = select(rdb_models.TrialModel.state).where(
    rdb_models.TrialModel.trial_id == bindparam("trial_id")
)


@functools.cache
def _upsert_statement(dialect: str, model: Any, unique: tuple, updated: tuple) -> Any:
    """INSERT into ``model``'s table that overwrites the ``updated`` columns of a row whose
    ``unique`` columns exist; built once (building it cost more than running it)."""
    # Every column bound by name: executemany then sends rows with a NULL in one batch too.
    columns = (*unique, *updated)
    statement = _UPSERTS[dialect](model).values({column: bindparam(column) for column in columns})
    return statement.on_conflict_do_update(
        index_elements=[getattr(model, column) for column in unique],
        set_={column: getattr(statement.excluded, column) for column in updated},
    )


class TrialCache(_CachedStorage):
    """Optuna's cache of a database study's trials, with each state's trial numbers kept apart.

    Optuna's cache lists a study's trials by sorting every cached trial object on each read, and
    filters them by state one trial at a time; a trial reads the list twice when it is asked for
    (the queued-trial check, the sampler), which costs milliseconds per trial at 10,000 trials.
    Here each state's numbers are kept as they change (every trial enters the cache through
    ``_add_trials_to_cache``), so a read sorts integers and picks the trials, and a read of
    one rare state (the queued trials) touches only those. What a read returns is unchanged:
    the trials in ``states``, by number."""

    def __init__(self, backend: RDBStorage) -> None:
        super().__init__(backend)
        self._numbers: dict[int, dict[TrialState, dict[int, None]]] = {}

    @property
    def backend(self) -> RDBStorage:
        return self._backend

    def _add_trials_to_cache(self, study_id: int, trials: list[FrozenTrial]) -> None:
        cached = self._studies[study_id].trials
        numbers = self._numbers.setdefault(study_id, {})
        for trial in trials:
            old = cached.get(trial.number)
            if old is not None:
                numbers[old.state].pop(trial.number, None)
            numbers.setdefault(trial.state, {})[trial.number] = None
        super()._add_trials_to_cache(study_id, trials)

    def get_all_trials(
        self,
        study_id: int,
        deepcopy: bool = True,
        states: Container[TrialState] | None = None,
    ) -> list[FrozenTrial]:
        self._read_trials_from_remote_storage(study_id)
        with self._lock:
            cached = self._studies[study_id].trials
            if states is None:
                numbers = sorted(cached)
            else:
                by_state = self._numbers.get(study_id, {})
                numbers = sorted(chain.from_iterable(by_state[s] for s in by_state if s in states))
            trials = list(map(cached.__getitem__, numbers))
        return copy.deepcopy(trials) if deepcopy else trials

    def delete_study(self, study_id: int) -> None:
        super().delete_study(study_id)
        with self._lock:
            self._numbers.pop(study_id, None)


@contextlib.contextmanager
def one_transaction(trial: optuna.Trial) -> Iterator[None]:
    """Write the parameters and attributes that ``trial`` gets inside the block in one database
    transaction when it ends, instead of one each: a suggestion writes dozens, and each costs a
    round trip of ~2 ms on PostgreSQL. Other processes see them when the block ends, and reads
    inside the block see them only through ``trial`` itself (its own cache). Storages that are
    not a database (the journal file) write as usual."""
    storage = getattr(trial.storage, "_backend", trial.storage)  # Optuna's cache in front
    if not isinstance(storage, HeartbeatRDBStorage):
        yield
        return
    with storage.batching(trial._trial_id):
        yield


def _label_stale(storage: BaseStorage, trial_ids: list[int]) -> list[int]:
    """Record why each stale trial is about to be failed, while it can still be written (Optuna
    fails it first and queues its retry after): a process that dies in between, or a retry
    callback out of retries, still leaves a failed trial with its reason. A trial that finished
    meanwhile is not stale after all and is left out."""
    labelled = []
    for trial_id in trial_ids:
        try:
            storage.set_trial_user_attr(trial_id, "fail_reason", STALE_REASON)
        except UpdateFinishedTrialError:
            continue
        labelled.append(trial_id)
    return labelled


for _name in (
    "create_new_study",
    "delete_study",
    "set_study_user_attr",
    "set_study_system_attr",
    "get_study_id_from_name",
    "get_study_name_from_id",
    "get_study_directions",
    "get_study_user_attrs",
    "get_study_system_attrs",
    "get_all_studies",
    "create_new_trial",
    "set_trial_param",
    "set_trial_state_values",
    "set_trial_intermediate_value",
    "set_trial_user_attr",
    "set_trial_system_attr",
    "get_trial_id_from_study_id_trial_number",
    "get_trial",
    "get_trial_param",
    "get_trial_user_attrs",
    "get_trial_system_attrs",
    "get_all_trials",
    "get_best_trial",
    "record_heartbeat",
    "_get_stale_trial_ids",
    "_write_batch",
    # What Optuna's _CachedStorage (which wraps every RDBStorage a Study holds) calls instead.
    "_create_new_trial",
    "_set_trial_param",
    "_get_trials",
    "_get_best_trial_id",
):
    setattr(PatientRDBStorage, _name, _patient(getattr(PatientRDBStorage, _name)))


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
        # (The ping costs ~20 ms per trial on a local PostgreSQL; without it, the retry after a
        # restart widens the window between failing a stale trial and queueing its retry.)
        engine_kwargs = {"pool_pre_ping": True}
    try:
        return TrialCache(_open_rdb(url, engine_kwargs=engine_kwargs, beat=beat))
    except ImportError as err:  # Optuna re-raises the driver's ModuleNotFoundError as this
        missing = getattr(err.__cause__, "name", None) or "its database driver"
        raise ConfigError(
            f"The storage URL {redact(url)!r} needs {missing!r}, which is not installed "
            "(PostgreSQL: pip install autocompress[postgres])."
        ) from None


def _open_rdb(url: str, *, engine_kwargs: dict, beat: dict) -> RDBStorage:
    # A database server (not a SQLite file) that is unreachable may be restarting: wait for it
    # as PatientRDBStorage does later on.
    patient = not url.startswith("sqlite")
    deadline = time.monotonic() + DB_PATIENCE_S
    while True:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                kind = PatientRDBStorage if patient else HeartbeatRDBStorage
                return kind(url, engine_kwargs=engine_kwargs, **beat)
        except (SQLAlchemyError, StorageInternalError) as err:
            # RDBStorage's set-up raises either, depending on the step that lost the server.
            if not (patient and _connection_lost(err) and time.monotonic() < deadline):
                cause = err.__cause__ if isinstance(err, StorageInternalError) else err
                raise DamagedFileError(unreadable_storage_message(url, cause or err)) from None
            time.sleep(0.5)


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
