import numpy as np
import optuna
import pandas as pd
import pytest

from autocompress.config import ConfigError, parse_config
from autocompress.core import RunLockedError
from autocompress.core.files import RunLock
from autocompress.evaluators import CandidateError
from autocompress.evaluators.train import TrainEvaluator
from autocompress.search import run_search
from autocompress.search.study import open_study


def test_search_writes_real_results(finished_run):
    run_dir, trials = finished_run.run_dir, finished_run.trials
    assert len(trials) == 6 and (trials["state"] == "COMPLETE").all()
    assert trials["trained"].all()
    # Accuracies are real: far above chance (10%) on digits, and not all identical.
    assert trials["accuracy"].max() > 0.7 and trials["accuracy"].mean() > 0.4
    assert trials["accuracy"].nunique() > 1
    assert finished_run.teacher_metrics["accuracy"] > 0.85
    for name in ("trials.csv", "pareto.csv", "hypervolume.csv", "pareto.png", "hypervolume.png"):
        assert (run_dir / name).stat().st_size > 0
    front = pd.read_csv(run_dir / "pareto.csv")
    assert 1 <= len(front) <= 6
    assert set(front["number"]) <= set(trials["number"])
    for number in trials["number"]:
        assert (run_dir / "trials" / str(number) / "model.pt").is_file()
    history = pd.read_csv(run_dir / "hypervolume.csv")
    assert np.all(np.diff(history["hypervolume"]) >= 0)


def test_rerun_resumes_without_losing_or_redoing_trials(finished_run, tiny_config_dict):
    before = finished_run.trials.set_index("number")
    teacher_file = finished_run.run_dir / "teacher" / "model.pt"
    teacher_mtime = teacher_file.stat().st_mtime_ns
    tiny_config_dict["search"]["n_trials"] = 8
    result = run_search(parse_config(tiny_config_dict), runs_dir=finished_run.run_dir.parent)
    after = result.trials.set_index("number")
    assert len(after) == 8
    pd.testing.assert_series_equal(after.loc[before.index, "accuracy"], before["accuracy"])
    assert teacher_file.stat().st_mtime_ns == teacher_mtime  # teacher reused, not retrained


def test_changed_config_is_refused_on_resume(finished_run, tiny_config_dict):
    tiny_config_dict["train"]["epochs"] = 2
    with pytest.raises(ConfigError, match="different config"):
        run_search(parse_config(tiny_config_dict), runs_dir=finished_run.run_dir.parent)


def test_trial_cut_off_by_a_crash_is_failed_and_retried(tmp_path, tiny_config_dict):
    tiny_config_dict["search"]["n_trials"] = 3
    config = parse_config(tiny_config_dict)
    run_dir = tmp_path / config.name
    run_dir.mkdir()
    study, _ = open_study(config, run_dir)
    crashed = study.ask()  # left RUNNING, as a killed process would leave it
    crashed.suggest_categorical("arch.depth", [2])
    result = run_search(config, runs_dir=tmp_path)
    trials = result.trials
    first = trials[trials["number"] == crashed.number].iloc[0]
    assert first["state"] == "FAIL" and first["fail_reason"].startswith("interrupted")
    assert (trials["state"] == "COMPLETE").sum() == 3  # the budget of 3 is still fully spent
    retry = optuna.load_study(study_name=config.name, storage=f"sqlite:///{run_dir}/study.db")
    assert any(t.user_attrs.get("retry_of") == crashed.number for t in retry.trials)


def test_failing_candidates_are_recorded_and_the_search_goes_on(
    tmp_path, tiny_config_dict, monkeypatch
):
    original = TrainEvaluator.evaluate
    calls = []

    def flaky(self, model, candidate):
        calls.append(1)
        if len(calls) % 2 == 0:
            raise CandidateError("non-finite training loss at epoch 0, step 3")
        return original(self, model, candidate)

    monkeypatch.setattr(TrainEvaluator, "evaluate", flaky)
    tiny_config_dict["search"]["early_stopping"] = {"enabled": False}  # evaluate is patched
    tiny_config_dict["search"]["n_trials"] = 4
    trials = run_search(parse_config(tiny_config_dict), runs_dir=tmp_path).trials
    failed = trials[trials["state"] == "FAIL"]
    assert len(trials) == 4 and len(failed) == 2
    assert failed["fail_reason"].str.contains("CandidateError: non-finite").all()
    assert (trials["state"] == "COMPLETE").sum() == 2


