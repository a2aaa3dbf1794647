"""The Ray Tune backend on a local 2-CPU Ray cluster: a tiny search, a Ray worker killed
mid-trial, a driver killed mid-search and restored, and failures inside the trainable."""

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from autocompress.config import parse_config
from autocompress.evaluators import CandidateError, TaskMetrics
from autocompress.evaluators.train import TrainEvaluator
from autocompress.search import run_search

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install autocompress[ray])")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_cluster():
    """One local cluster for the module (starting one takes seconds); run_search joins it."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture
def ray_config(tiny_config_dict):
    tiny_config_dict["teacher"]["epochs"] = 1
    tiny_config_dict["train"]["epochs"] = 1
    # A budget every candidate meets: the constraints are still recorded at suggest time.
    tiny_config_dict["hardware"]["budget"] = {"max_size_kb": 100}
    tiny_config_dict["search"].update(n_trials=4, backend="ray", ray={"workers": 2})
    return tiny_config_dict


def _study(run_dir: Path) -> optuna.Study:
    return optuna.load_study(study_name="tiny", storage=f"sqlite:///{run_dir}/study.db")


def test_a_local_cluster_runs_the_search_into_the_run_folder(tmp_path, ray_config, ray_cluster):
    result = run_search(parse_config(ray_config), runs_dir=tmp_path)

    trials = result.trials
    assert len(trials) == 4 and (trials["state"] == "COMPLETE").all(), trials["fail_reason"]
    assert trials["trained"].all() and (trials["accuracy"] > 0.1).all()
    for name in ("trials.csv", "pareto.csv", "pareto.png", "hypervolume.csv", "config.yaml"):
        assert (result.run_dir / name).is_file()
    # The study lives in the run folder's SQLite (optuna-dashboard reads it), with the
    # constraints that NSGA-II needs recorded on every trial by the pricing step.
    study = _study(result.run_dir)
    assert len(study.trials) == 4
    for trial in study.trials:
        assert any(key.startswith("constraints") for key in trial.system_attrs), trial
        assert (result.run_dir / "trials" / str(trial.number) / "model.pt").is_file()


def _kill_first_trial_worker(trials_dir: Path, killed: dict) -> threading.Thread:
    """Start a thread that SIGKILLs the process of the first trial that starts training."""

    def kill() -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            for marker in trials_dir.glob("*/worker.json"):
                pid = json.loads(marker.read_text())["pid"]
                if pid != os.getpid():  # a Ray worker process, never this test process
                    os.kill(pid, signal.SIGKILL)
                    killed.update(pid=pid)
                    return
            time.sleep(0.02)

    thread = threading.Thread(target=kill, daemon=True)
    thread.start()
    return thread


def test_a_ray_worker_killed_mid_trial_loses_nothing(tmp_path, ray_config, ray_cluster):
    ray_config["train"]["epochs"] = 10  # long enough (~1 s) to be killed mid-trial
    trials_dir = tmp_path / "tiny" / "trials"
    killed: dict = {}
    killer = _kill_first_trial_worker(trials_dir, killed)
    result = run_search(parse_config(ray_config), runs_dir=tmp_path)
    killer.join(timeout=5)

    assert killed, "no trial started"
    trials = result.trials.set_index("number")
    assert (trials["state"] == "COMPLETE").sum() == 4, trials["fail_reason"]
    # Ray saw the trial whose worker died (the killed process may have moved on to another
    # trial than the one its marker named): it failed as interrupted, not counted, and its
    # candidate was queued again and ran to completion in a new worker.
    errors = list((tmp_path / "tiny" / "ray").glob("exp*/trial_*/error.txt"))
    assert len(errors) == 1
    number = json.loads((errors[0].parent / "params.json").read_text())["optuna_trial"]
    assert trials.loc[number, "state"] == "FAIL"
    assert trials.loc[number, "fail_reason"].startswith("its Ray worker died (attempt 1)")
    study = _study(result.run_dir)
    (retry,) = [t for t in study.trials if t.user_attrs.get("retry_of") == number]
    assert retry.state == TrialState.COMPLETE and retry.params == study.trials[number].params
    rerun = json.loads((trials_dir / str(retry.number) / "worker.json").read_text())
    assert rerun["pid"] != killed["pid"]


def test_a_trial_whose_worker_dies_too_often_is_failed_with_rays_error(
    tmp_path, ray_config, ray_cluster
):
    ray_config["train"]["epochs"] = 10
    ray_config["search"].update(n_trials=2, ray={"workers": 2, "max_failures": 0})
    killed: dict = {}
    killer = _kill_first_trial_worker(tmp_path / "tiny" / "trials", killed)
    trials = run_search(parse_config(ray_config), runs_dir=tmp_path).trials
    killer.join(timeout=5)

    assert killed and len(trials) == 2
    failed = trials[trials["state"] == "FAIL"]
    assert len(failed) == 1 and (trials["state"] == "COMPLETE").sum() == 1
    assert failed["fail_reason"].iloc[0].startswith("Ray trial failed 1 time(s): ")


def test_a_killed_driver_is_restored_without_rerunning_finished_trials(
    tmp_path, ray_config, ray_cluster
):
    ray_config["search"]["n_trials"] = 5
    config_file = tmp_path / "tiny.yaml"
    config_file.write_text(yaml.safe_dump(ray_config))
    run_dir = tmp_path / "runs" / "tiny"
    command = [sys.executable, "-m", "autocompress.cli", "search", str(config_file)]
    command += ["--runs-dir", str(tmp_path / "runs")]
    # Its own session, so that the driver and the Ray cluster it started die together.
    driver = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while _complete_trials(run_dir / "study.db") < 2:
            assert driver.poll() is None, driver.communicate()[0]
            assert time.monotonic() < deadline, "the driver finished no trial in time"
            time.sleep(0.1)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.communicate()
    before = {
        t.number: (t.values, (run_dir / "trials" / str(t.number) / "model.pt").stat().st_mtime_ns)
        for t in _study(run_dir).get_trials(states=(TrialState.COMPLETE,))
    }
    assert 1 <= len(before) < 5

    result = run_search(parse_config(ray_config), runs_dir=tmp_path / "runs")

    study = _study(run_dir)
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 5, result.trials[["number", "state", "fail_reason"]]
    for number, (values, mtime) in before.items():
        trial = study.trials[number]
        assert trial.state == TrialState.COMPLETE and trial.values == values
        model = run_dir / "trials" / str(number) / "model.pt"
        assert model.stat().st_mtime_ns == mtime  # kept, not trained again
    assert (run_dir / "ray" / "exp0" / "finished").is_file()  # the experiment was restored
    # Anything the dead driver had started but Tune had not checkpointed is failed, not lost.
    assert all(t.user_attrs.get("interrupted") for t in study.get_trials(states=(TrialState.FAIL,)))


def _complete_trials(db: Path) -> int:
    # Plain SQL, read-only: cheap to poll while the driver writes.
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
            query = "SELECT COUNT(*) FROM trials WHERE state = 'COMPLETE'"
            return conn.execute(query).fetchone()[0]
    except sqlite3.OperationalError:  # not created yet
        return 0


def _hand_wired(config, run_dir: Path, *, n_trials: int):
    """The driver-side searcher of a new run, and ``finish(trial_id, params)``, which trains a
    suggested trial as a Ray worker would and reports it: wired by hand, no cluster needed."""
    from ray.tune.utils import flatten_dict

    from autocompress.search.ray_backend import (
        PricingSpace,
        StudySearcher,
        shared_objective,
        train_trial,
    )
    from autocompress.search.samplers import make_sampler
    from autocompress.search.study import open_study

    run_dir.mkdir()
    _, storage = open_study(config, run_dir)
    shared_objective(config, run_dir)
    searcher = StudySearcher(
        PricingSpace(config, run_dir),
        n_trials=n_trials,
        metric=["accuracy", "latency_ms", "size_kb"],
        mode=["max", "min", "min"],
        sampler=make_sampler(config),
        storage=storage,
        study_name="tiny",
    )

    def finish(trial_id: str, params: dict) -> None:
        result = train_trial(params, config=config, run_dir=run_dir)
        searcher.on_trial_complete(trial_id, result=flatten_dict(result))

    return searcher, finish


def test_a_trial_failing_in_the_trainable_is_failed_with_its_reason(
    tmp_path, ray_config, monkeypatch
):
    def diverges(self, model, candidate):
        raise CandidateError("non-finite training loss at epoch 0, step 3")

    monkeypatch.setattr(TrainEvaluator, "evaluate", diverges)
    ray_config["search"]["early_stopping"] = {"enabled": False}  # evaluate is patched
    run_dir = tmp_path / "tiny"
    searcher, finish = _hand_wired(parse_config(ray_config), run_dir, n_trials=1)
    finish("t1", searcher.suggest("t1"))

    trial = _study(run_dir).trials[0]
    assert trial.state == TrialState.FAIL
    assert trial.user_attrs["fail_reason"].startswith("CandidateError: non-finite")
    assert trial.user_attrs["latency_ms"] > 0  # priced before it was trained
    assert searcher.suggest("t2") == searcher.FINISHED  # the budget of 1 trial is spent


def test_the_surrogate_proposes_ray_trials_through_the_study(tmp_path, ray_config, monkeypatch):
    """After each result the driver queues the surrogate's proposal, which the next
    OptunaSearch ask takes; none is queued once the running trials fill the budget."""
    from autocompress.search.surrogate import PROPOSED_ATTR

    def evaluate(self, model, candidate):  # no training: accuracy grows with the weight bits
        bits = [c.w_bits for c in candidate.layers.values()]
        return TaskMetrics(accuracy=0.5 + 0.05 * sum(bits) / len(bits), loss=1.0, epochs=1)

    monkeypatch.setattr(TrainEvaluator, "evaluate", evaluate)
    ray_config["search"].update(
        early_stopping={"enabled": False},
        surrogate={"enabled": True, "min_trials": 2, "pool_size": 8, "proxy": False},
    )
    run_dir = tmp_path / "tiny"
    searcher, finish = _hand_wired(parse_config(ray_config), run_dir, n_trials=4)
    params = {tid: searcher.suggest(tid) for tid in ("t1", "t2")}
    finish("t1", params["t1"])
    finish("t2", params["t2"])  # two completed trials: the surrogate proposes the third
    params["t3"] = searcher.suggest("t3")
    assert PROPOSED_ATTR in _study(run_dir).trials[params["t3"]["optuna_trial"]].user_attrs
    params["t4"] = searcher.suggest("t4")
    finish("t3", params["t3"])  # 3 done + 1 running fill the budget of 4: nothing is queued
    finish("t4", params["t4"])
    trials = _study(run_dir).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4


def test_the_searcher_pickles_with_the_nsga2_sampler(tmp_path, ray_config):
    # Tune pickles the searcher into its experiment; NSGA-II's sampler holds a threading.Lock.
    from optuna.samplers import NSGAIISampler
    from ray import cloudpickle

    ray_config["search"]["sampler"] = "nsga2"
    searcher, _ = _hand_wired(parse_config(ray_config), tmp_path / "tiny", n_trials=2)
    assert isinstance(searcher._sampler, NSGAIISampler)
    loaded = cloudpickle.loads(cloudpickle.dumps(searcher))
    assert isinstance(loaded._sampler, NSGAIISampler)
    assert loaded._ot_study.sampler is loaded._sampler
    with loaded._sampler._thread_lock:  # made anew
        pass
    assert searcher.suggest("t1")["optuna_trial"] == 0  # its trial refers to the sampler too
    searcher.save(str(tmp_path / "searcher.pkl"))
    searcher.restore(str(tmp_path / "searcher.pkl"))
    assert searcher._ot_study.sampler is searcher._sampler
    assert searcher._ot_trials["t1"].study.sampler is searcher._sampler
    assert searcher.suggest("t2")["optuna_trial"] == 1
