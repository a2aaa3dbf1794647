"""benchmarks/chaos.py in its short form: a few workers on PostgreSQL, and the Ray backend,
killed (and the database stopped) at set points of a short simulated run; nothing may be lost or
done twice, and the run folder must work with pareto, report and export."""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def chaos():
    path = BENCHMARKS / "chaos.py"
    spec = importlib.util.spec_from_file_location("chaos_bench", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


@pytest.fixture
def postgres(chaos):
    """A PostgreSQL server of the test's own, which the chaos stops and starts, or a skip."""
    if not any(importlib.util.find_spec(m) for m in ("psycopg", "psycopg2")):
        pytest.skip("no PostgreSQL driver: pip install autocompress[postgres]")
    try:
        server = chaos.LocalPostgres()
    except (FileNotFoundError, LookupError) as err:
        pytest.skip(f"cannot start a PostgreSQL server: {err}")
    try:
        server.init()
    except RuntimeError as err:
        server.close()
        pytest.skip(f"cannot start a PostgreSQL server: {err}")
    yield server
    server.close()


def _check(log, outcome, *, strikes: set[str], n_trials: int) -> None:
    assert not outcome.problems, outcome.problems
    assert not log.crashes, log.crashes
    assert strikes <= set(log.events), log.events
    assert outcome.counted == n_trials == outcome.complete


def test_workers_on_postgresql_lose_nothing(chaos, postgres, tmp_path):
    start = time.monotonic()
    log, outcome = chaos.run_chaos(
        "workers",
        root=tmp_path / "workers",
        n_trials=12,
        workers=3,
        mean_gap=0,  # only the strikes below, at set points of the run
        seed=0,
        postgres=postgres,
        trial_seconds=1.0,
        settle=0,
        milestones=[(0.2, "kill_worker"), (0.4, "stop_db"), (0.6, "kill_worker")],
        timeout=240,
    )
    _check(log, outcome, strikes={"kill_worker", "stop_db"}, n_trials=12)
    # Killed mid-trial: the trials of the dead workers were failed and retried.
    assert outcome.retried >= 1
    print(f"workers chaos: {time.monotonic() - start:.0f} s, {dict(log.events)}", file=sys.stderr)


def test_ray_backend_loses_nothing(chaos, postgres, tmp_path):
    pytest.importorskip("ray", reason="Ray is not installed (pip install autocompress[ray])")
    start = time.monotonic()
    log, outcome = chaos.run_chaos(
        "ray",
        root=tmp_path / "ray",
        n_trials=10,
        workers=3,
        mean_gap=0,
        seed=0,
        postgres=postgres,
        trial_seconds=1.0,
        settle=0,
        milestones=[(0.2, "kill_trial"), (0.4, "stop_db"), (0.5, "kill_driver")],
        timeout=300,
    )
    _check(log, outcome, strikes={"kill_trial", "stop_db", "kill_driver"}, n_trials=10)
    print(f"ray chaos: {time.monotonic() - start:.0f} s, {dict(log.events)}", file=sys.stderr)


def test_a_storage_whose_server_restarted_between_calls_carries_on(postgres):
    """Connections that a restart cut are replaced: asking, suggesting, reading and writing
    attributes and telling all work after the server came back."""
    import optuna
    from optuna.trial import TrialState

    from autocompress.search.storage import make_storage

    storage = make_storage(postgres.url)
    study = optuna.create_study(storage=storage, study_name="restart", directions=["maximize"])
    study.enqueue_trial({"x": 1.0})
    for _ in range(2):
        postgres.stop()
        postgres.start()
        trial = study.ask()
        trial.suggest_float("x", 0.0, 2.0)
        trial.set_user_attr("seen", True)
        assert trial.user_attrs["seen"]
        study.tell(trial, 1.0)
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE] * 2
