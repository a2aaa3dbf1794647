"""Workers sharing one study (``autocompress worker``): on a journal file, SQLite and PostgreSQL,
with heartbeats failing and retrying the trial of a worker that died."""

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from optuna.trial import TrialState
from typer.testing import CliRunner

from autocompress.cli import app
from autocompress.config import ConfigError, WorkerConfig, parse_config
from autocompress.core import RunLockedError, trials_dataframe
from autocompress.core.files import RunLock
from autocompress.search import run_search, run_worker
from autocompress.search.storage import (
    HEARTBEAT_ATTR,
    STALE_REASON,
    HeartbeatJournalStorage,
    RetryStaleTrial,
    make_storage,
)
from autocompress.search.study import open_study


@pytest.fixture
def fast_config(tiny_config_dict):
    """The tiny config, one epoch each, heartbeats every second, one torch thread per worker."""
    tiny_config_dict["teacher"]["epochs"] = 1
    tiny_config_dict["train"]["epochs"] = 1
    tiny_config_dict["search"]["worker"] = {
        "heartbeat_interval": 1,
        "grace_period": 2,
        "threads": 1,
    }
    return tiny_config_dict


def _write(config: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def _worker(config_file: Path, *, storage: str, n_trials: int, runs: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "autocompress.cli", "worker", str(config_file)]
    command += ["--storage", storage, "--n-trials", str(n_trials), "--runs-dir", str(runs)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    """A throwaway PostgreSQL server on 127.0.0.1 (Debian's postgresql package), or a skip."""
    if not any(importlib.util.find_spec(m) for m in ("psycopg", "psycopg2")):
        pytest.skip("no PostgreSQL driver: pip install autocompress[postgres]")
    bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    initdb = shutil.which("initdb") or (str(bins[-1]) if bins else None)
    if initdb is None:
        pytest.skip("PostgreSQL server binaries not found (apt-get install postgresql)")
    pg_ctl = str(Path(initdb).with_name("pg_ctl"))
    # The server refuses to run as root: run it as the 'postgres' user the package creates.
    as_user: list[str] = []
    root = tempfile.mkdtemp(prefix="autocompress-pg-")
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            pytest.skip("running as root and runuser is missing: cannot start PostgreSQL")
        try:
            shutil.chown(root, user="postgres")
        except LookupError:
            pytest.skip("running as root and there is no 'postgres' user to run PostgreSQL")
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = f"{root}/data", _free_port()
    init = subprocess.run(
        [*as_user, initdb, "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8"],
        capture_output=True,
        text=True,
    )
    if init.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"initdb failed: {init.stderr.strip()[-300:]}")
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1"
    start = subprocess.run(
        [*as_user, pg_ctl, "-D", data, "-o", options, "-l", f"{root}/log", "-w", "-t", "60"]
        + ["start"],
        capture_output=True,
        text=True,
    )
    if start.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"PostgreSQL did not start: {start.stdout.strip()[-300:]}")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", data, "-m", "immediate", "stop"], check=False)
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["journal", "sqlite", "postgresql"])
def test_n_workers_times_m_trials_share_one_study(tmp_path, fast_config, kind, request):
    storage = {
        "journal": f"journal:{tmp_path}/shared/journal.log",
        "sqlite": f"sqlite:///{tmp_path}/shared/study.db",
    }.get(kind) or request.getfixturevalue("postgres_url")
    config_file = _write(fast_config, tmp_path / "tiny.yaml")
    runs = tmp_path / "runs"
    n_workers, m_trials = 2, 2
    workers = [
        _worker(config_file, storage=storage, n_trials=m_trials, runs=runs)
        for _ in range(n_workers)
    ]
    for worker in workers:
        output, _ = worker.communicate(timeout=300)
        assert worker.returncode == 0, output

    study = optuna.load_study(study_name="tiny", storage=make_storage(storage))
    numbers = [t.number for t in study.trials]
    assert sorted(numbers) == list(range(n_workers * m_trials))
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    assert study.user_attrs["workers_joined"] == n_workers
    # Distinctly seeded samplers: the workers did not suggest the same candidates in lockstep.
    assert len({json.dumps(t.params, sort_keys=True) for t in study.trials}) > 1
    # One teacher for all, and the result tables of the whole study.
    assert (runs / "tiny" / "teacher" / "spec.json").is_file()
    assert len(pd.read_csv(runs / "tiny" / "trials.csv")) == len(trials_dataframe(study))