def test_over_budget_candidates_are_never_trained(tmp_path, tiny_config_dict, monkeypatch):
    trained = []
    original = TrainEvaluator.evaluate
    monkeypatch.setattr(
        TrainEvaluator, "evaluate", lambda self, m, c: trained.append(c) or original(self, m, c)
    )
    tiny_config_dict["search"]["early_stopping"] = {"enabled": False}  # evaluate is patched
    # A budget between the smallest and largest candidate sizes of this space.
    tiny_config_dict["hardware"]["budget"] = {"max_size_kb": 1.2}
    tiny_config_dict["search"].update(n_trials=8, sampler="nsga2", population_size=4)
    result = run_search(parse_config(tiny_config_dict), runs_dir=tmp_path)
    # Repeats of an earlier candidate are skipped before pricing (NSGA-II may draw some here).
    trials = result.trials[~result.trials["pruned_reason"].str.startswith("duplicate of")]
    over = trials[trials["size_kb"] > 1.2]
    assert len(over) > 0 and len(over) < len(trials), trials["size_kb"].tolist()
    assert not over["feasible"].any() and not over["trained"].any()
    assert len(trained) == len(trials) - len(over)
    assert (result.front["size_kb"] <= 1.2).all()
    for number in over["number"]:
        assert not (result.run_dir / "trials" / str(number)).exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("family", "sampler", "hardware"),
    [
        ("mlp", "tpe", {"profile": "measured", "options": {"repeats": 5, "warmup": 1}}),
        ("mobilenetv2", "nsga2", {"profile": "analytic", "device": "bitfusion"}),
    ],
)
def test_families_samplers_profiles_and_parallel_jobs(
    tmp_path, tiny_config_dict, family, sampler, hardware
):
    cfg = tiny_config_dict
    cfg["space"] = {"family": family, "w_bits": [4, 8], "a_bits": [8], "prune_ratios": [0.0, 0.25]}
    cfg["teacher"]["epochs"] = 3
    cfg["hardware"] = hardware
    cfg["search"].update(n_trials=4, sampler=sampler, n_jobs=2, population_size=2)
    result = run_search(parse_config(cfg), runs_dir=tmp_path)
    # A small space: the sampler may propose a candidate again, which is skipped untrained.
    repeats = result.trials["pruned_reason"].str.startswith("duplicate of")
    trials = result.trials[~repeats]
    assert len(trials) == 4 and (trials["state"] == "COMPLETE").all(), trials["fail_reason"]
    assert (trials["latency_ms"] > 0).all() and (trials["accuracy"] > 0.1).all()
    assert trials["summary"].str.startswith(family).all()
    assert len(result.front) >= 1


def test_a_second_search_in_a_live_run_folder_is_refused(tmp_path, tiny_config_dict):
    run_dir = tmp_path / "tiny"
    with RunLock(run_dir / "search.lock"):  # another search holds the run
        with pytest.raises(RunLockedError, match=r"Another search \(pid \d+ on "):
            run_search(parse_config(tiny_config_dict), runs_dir=tmp_path)
    assert not (run_dir / "config.yaml").exists() and not (run_dir / "study.db").exists()


def test_a_first_start_that_failed_can_be_rerun_with_a_corrected_config(tmp_path, tiny_config_dict):
    # A first start that fails before its first trial (here: a dataset that cannot be imported)
    # leaves an empty study; the corrected config is then accepted, not refused as another one.
    tiny_config_dict["data"]["dataset"] = "no_such_module:load"
    with pytest.raises(ValueError, match="data.dataset"):
        run_search(parse_config(tiny_config_dict), runs_dir=tmp_path)
    tiny_config_dict["data"]["dataset"] = "digits"
    tiny_config_dict["teacher"]["epochs"] = 1
    tiny_config_dict["search"]["n_trials"] = 2
    result = run_search(parse_config(tiny_config_dict), runs_dir=tmp_path)
    assert result.trials["state"].eq("COMPLETE").all() and len(result.trials) == 2


def test_ctrl_c_keeps_finished_trials_and_the_rerun_retries_the_cut_one(
    tmp_path, tiny_config_dict, interrupt_training
):
    restore = interrupt_training(3)
    tiny_config_dict["search"]["early_stopping"] = {"enabled": False}  # evaluate is patched
    tiny_config_dict["search"]["n_trials"] = 4
    config = parse_config(tiny_config_dict)
    with pytest.raises(KeyboardInterrupt):
        run_search(config, runs_dir=tmp_path)
    partial = pd.read_csv(tmp_path / "tiny" / "trials.csv")  # written despite the interrupt
    assert list(partial["state"]) == ["COMPLETE", "COMPLETE", "FAIL"]
    kept = partial.loc[:1, "accuracy"].tolist()

    restore()
    trials = run_search(config, runs_dir=tmp_path).trials
    assert trials.loc[:1, "accuracy"].tolist() == kept  # finished trials untouched
    assert (trials["state"] == "COMPLETE").sum() == 4
    cut = trials[trials["state"] == "FAIL"].iloc[0]
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path}/tiny/study.db")
    retry = [t for t in study.trials if t.user_attrs.get("retry_of") == int(cut["number"])]
    assert len(retry) == 1 and retry[0].params == study.trials[int(cut["number"])].params
    assert cut["fail_reason"] == f"interrupted by the user (retried as trial {retry[0].number})"


def test_params_and_peak_memory_can_be_objectives(tmp_path, tiny_config_dict):
    tiny_config_dict["teacher"]["epochs"] = 1
    tiny_config_dict["train"]["epochs"] = 1
    tiny_config_dict["search"]["n_trials"] = 3
    tiny_config_dict["search"]["objectives"] = ["accuracy", "params:min", "peak_mem_kb"]
    result = run_search(parse_config(tiny_config_dict), runs_dir=tmp_path)
    trials = result.trials
    assert trials["state"].eq("COMPLETE").all()
    values = [t.values for t in result.study.trials]
    assert [v[1] for v in values] == trials["params"].tolist()
    assert [v[2] for v in values] == trials["peak_mem_kb"].tolist()
