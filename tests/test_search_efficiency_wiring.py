"""How search.early_stopping and search.prescreen are wired into the search: the evaluator a run
builds, how stopped and skipped trials are recorded and counted against n_trials, the config
checks, two tiny end-to-end runs and the Ray backend's trial steps wired by hand (accuracies
pinned by monkeypatching, so that which trials are stopped or skipped follows from the rules
alone and the tests cannot flake)."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
import yaml
from optuna import create_study
from optuna.trial import TrialState, create_trial

from autocompress.config import ConfigError, RunConfig, parse_config
from autocompress.data import load_data
from autocompress.evaluators import TaskMetrics, early_stopping
from autocompress.evaluators.early_stopping import (
    EarlyStoppingTrainEvaluator,
    OptunaRungStore,
    RungRecord,
    dominates,
)
from autocompress.evaluators.train import TrainEvaluator
from autocompress.search import run_search
from autocompress.search.prescreen import SKIPPED_ATTR, Prescreener
from autocompress.search.progress import describe_trial
from autocompress.search.setup import evaluator_context, make_evaluator
from autocompress.search.study import STOPPED_ATTR, count_done, counted
from autocompress.spaces import JointSearchSpace
from autocompress.spaces.sampling import enumerate_candidates

PINNED_ACCURACY = 0.5


def _config(cfg: dict, **search) -> RunConfig:
    """The tiny config with two objectives (accuracy, size_kb: one cost, easy to reason about),
    a one-epoch teacher (its quality is irrelevant here) and ``search`` overrides."""
    cfg["teacher"]["epochs"] = 1
    cfg["search"]["objectives"] = ["accuracy", "size_kb"]
    cfg["search"].update(search)
    return parse_config(cfg)


def _evaluator(config: RunConfig, *, study=None):
    """The run's evaluator as the search builds it (no teacher, on the CPU)."""
    data = load_data(config.data, seed=config.seed)
    space = JointSearchSpace(
        config.space, num_classes=data.num_classes, input_shape=data.input_shape
    )
    context = evaluator_context(
        config, data=data, space=space, device=torch.device("cpu"), teacher=None, run_dir=None
    )
    return make_evaluator(config, context, study=study)


# --- counting towards n_trials --------------------------------------------------------------


def test_stopped_trials_count_towards_n_trials_and_skipped_ones_do_not():
    complete = create_trial(state=TrialState.COMPLETE, values=[0.9, 1.0])
    stopped = create_trial(
        state=TrialState.PRUNED, user_attrs={STOPPED_ATTR: 1, "pruned_reason": "stopped at..."}
    )
    skipped = create_trial(
        state=TrialState.PRUNED, user_attrs={SKIPPED_ATTR: "why", "pruned_reason": "skipped: why"}
    )
    pruned_otherwise = create_trial(state=TrialState.PRUNED)  # neither: not a finished budget
    assert counted(complete) and counted(stopped)
    assert not counted(skipped) and not counted(pruned_otherwise)
    assert count_done([complete, stopped, skipped, pruned_otherwise, skipped]) == 2


# --- config checks ----------------------------------------------------------------------------


def test_the_prescreen_needs_an_accuracy_objective(tiny_config_dict):
    tiny_config_dict["search"]["objectives"] = ["latency_ms", "size_kb"]
    tiny_config_dict["search"]["prescreen"] = {"enabled": True}
    with pytest.raises(ConfigError, match=r"search\.prescreen\.enabled"):
        parse_config(tiny_config_dict)


def test_a_written_config_reloads_where_early_stopping_does_not_apply(tiny_config_dict):
    # config.yaml spells out early_stopping/surrogate enabled: true: a run without accuracy, or
    # with another evaluator, must load again (export, report, resume), the features unused.
    from autocompress.config import dump_config

    tiny_config_dict["search"]["objectives"] = ["latency_ms", "size_kb"]
    tiny_config_dict["evaluator"] = {"name": "supernet"}
    config = parse_config(tiny_config_dict)
    again = parse_config(yaml.safe_load(dump_config(config)))
    assert again.fingerprint() == config.fingerprint()
    assert again.search.early_stopping.enabled and again.score_objective() is None