@pytest.mark.slow
def test_a_killed_workers_trial_is_failed_by_its_heartbeat_and_retried(tmp_path, fast_config):
    fast_config["train"]["epochs"] = 10  # long enough (~1 s) to be killed mid-trial
    config_file = _write(fast_config, tmp_path / "tiny.yaml")
    storage = f"sqlite:///{tmp_path}/study.db"
    runs = tmp_path / "runs"
    victim = _worker(config_file, storage=storage, n_trials=3, runs=runs)
    try:
        marker = _wait_for(lambda: next((runs / "tiny" / "trials").glob("*/worker.json"), None))
        assert json.loads(marker.read_text())["pid"] == victim.pid
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)
    finally:
        victim.kill()
        victim.communicate()
    study = optuna.load_study(study_name="tiny", storage=storage)
    running = study.get_trials(states=(TrialState.RUNNING,))
    assert len(running) == 1  # left behind by the dead worker
    dead = running[0]

    # grace_period is 2 s without a heartbeat; SQLite's clock has 1 s steps, so wait longer.
    time.sleep(4)
    result = run_worker(parse_config(fast_config), storage=storage, n_trials=1, runs_dir=runs)

    trials = {t.number: t for t in result.study.trials}
    assert trials[dead.number].state == TrialState.FAIL
    retry = [t for t in trials.values() if t.user_attrs.get("retry_of") == dead.number]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE
    assert retry[0].params == dead.params
    reason = result.trials.set_index("number").loc[dead.number, "fail_reason"]
    assert reason.startswith("stale") and f"trial {retry[0].number}" in reason


def _wait_for(find, *, timeout: float = 240.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = find()
        if found:
            return found
        time.sleep(0.02)
    raise TimeoutError("gave up waiting")


def test_journal_storage_heartbeats_fail_and_retry_stale_trials(tmp_path):
    storage = HeartbeatJournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "journal.log")),
        heartbeat_interval=1,
        grace_period=5,
        heartbeat_stale_trial_callback=RetryStaleTrial(max_retry=1),
    )
    study = optuna.create_study(storage=storage, directions=["maximize", "minimize"])
    alive, dead = study.ask(), study.ask()
    for trial in (alive, dead):
        trial.suggest_categorical("x", [1, 2, 3])
        storage.record_heartbeat(trial._trial_id)
    storage.set_trial_system_attr(dead._trial_id, HEARTBEAT_ATTR, time.time() - 60)
    record = {"trial": dead.number, "accuracy": 0.9, "costs": [1.0]}
    storage.set_trial_user_attr(dead._trial_id, "rung.1", record)

    optuna.storages.fail_stale_trials(study)

    states = {t.number: t.state for t in study.trials}
    assert states[alive.number] == TrialState.RUNNING and states[dead.number] == TrialState.FAIL
    assert study.trials[dead.number].user_attrs["fail_reason"] == STALE_REASON
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert len(waiting) == 1 and waiting[0].user_attrs["retry_of"] == dead.number
    assert "fail_reason" not in waiting[0].user_attrs
    assert waiting[0].params == {"x": dead.params["x"]}
    assert HEARTBEAT_ATTR not in waiting[0].system_attrs  # else it would look stale at once
    assert "rung.1" not in waiting[0].user_attrs  # the retry measures its own rungs
    # A finished trial's late heartbeat is ignored, not an error.
    study.tell(alive, [1.0, 1.0])
    storage.record_heartbeat(alive._trial_id)


def test_worker_refuses_a_study_made_by_another_config(tmp_path, fast_config):
    storage = f"journal:{tmp_path}/journal.log"
    fast_config["search"]["storage"] = storage
    study, _ = open_study(parse_config(fast_config), tmp_path)
    study.enqueue_trial({})  # the study holds a trial: it belongs to that config now
    fast_config["train"]["lr"] = 0.5
    with pytest.raises(ConfigError, match="different config"):
        run_worker(parse_config(fast_config), runs_dir=tmp_path / "runs")


