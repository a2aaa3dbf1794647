"""The simulated evaluator: answers from a table after sleeping the recorded time, goes through
the run's early-stopping rungs, fails a candidate missing from the table, and runs a real search."""

import json
import time

import pytest
from optuna.trial import TrialState

from autocompress.config import ConfigError, parse_config
from autocompress.evaluators import CandidateError, CandidateStopped, TrialContext
from autocompress.evaluators.early_stopping import RungTable
from autocompress.evaluators.simulated import (
    SimulatedEvaluator,
    load_table,
    synthetic_table,
    table_key,
)
from autocompress.search import run_search
from autocompress.spaces import Candidate, JointSearchSpace
from autocompress.spaces.sampling import enumerate_candidates


@pytest.fixture
def small_config(tiny_config_dict):
    """The tiny config on a space of 64 candidates, a 1-epoch teacher and 3-epoch trials."""
    tiny_config_dict["space"].update(w_bits=[2, 8], a_bits=[8])
    tiny_config_dict["space"]["arch"]["widths"] = [8]
    tiny_config_dict["teacher"]["epochs"] = 1
    return tiny_config_dict


def _candidates(config: dict) -> list[Candidate]:
    space = JointSearchSpace(parse_config(config).space, num_classes=10, input_shape=(1, 8, 8))
    return enumerate_candidates(space)


def test_answers_from_the_table_after_sleeping_its_time(small_config):
    candidates = _candidates(small_config)
    table = synthetic_table(candidates, epochs=3, epoch_seconds=0.02, seed=1)
    row = table[table_key(candidates[5])]
    evaluator = SimulatedEvaluator(table=table, epochs=3, time_scale=0.5)
    assert evaluator.seconds(candidates[5], 3) == pytest.approx(0.5 * sum(row["epoch_s"]))
    start = time.perf_counter()
    metrics = evaluator.evaluate_trial(None, candidates[5], context=TrialContext(number=0))
    assert time.perf_counter() - start >= 0.5 * sum(row["epoch_s"])
    assert metrics.accuracy == row["curve"][-1]
    assert metrics.epochs == 3

    fixed = SimulatedEvaluator(table=table, epochs=3, trial_seconds=0.3, jitter=0.5, seed=2)
    spread = {round(fixed.seconds(c, 3), 6) for c in candidates[:8]}
    assert len(spread) == 8  # jittered per candidate, around 0.3 s
    assert fixed.seconds(candidates[0], 1) == pytest.approx(fixed.seconds(candidates[0], 3) / 3)
    # The same seed sleeps each candidate alike in every process.
    again = SimulatedEvaluator(table=table, epochs=3, trial_seconds=0.3, jitter=0.5, seed=2)
    assert again.seconds(candidates[3], 3) == fixed.seconds(candidates[3], 3)


def test_missing_candidate_fails_and_epochs_must_match(small_config, tmp_path):
    candidates = _candidates(small_config)
    table = synthetic_table(candidates[1:], epochs=3, epoch_seconds=0.0)
    evaluator = SimulatedEvaluator(table=table, epochs=3)
    with pytest.raises(CandidateError, match="not in the simulated table"):
        evaluator.evaluate(None, candidates[0])
    with pytest.raises(ValueError, match="train.epochs"):
        SimulatedEvaluator(table=table, epochs=5)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"x": {"curve": [0.5], "epoch_s": []}}))
    with pytest.raises(ValueError, match="as many 'epoch_s'"):
        load_table(bad)


def test_stops_at_the_run_rungs_like_a_trained_candidate(small_config):
    candidates = _candidates(small_config)
    table = synthetic_table(candidates, epochs=3, epoch_seconds=0.0)
    ranked = sorted(candidates, key=lambda c: table[table_key(c)]["curve"][0])
    worst, best = ranked[0], ranked[-1]
    rungs = RungTable(rungs=(1,), eta=2, min_dominators=1, min_records=1)
    evaluator = SimulatedEvaluator(table=table, epochs=3).with_early_stopping(
        rungs, cost_names=["latency_ms"]
    )
    cheap = {"latency_ms": 1.0}
    metrics = evaluator.evaluate_trial(None, best, context=TrialContext(number=0, costs=cheap))
    assert metrics.accuracy == table[table_key(best)]["curve"][-1]
    with pytest.raises(CandidateStopped) as stopped:
        costly = {"latency_ms": 2.0}
        evaluator.evaluate_trial(None, worst, context=TrialContext(number=1, costs=costly))
    assert stopped.value.epochs == 1
    assert stopped.value.value == table[table_key(worst)]["curve"][0]
    assert [r.trial for r in rungs.store.records(1)] == [0, 1]


def test_search_with_the_simulated_evaluator(small_config, tmp_path):
    candidates = _candidates(small_config)
    # Half the space: the search meets candidates the table lacks, which fail with a reason.
    table = synthetic_table(candidates[::2], epochs=3, epoch_seconds=0.01)
    path = tmp_path / "table.json"
    path.write_text(json.dumps(table))
    small_config["search"].update(n_trials=8, early_stopping={"min_records": 2})
    small_config["evaluator"] = {"name": "simulated", "options": {"table": str(path)}}
    result = run_search(parse_config(small_config), runs_dir=tmp_path / "runs")
    trials = result.study.get_trials(deepcopy=False)
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert failed and all(
        "not in the simulated table" in t.user_attrs["fail_reason"] for t in failed
    )
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert done
    for trial in done:
        row = table[table_key(Candidate.from_dict(trial.user_attrs["candidate"]))]
        assert trial.values[0] == row["curve"][-1]
    trained = [t for t in trials if t.user_attrs.get("trained")]
    # Every trained trial was judged at the run's one rung (1 epoch of 3), in the study.
    assert trained and all("rung.1" in t.user_attrs for t in trained)


def test_options_are_checked_when_the_config_loads(small_config):
    small_config["evaluator"] = {"name": "simulated", "options": {"table": "t.json", "speed": 2}}
    with pytest.raises(ConfigError, match="'evaluator.options.speed' field is invalid"):
        parse_config(small_config)
    small_config["evaluator"]["options"] = {"table": "t.json", "time_scale": -1}
    with pytest.raises(ConfigError, match="'evaluator.options.time_scale' field is invalid"):
        parse_config(small_config)