def test_without_accuracy_both_features_can_be_turned_off(tiny_config_dict):
    tiny_config_dict["search"]["objectives"] = ["latency_ms", "size_kb"]
    tiny_config_dict["search"]["early_stopping"] = {"enabled": False}
    tiny_config_dict["search"]["prescreen"] = {"enabled": False}
    assert parse_config(tiny_config_dict).search.early_stopping.enabled is False


def test_without_accuracy_default_early_stopping_stays_out_of_the_way(tiny_config_dict):
    # On by default where it applies: a config that never asked for it must not fail.
    tiny_config_dict["search"]["objectives"] = ["latency_ms", "size_kb"]
    config = parse_config(tiny_config_dict)
    assert type(_evaluator(config)) is TrainEvaluator


# --- make_evaluator ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("epochs", "early", "expected"),
    [
        (3, {}, EarlyStoppingTrainEvaluator),  # on by default; epochs 3 leave rung 1
        (3, {"enabled": False}, TrainEvaluator),
        (1, {}, TrainEvaluator),  # epochs 1 leave no rung below the full budget
        (3, {"min_epochs": 3}, TrainEvaluator),  # the first rung would be the full budget
    ],
)
def test_make_evaluator_stops_early_only_when_enabled_and_a_rung_fits(
    tiny_config_dict, epochs, early, expected
):
    tiny_config_dict["train"]["epochs"] = epochs
    config = _config(tiny_config_dict, early_stopping=early)
    evaluator = _evaluator(config)
    assert type(evaluator) is expected
    if expected is EarlyStoppingTrainEvaluator:
        assert evaluator.table.rungs == (1,)
        assert evaluator.cost_names == ("size_kb",)  # the hardware objectives, not accuracy


def test_make_evaluator_keeps_rung_records_in_the_study_when_given_one(tiny_config_dict):
    config = _config(
        tiny_config_dict, early_stopping={"eta": 2, "min_dominators": 3, "min_records": 5}
    )
    study = create_study(directions=["maximize", "minimize"])
    evaluator = _evaluator(config)
    in_study = _evaluator(config, study=study)
    # Without a study the records stay in memory; with one they are shared and survive resumes.
    assert not isinstance(evaluator.table.store, OptunaRungStore)
    assert isinstance(in_study.table.store, OptunaRungStore)
    assert in_study.table.store.study is study
    table = in_study.table
    assert (table.rungs, table.eta, table.min_dominators, table.min_records) == ((1, 2), 2, 3, 5)


# --- early stopping, end to end ---------------------------------------------------------------