def test_workers_and_a_single_search_refuse_each_other(tmp_path, fast_config):
    config = parse_config(fast_config)
    lock = tmp_path / "tiny" / "search.lock"
    with RunLock(lock):  # a single-process search holds the run
        with pytest.raises(RunLockedError, match=r"A search \(pid \d+ on .*before starting"):
            run_worker(config, storage=f"journal:{tmp_path}/x.log", runs_dir=tmp_path)
    with RunLock(lock, shared=True), RunLock(lock, shared=True):  # workers share it
        with pytest.raises(RunLockedError, match="`autocompress worker` processes are running"):
            run_search(config, runs_dir=tmp_path)


def test_worker_command_needs_a_storage(tmp_path, fast_config):
    config_file = _write(fast_config, tmp_path / "tiny.yaml")
    result = CliRunner().invoke(app, ["worker", str(config_file), "--runs-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "--storage" in result.output and "search.storage" in result.output


@pytest.mark.slow
def test_the_default_backend_and_the_workers_do_not_import_ray():
    code = "import sys, autocompress.cli, autocompress.search; assert 'ray' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_plain_postgresql_url_uses_the_installed_driver(monkeypatch):
    from autocompress.search import storage

    installed = {"psycopg2"}  # only the older driver, as with psycopg2-binary alone
    monkeypatch.setattr(
        storage.importlib.util, "find_spec", lambda name: object() if name in installed else None
    )
    url = "postgresql://user@db.example:5432/runs"
    assert storage._postgres_driver(url) == "postgresql+psycopg2://user@db.example:5432/runs"
    installed.clear()
    with pytest.raises(ConfigError, match=r"autocompress\[postgres\]"):
        storage._postgres_driver(url)
    assert storage.redact("postgresql://me:secret@db/x") == "postgresql://me:***@db/x"


def test_the_budget_lets_exactly_n_trials_start_across_workers():
    from autocompress.search.worker import StudyBudget

    study = optuna.create_study(directions=["maximize"])
    study.tell(study.ask(), [1.0])
    first, second = study.ask(), study.ask()  # two workers took the last free slot at once
    budget = StudyBudget(2)
    assert budget.has_room(study) is False  # 1 done + 2 running: wait

    def objective(trial):
        return [0.5]

    assert budget.guard(objective)(first) == [0.5]  # numbered first: it has the slot
    with pytest.raises(optuna.TrialPruned, match="not needed"):
        budget.guard(objective)(second)
    # A pruned retry is queued again: the candidate of the trial it retries is still owed.
    retry = study.ask(fixed_distributions={})
    retry.set_user_attr("retry_of", 0)
    with pytest.raises(optuna.TrialPruned, match="queued again"):
        budget.guard(objective)(retry)
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert [t.user_attrs["retry_of"] for t in waiting] == [retry.number]
    study.tell(first, [0.5])
    assert budget.has_room(study) is None  # 2 done: the study is complete
    # The retry queued again is not needed any more: closed, unrun, with the reason.
    budget.drop_waiting(study)
    dropped = study.trials[-1]
    assert (
        dropped.state == TrialState.PRUNED and "not needed" in dropped.user_attrs["pruned_reason"]
    )


def test_a_lost_database_connection_is_waited_out(tmp_path, monkeypatch):
    from optuna.exceptions import StorageInternalError
    from sqlalchemy.exc import OperationalError, PendingRollbackError

    from autocompress.search import storage as storages

    db = storages.PatientRDBStorage(f"sqlite:///{tmp_path}/s.db")
    study_id = db.create_new_study([optuna.study.StudyDirection.MAXIMIZE], "s")
    # The server closed the connection; then the session that held it cannot reconnect until
    # rolled back (what a PostgreSQL restart mid-commit gives).
    errors = [
        OperationalError("SELECT", {}, Exception("server closed the connection")),
        PendingRollbackError("Can't reconnect until invalid transaction is rolled back."),
    ]
    down = {"calls": len(errors)}
    original = optuna.storages.RDBStorage.get_study_directions

    def flaky(self, study_id):
        if down["calls"]:
            down["calls"] -= 1
            raise StorageInternalError("commit failed") from errors[down["calls"]]
        return original(self, study_id)

    monkeypatch.setattr(optuna.storages.RDBStorage, "get_study_directions", flaky)
    monkeypatch.setattr(
        storages.PatientRDBStorage, "get_study_directions", storages._patient(flaky)
    )
    assert db.get_study_directions(study_id) == [optuna.study.StudyDirection.MAXIMIZE]
    assert down["calls"] == 0
    # Errors that are not about the connection are raised at once.
    monkeypatch.setattr(
        storages.PatientRDBStorage, "get_study_directions", storages._patient(lambda self, i: 1 / 0)
    )
    with pytest.raises(ZeroDivisionError):
        db.get_study_directions(study_id)


@pytest.mark.parametrize("url", ["journal:{}/journal.log", "sqlite:///{}/study.db"])
def test_a_stale_trial_failed_by_a_process_that_dies_before_its_retry_is_still_retried(
    tmp_path, url
):
    beat = WorkerConfig(heartbeat_interval=1, grace_period=1)
    storage = make_storage(url.format(tmp_path), heartbeat=beat)
    study = optuna.create_study(storage=storage, directions=["maximize"])
    dead = study.ask()
    dead.suggest_categorical("x", [1, 2])
    storage.record_heartbeat(dead._trial_id)
    time.sleep(2.2)  # SQLite's clock has 1 s steps

    class Killed(BaseException):
        pass

    def killed_before_the_retry(study, trial):
        raise Killed

    beating = getattr(storage, "backend", storage)  # a database's is behind its trial cache
    retry = beating.heartbeat_stale_trial_callback
    beating.heartbeat_stale_trial_callback = killed_before_the_retry
    with pytest.raises(Killed):
        optuna.storages.fail_stale_trials(study)

    failed = study.trials[dead.number]
    assert failed.state == TrialState.FAIL and failed.user_attrs["fail_reason"] == STALE_REASON
    assert trials_dataframe(study).loc[0, "fail_reason"] == STALE_REASON

    # The retry is still owed: the other workers wait for it (the study of one trial is not
    # done), and after the grace period one of them queues it.
    from autocompress.search.worker import StudyBudget

    beating.heartbeat_stale_trial_callback = retry
    assert StudyBudget(1, grace_s=60).has_room(study) is False
    assert study.get_trials(states=(TrialState.WAITING,)) == []
    budget = StudyBudget(1, grace_s=0)
    assert budget.has_room(study) is True
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert [t.user_attrs["retry_of"] for t in waiting] == [dead.number]
    assert budget.has_room(study) is True  # queued once
    # The dying process's own retry arrives late after all: the later copy is skipped.
    retry(study, study.trials[dead.number])
    first, second = study.ask(), study.ask()
    assert first.user_attrs["retry_of"] == second.user_attrs["retry_of"] == dead.number
    with pytest.raises(optuna.TrialPruned, match=f"trial {first.number} already retries"):
        budget.guard(lambda trial: [1.0])(second)
    assert budget.guard(lambda trial: [1.0])(first) == [1.0]


def test_a_trial_that_never_beat_is_stale_after_the_grace_period(tmp_path):
    from autocompress.search.storage import PatientRDBStorage

    db = PatientRDBStorage(f"sqlite:///{tmp_path}/s.db", heartbeat_interval=1, grace_period=1)
    study = optuna.create_study(storage=db, directions=["maximize"])
    orphan = study.ask()  # its process died before its first heartbeat
    beating = study.ask()
    db.record_heartbeat(beating._trial_id)
    assert db._get_stale_trial_ids(study._study_id) == []
    time.sleep(2.2)
    db.record_heartbeat(beating._trial_id)
    assert db._get_stale_trial_ids(study._study_id) == [orphan._trial_id]


@pytest.mark.slow
def test_a_trial_taken_over_by_another_worker_does_not_stop_this_one(
    tmp_path, fast_config, monkeypatch
):
    """While the database was unreachable, another worker failed this worker's running trial as
    stale and queued it again; Optuna then refuses this worker's tell ("Cannot tell a FAIL
    trial"). The worker drops that result and goes on with the study."""
    from autocompress.search.objective import TrialObjective

    fast_config["search"]["n_trials"] = 3
    original = TrialObjective.__call__
    taken: list[int] = []

    def taken_over(self, trial):
        values = original(self, trial)
        if not taken:  # as RetryStaleTrial does in the other worker
            taken.append(trial.number)
            trial.study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            trial.study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
        return values

    monkeypatch.setattr(TrialObjective, "__call__", taken_over)
    storage = f"sqlite:///{tmp_path}/study.db"
    result = run_worker(parse_config(fast_config), storage=storage, runs_dir=tmp_path / "runs")

    trials = {t.number: t for t in result.study.trials}
    assert trials[taken[0]].state == TrialState.FAIL
    (retry,) = [t for t in trials.values() if t.user_attrs.get("retry_of") == taken[0]]
    assert retry.state == TrialState.COMPLETE
    assert sum(t.state == TrialState.COMPLETE for t in trials.values()) == 3


def test_a_workers_threads_each_take_the_next_trial_when_theirs_ends(
    tmp_path, fast_config, monkeypatch
):
    """With ``search.n_jobs`` threads, a thread whose trial ended does not wait for the others'
    trials: while one long trial runs, the other thread runs the short ones."""
    from autocompress.search import worker as worker_module

    fast_config["search"].update(n_trials=8, n_jobs=2)
    config = parse_config(fast_config)
    values = [1.0] * len(config.objectives())

    class Timed:
        def __init__(self, setup):
            pass

        def __call__(self, trial):
            trial.suggest_int("x", 0, 10**6)
            time.sleep(1.5 if trial.number == 0 else 0.05)
            return values

        def callbacks(self):
            return []

    monkeypatch.setattr(worker_module, "TrialObjective", Timed)
    storage = f"journal:{tmp_path}/journal.log"
    run_worker(config, storage=storage, runs_dir=tmp_path / "runs")

    study = optuna.load_study(study_name=config.name, storage=make_storage(storage))
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 8
    long = next(t for t in trials if t.number == 0)
    during = [t for t in trials if t.number and t.datetime_complete < long.datetime_complete]
    assert len(during) >= 4, [(t.number, t.datetime_complete) for t in trials]


def test_a_trial_written_in_one_transaction(tmp_path):
    """A suggestion's parameters and attributes reach a database in one commit (each costs a
    round trip on PostgreSQL), in full, readable by other processes after the block."""
    from sqlalchemy import event

    from autocompress.search.storage import one_transaction

    storage = make_storage(f"sqlite:///{tmp_path}/study.db").backend
    study = optuna.create_study(storage=storage, study_name="s", directions=["maximize"])
    commits, writing = [], []  # transactions that wrote

    def statement(conn, cursor, sql, *args):
        writing.extend([sql] if sql.lstrip().upper().startswith(("INSERT", "UPDATE")) else [])

    def commit(conn):
        commits.extend([len(writing)] if writing else [])
        writing.clear()

    trial = study.ask()
    event.listen(storage.engine, "before_cursor_execute", statement)
    event.listen(storage.engine, "commit", commit)
    with one_transaction(trial):
        values = [trial.suggest_categorical(f"x{i}", [1, 2, 3]) for i in range(6)]
        for i in range(6):
            trial.set_user_attr(f"a{i}", i)
        trial.set_constraint("max_latency_ms", -1.0)
        assert trial.params == {f"x{i}": v for i, v in enumerate(values)}  # its own cache
        assert commits == []
    assert len(commits) == 1
    other = optuna.load_study(
        study_name="s", storage=make_storage(f"sqlite:///{tmp_path}/study.db")
    )
    seen = other.trials[trial.number]
    assert seen.params == trial.params and seen.user_attrs == {f"a{i}": i for i in range(6)}
    assert seen.system_attrs["constraints:max_latency_ms"] == -1.0
    # Outside the block, each write commits on its own, as before.
    trial.set_user_attr("b", 1)
    assert len(commits) == 2
    # A failure inside the block keeps what was written before it.
    second = study.ask()
    with pytest.raises(RuntimeError), one_transaction(second):
        second.set_user_attr("before", True)
        raise RuntimeError("building the candidate failed")
    assert other.trials[second.number].user_attrs == {"before": True}


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    if request.param == "postgresql":
        return request.getfixturevalue("postgres_url")
    return f"sqlite:///{tmp_path}/study.db"


def test_the_fast_read_of_trials_equals_optunas(database_url):
    from autocompress.search.storage import HeartbeatRDBStorage

    storage = make_storage(database_url).backend
    assert isinstance(storage, HeartbeatRDBStorage)
    study = optuna.create_study(storage=storage, directions=["maximize", "minimize"])

    def objective(trial):
        x = trial.suggest_float("x", -1.0, 1.0)
        n = trial.suggest_int("n", 1, 9, log=True)
        trial.suggest_categorical("c", ["a", None, 3])
        trial.set_user_attr("candidate", {"layers": [1, 2], "x": x})
        trial.storage.set_trial_system_attr(trial._trial_id, "note", {"x": [x]})
        value = float("inf") if n == 2 else x
        trial.storage.set_trial_intermediate_value(trial._trial_id, n, value)
        if n % 3 == 0:
            raise optuna.TrialPruned()
        if n == 5:
            raise RuntimeError("failed")
        return x, float("-inf") if n == 1 else n

    study.optimize(objective, n_trials=25, catch=(RuntimeError,))
    study.enqueue_trial({"x": 0.5, "n": 2, "c": "a"}, user_attrs={"retry_of": 0})
    running = study.ask()
    running.suggest_float("x", -1.0, 1.0)
    study.enqueue_trial({"x": 0.25})
    study_id = study._study_id
    states = {t.state for t in study.get_trials()}
    assert {TrialState.COMPLETE, TrialState.WAITING, TrialState.RUNNING} <= states
    for query in [
        (None, set(), -1),
        ((TrialState.RUNNING, TrialState.WAITING), set(), -1),
        (None, {3, 7, running._trial_id}, 10),  # what Optuna's cache asks: unfinished + newer
    ]:
        ours = storage._get_trials(study_id, *query)
        theirs = optuna.storages.RDBStorage._get_trials(storage, study_id, *query)
        assert [repr(t) for t in ours] == [repr(t) for t in theirs]
        assert ours == theirs
    for trial in theirs:
        ours = storage.get_trial(trial._trial_id)
        assert repr(ours) == repr(optuna.storages.RDBStorage.get_trial(storage, trial._trial_id))
    with pytest.raises(KeyError):
        storage.get_trial(10**6)


def test_a_trials_values_are_written_in_one_statement_as_optuna_writes_them(database_url):
    from optuna.exceptions import UpdateFinishedTrialError
    from sqlalchemy import event

    storage = make_storage(database_url).backend
    study = optuna.create_study(storage=storage, directions=["maximize", "minimize", "minimize"])
    inserts = []

    def statement(conn, cursor, sql, *args):
        inserts.extend([sql] if "INSERT INTO trial_values" in sql else [])

    event.listen(storage.engine, "before_cursor_execute", statement)
    written = [(0.5, float("inf"), float("-inf")), (-1.0, 0.0, 3e38)]
    for values in written:
        study.tell(study.ask(), values)
    assert len(inserts) == len(written)
    read = optuna.storages.RDBStorage(database_url).get_all_trials(study._study_id)
    assert [tuple(t.values) for t in read] == written
    assert all(t.state == TrialState.COMPLETE and t.datetime_complete for t in read)
    with pytest.raises(UpdateFinishedTrialError):
        storage.set_trial_state_values(read[0]._trial_id, TrialState.COMPLETE, [1.0, 1.0, 1.0])
    running = study.ask()
    assert not storage.set_trial_state_values(running._trial_id, TrialState.RUNNING, [1.0] * 3)


def test_a_new_trial_is_read_back_as_created_until_it_changes(database_url):
    storage = make_storage(database_url).backend
    study = optuna.create_study(storage=storage)
    reads = []
    original = storage._read_trials
    storage._read_trials = lambda *a, **k: reads.append(1) or original(*a, **k)
    trial = study.ask()  # one read for the queued trials; Trial() reads the new one back
    assert reads == [1] and trial._cached_frozen_trial.state == TrialState.RUNNING
    trial._cached_frozen_trial.user_attrs["mine"] = 1  # a copy: not what the storage holds
    plain = optuna.storages.RDBStorage.get_trial(storage, trial._trial_id)
    assert storage.get_trial(trial._trial_id) == plain and "mine" not in plain.user_attrs
    assert len(reads) == 2
    # Changed before it is read back: read from the database.
    trial_id = storage.create_new_trial(study._study_id)
    storage.set_trial_user_attr(trial_id, "seen", True)
    assert storage.get_trial(trial_id).user_attrs == {"seen": True}
    # Made from a template (a queued trial) and started by ask: read from the database.
    study.enqueue_trial({"x": 0.5})
    queued = study.ask()
    assert queued._cached_frozen_trial.state == TrialState.RUNNING
    assert queued.suggest_float("x", 0, 1) == 0.5


def test_reading_trials_commits_nothing_on_postgresql_and_a_missing_study_is_a_key_error(
    database_url,
):
    from sqlalchemy import event

    storage = make_storage(database_url).backend
    study = optuna.create_study(storage=storage)
    empty_id = optuna.create_study(storage=storage)._study_id
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    trial_id = study.ask()._trial_id
    commits = []
    event.listen(storage.engine, "commit", lambda conn: commits.append(1))
    found = storage._get_trials(study._study_id, None, set(), -1)
    assert [t.state for t in found] == [TrialState.COMPLETE] * 2 + [TrialState.RUNNING]
    assert storage.get_trial(trial_id).state == TrialState.RUNNING
    # PostgreSQL reads outside a transaction (no BEGIN / COMMIT); SQLite as Optuna does.
    assert commits == ([] if database_url.startswith("postgresql") else [1, 1])
    assert storage._get_trials(empty_id, None, set(), -1) == []
    with pytest.raises(KeyError):
        storage._get_trials(10**6, None, set(), -1)
    storage.set_trial_user_attr(trial_id, "written", True)  # writes still commit
    assert commits[-1:] == [1]
    assert storage.get_trial(trial_id).user_attrs == {"written": True}


def test_the_trial_cache_lists_trials_by_state_and_number_as_optunas_does(database_url):
    from optuna.storages import _CachedStorage

    from autocompress.search.storage import TrialCache

    storage = make_storage(database_url)
    assert isinstance(storage, TrialCache)
    study = optuna.create_study(storage=storage, directions=["maximize"])
    other = optuna.load_study(study_name=study.study_name, storage=make_storage(database_url))
    plain = _CachedStorage(storage.backend)

    def listed(cache, states):
        return [(t.number, t.state) for t in cache.get_all_trials(study._study_id, states=states)]

    def check():
        for states in (None, (TrialState.WAITING,), (TrialState.COMPLETE, TrialState.RUNNING)):
            assert listed(storage, states) == listed(plain, states)

    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    held = study.ask()  # RUNNING until told below
    check()
    # Trials another process makes: this cache learns of them from the database, after making
    # one itself whose number is above theirs.
    other.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    other.enqueue_trial({"x": 0.5})  # WAITING
    storage.create_new_trial(study._study_id)
    check()
    assert [n for n, _ in listed(storage, None)] == list(range(6))
    assert listed(storage, (TrialState.WAITING,)) == [(4, TrialState.WAITING)]
    queued = study.ask()
    check()
    assert listed(storage, (TrialState.WAITING,)) == [] and queued.suggest_float("x", 0, 1) == 0.5
    study.tell(held, 1.0)
    study.tell(queued, state=TrialState.FAIL)
    study.tell(5, 0.0)
    check()
    assert listed(storage, (TrialState.RUNNING,)) == []
    assert [t.state for t in study.get_trials(deepcopy=True)] == [TrialState.COMPLETE] * 4 + [
        TrialState.FAIL,
        TrialState.COMPLETE,
    ]


def test_new_trials_are_numbered_as_optuna_numbers_them_also_when_created_at_once(
    database_url,
):
    from concurrent.futures import ThreadPoolExecutor

    first = optuna.create_study(storage=make_storage(database_url), study_name="a")
    second = optuna.create_study(storage=make_storage(database_url), study_name="b")
    # Interleaved in one database, with queued and added (template) trials among them.
    for i in range(3):
        first.ask()
        second.ask()
        first.enqueue_trial({"x": float(i)})
        second.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=1.0))
        first.ask()  # the queued one

    def create(name):
        study = optuna.load_study(study_name=name, storage=make_storage(database_url))
        return [study.ask().number for _ in range(5)]

    with ThreadPoolExecutor(4) as pool:
        made = list(pool.map(create, ["a", "b", "a", "b"]))
    assert sorted(made[0] + made[2]) == sorted(made[1] + made[3]) == list(range(6, 16))
    plain = optuna.storages.RDBStorage(database_url)
    for study in (first, second):
        trials = sorted(plain.get_all_trials(study._study_id), key=lambda t: t._trial_id)
        assert [t.number for t in trials] == list(range(len(trials)))  # Optuna's count
    assert len(trials) == 6 + 10