def _expected_stops(study) -> dict[int, bool]:
    """For each trial with a rung-1 record, whether the rule stops it there, judged against the
    records of the trials before it (trials run one at a time, in number order). Settings of
    ``test_early_stopping_end_to_end``: eta 3, min_dominators 1, min_records 0."""
    records = {
        t.number: RungRecord.from_dict(t.user_attrs["rung.1"])
        for t in study.trials
        if "rung.1" in t.user_attrs
    }
    expected = {}
    for number, record in records.items():
        earlier = [r for n, r in records.items() if n < number]
        required = max(1, (len(earlier) + 1) // 3)
        expected[number] = sum(dominates(r, record) for r in earlier) >= required
    return expected


def test_early_stopping_end_to_end_records_prunes_and_counts(
    tmp_path, tiny_config_dict, monkeypatch
):
    # Every rung accuracy is the same, so a trial is stopped exactly when enough earlier trials
    # were no bigger (weak dominance): decided by the seeded sampler's sizes, not by training.
    real = early_stopping.EarlyStoppingTrainEvaluator.rung_metrics

    def pinned(self, model, loader):
        return {**real(self, model, loader), "accuracy": PINNED_ACCURACY}

    monkeypatch.setattr(early_stopping.EarlyStoppingTrainEvaluator, "rung_metrics", pinned)
    tiny_config_dict["train"]["epochs"] = 3  # eta 3: one rung, after epoch 1
    early = {"eta": 3, "min_dominators": 1, "min_records": 0}
    first = run_search(
        _config(tiny_config_dict, n_trials=3, early_stopping=early), runs_dir=tmp_path
    )
    assert len(first.study.trials) == 3
    # Resumed with a larger budget: the new trials must be judged against the first run's
    # records too, which only works if they live in the study (not in the process's memory).
    result = run_search(
        _config(tiny_config_dict, n_trials=6, early_stopping=early), runs_dir=tmp_path
    )
    study, trials = result.study, result.trials.set_index("number")

    # Every trained trial (stopped or not) left its rung-1 record in the study.
    assert all("rung.1" in t.user_attrs for t in study.trials)
    assert [t.user_attrs["rung.1"]["trial"] for t in study.trials] == list(range(6))
    expected = _expected_stops(study)
    assert sum(expected.values()) >= 1  # the test's premise: this seed does stop some trials
    assert not expected[0]  # nothing to compare with yet
    # A trial of the resumed run is stopped by a record of the first run: those records were
    # read from the study, not from this process's memory.
    first_run = [RungRecord.from_dict(t.user_attrs["rung.1"]) for t in study.trials[:3]]
    stopped_by_first_run = [
        n
        for n in (3, 4, 5)
        if expected[n]
        and any(
            dominates(r, RungRecord.from_dict(study.trials[n].user_attrs["rung.1"]))
            for r in first_run
        )
    ]
    assert stopped_by_first_run

    for t in study.trials:
        if expected[t.number]:
            assert t.state == TrialState.PRUNED, t.number
            assert t.user_attrs[STOPPED_ATTR] == 1 and t.user_attrs["stopped_rung"] == 0
            assert t.user_attrs["rung_accuracy"] == PINNED_ACCURACY
            assert t.user_attrs["trained"] is True
            assert t.user_attrs["pruned_reason"].startswith("stopped at rung 0 after 1 epoch")
            assert SKIPPED_ATTR not in t.user_attrs
            assert not (result.run_dir / "trials" / str(t.number) / "model.pt").exists()
            assert "stopped at rung 0" in describe_trial(t)  # the progress line says why
        else:
            assert t.state == TrialState.COMPLETE, t.number
            assert STOPPED_ATTR not in t.user_attrs and "pruned_reason" not in t.user_attrs
            assert (result.run_dir / "trials" / str(t.number) / "model.pt").is_file()

    # Stopped trials used up the budget: exactly n_trials trials, no extra ones.
    assert count_done(study.trials) == 6 == len(study.trials)
    stopped = [n for n, stop in expected.items() if stop]
    assert (trials.loc[stopped, "state"] == "PRUNED").all()
    assert trials.loc[stopped, "pruned_reason"].str.startswith("stopped at rung 0").all()
    on_disk = pd.read_csv(result.run_dir / "trials.csv", keep_default_na=False)
    assert "pruned_reason" in on_disk.columns
    assert on_disk.set_index("number").loc[stopped, "pruned_reason"].str.len().gt(0).all()
    # The front holds completed trials only.
    assert set(result.front["number"]) <= {n for n, stop in expected.items() if not stop}


# --- prescreen --------------------------------------------------------------------------------


@pytest.fixture
def prescreen_setup(tiny_config_dict):
    """A small space's candidates, its objectives, and a study holding five completed trained
    trials: the cheapest (size 1) at accuracy 0.9, the others (sizes 2-5) at 0.3-0.45."""
    tiny_config_dict["space"].update(w_bits=[2, 8], a_bits=[8], prune_ratios=[0.0])
    config = _config(tiny_config_dict, prescreen={"enabled": True})
    space = JointSearchSpace(config.space, num_classes=10, input_shape=(1, 8, 8))
    candidates = enumerate_candidates(space)
    study = create_study(directions=["maximize", "minimize"])
    for i, accuracy in enumerate([0.9, 0.3, 0.35, 0.4, 0.45]):
        study.add_trial(
            create_trial(
                state=TrialState.COMPLETE,
                values=[accuracy, float(i + 1)],
                user_attrs={"trained": True, "candidate": candidates[i].to_dict()},
            )
        )
    return config, candidates, study


def _prescreener(config, **overrides) -> Prescreener:
    settings = config.search.prescreen.model_copy(
        update={"min_trials": 5, "kappa": 0.0, **overrides}
    )
    return Prescreener(
        settings, objectives=config.objectives(), num_classes=10, input_shape=(1, 8, 8)
    )


def test_prescreen_skips_a_costly_candidate_that_a_cheaper_trial_beats(prescreen_setup):
    config, candidates, study = prescreen_setup
    unseen = candidates[7]
    # kappa 0: the bound is the forest's mean, at most 0.9, which trial 0 reaches at size 1.
    reason = _prescreener(config).skip_reason(study, unseen, {"size_kb": 10.0})
    assert reason is not None and "trial 0 reached 0.9000" in reason
    # Cheaper than every completed trial: nothing can beat it at no higher cost.
    assert _prescreener(config).skip_reason(study, unseen, {"size_kb": 0.5}) is None
    # A huge kappa makes the bound exceed any accuracy (the trees disagree, so std > 0).
    assert _prescreener(config, kappa=1e6).skip_reason(study, unseen, {"size_kb": 10.0}) is None
    # Too few completed trials to fit the predictor on: everything is trained.
    assert _prescreener(config, min_trials=6).skip_reason(study, unseen, {"size_kb": 10.0}) is None


def test_prescreen_trains_anyway_after_max_consecutive_skips(prescreen_setup):
    config, candidates, study = prescreen_setup
    prescreener = _prescreener(config, max_consecutive_skips=2)
    costs = {"size_kb": 10.0}
    skipped = {SKIPPED_ATTR: "predicted...", "pruned_reason": "skipped: predicted..."}
    study.add_trial(create_trial(state=TrialState.PRUNED, user_attrs=skipped))
    assert prescreener.skip_reason(study, candidates[7], costs) is not None  # streak 1 < 2
    study.add_trial(create_trial(state=TrialState.PRUNED, user_attrs=skipped))
    assert prescreener.skip_reason(study, candidates[7], costs) is None  # streak 2: train it
    # A trial that was not skipped (here: stopped early) ends the streak.
    stopped = {STOPPED_ATTR: 1, "pruned_reason": "stopped at rung 0"}
    study.add_trial(create_trial(state=TrialState.PRUNED, user_attrs=stopped))
    assert prescreener.skip_reason(study, candidates[7], costs) is not None


def test_prescreen_end_to_end_skips_untrained_and_still_counts_n_trials(
    tmp_path, tiny_config_dict, monkeypatch
):
    # A constant accuracy, no training: the forest predicts it exactly (std 0), so with kappa 0
    # a candidate is skipped exactly when a completed trial was no bigger.
    trained = []

    def evaluate(self, model, candidate):
        trained.append(candidate)
        return TaskMetrics(accuracy=PINNED_ACCURACY, loss=1.0, epochs=1, train_seconds=0.0)

    monkeypatch.setattr(TrainEvaluator, "evaluate", evaluate)
    prescreen = {
        "enabled": True,
        "min_trials": 2,
        "kappa": 0.0,
        "refit_every": 1,
        "max_consecutive_skips": 3,
    }
    config = _config(
        tiny_config_dict, n_trials=5, early_stopping={"enabled": False}, prescreen=prescreen
    )
    result = run_search(config, runs_dir=tmp_path)
    study, trials = result.study, result.trials

    skipped = [t for t in study.trials if SKIPPED_ATTR in t.user_attrs]
    others = [t for t in study.trials if SKIPPED_ATTR not in t.user_attrs]
    assert skipped, "the seeded sampler draws a candidate bigger than a completed one"
    # Skipped trials do not use up the budget: exactly n_trials others ran (and were trained).
    assert count_done(study.trials) == 5 == len(others) == len(trained)
    assert all(t.state == TrialState.COMPLETE for t in others)
    assert [t.number for t in others[:2]] == [0, 1]  # min_trials: the first two always train
    for t in skipped:
        assert t.state == TrialState.PRUNED
        assert t.user_attrs["pruned_reason"] == f"skipped: {t.user_attrs[SKIPPED_ATTR]}"
        assert "trained" not in t.user_attrs and "accuracy" not in t.user_attrs
        assert not (result.run_dir / "trials" / str(t.number)).exists()
        beaten_by = int(t.user_attrs[SKIPPED_ATTR].split("trial ")[1].split()[0])
        assert study.trials[beaten_by].values[1] <= t.user_attrs["size_kb"]
    # max_consecutive_skips: never more than 3 skipped trials in a row.
    streak = 0
    for t in study.trials:
        streak = streak + 1 if SKIPPED_ATTR in t.user_attrs else 0
        assert streak <= 3
    rows = trials.set_index("number").loc[[t.number for t in skipped]]
    assert (rows["state"] == "PRUNED").all()
    assert rows["pruned_reason"].str.startswith("skipped: ").all()


# --- the Ray backend, wired by hand (no cluster) ------------------------------------------------


def test_ray_backend_records_skipped_and_stopped_trials_as_pruned(
    tmp_path, tiny_config_dict, monkeypatch
):
    # The driver's searcher, its pricing step and the trainable, called in this process (as in
    # tests/search/test_search_ray.py), so the pinned accuracy reaches the trainable too.
    pytest.importorskip("ray", reason="Ray is not installed")
    from ray.tune.utils import flatten_dict

    from autocompress.search.ray_backend import (
        PricingSpace,
        StudySearcher,
        shared_objective,
        train_trial,
    )
    from autocompress.search.samplers import make_sampler
    from autocompress.search.study import open_study

    real = early_stopping.EarlyStoppingTrainEvaluator.rung_metrics
    monkeypatch.setattr(
        early_stopping.EarlyStoppingTrainEvaluator,
        "rung_metrics",
        lambda self, model, loader: {**real(self, model, loader), "accuracy": PINNED_ACCURACY},
    )
    # Early stopping judges from the second trial on; the prescreen only once 3 trials
    # completed, so the trials in between can be stopped rather than skipped.
    config = _config(
        tiny_config_dict,
        n_trials=6,
        backend="ray",
        early_stopping={"eta": 3, "min_dominators": 1, "min_records": 0},
        prescreen={"enabled": True, "min_trials": 3, "kappa": 0.0, "refit_every": 1},
    )
    run_dir = tmp_path / config.name
    run_dir.mkdir()
    study, storage = open_study(config, run_dir)
    shared_objective(config, run_dir)
    searcher = StudySearcher(
        PricingSpace(config, run_dir),
        n_trials=config.search.n_trials,
        metric=["accuracy", "size_kb"],
        mode=["max", "min"],
        sampler=make_sampler(config),
        storage=storage,
        study_name=config.name,
    )
    seen = set()
    while count_done(study.get_trials(deepcopy=False)) < config.search.n_trials:
        tune_id = f"t{len(seen)}"
        params = searcher.suggest(tune_id)
        assert params is not None and params != searcher.FINISHED  # the budget is not spent
        result = train_trial(params, config=config, run_dir=run_dir)
        searcher.on_trial_complete(tune_id, result=flatten_dict(result))
        seen.add(tune_id)
        assert len(seen) < 20, "the search does not converge on its budget"
    assert searcher.suggest("last") == searcher.FINISHED

    trials = study.get_trials(deepcopy=False)
    skipped = [t for t in trials if SKIPPED_ATTR in t.user_attrs]
    stopped = [t for t in trials if STOPPED_ATTR in t.user_attrs]
    assert skipped and stopped  # this seed draws both (see the settings above)
    for t in skipped + stopped:
        assert t.state == TrialState.PRUNED and t.user_attrs["pruned_reason"]
    for t in skipped:
        assert "trained" not in t.user_attrs and "rung.1" not in t.user_attrs
    for t in stopped:
        assert t.user_attrs[STOPPED_ATTR] == 1 and t.user_attrs["trained"] is True
    others = [t for t in trials if t not in skipped and t not in stopped]
    assert all(t.state == TrialState.COMPLETE for t in others)
    # Stopped trials used up the budget, skipped ones did not.
    assert len(others) + len(stopped) == config.search.n_trials
