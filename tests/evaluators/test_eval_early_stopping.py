import threading
import time

import optuna
import pytest
import torch

from autocompress.compression.apply import build_compressed
from autocompress.data import DataConfig, load_data
from autocompress.evaluators import CandidateError, CandidateStopped, TrialContext
from autocompress.evaluators.early_stopping import (
    EarlyStoppingTrainEvaluator,
    InMemoryRungStore,
    OptunaRungStore,
    RungRecord,
    RungStore,
    RungTable,
    dominates,
    rung_schedule,
)
from autocompress.evaluators.train import TrainEvaluator
from autocompress.spaces import Candidate, LayerChoice

CPU = torch.device("cpu")


def rec(trial: int, score: float, *costs: float) -> RungRecord:
    return RungRecord(trial=trial, score=score, costs=tuple(costs))


# --- rung schedule -----------------------------------------------------------------------------


def test_rungs_are_min_epochs_times_powers_of_eta_below_the_full_budget():
    assert rung_schedule(max_epochs=10) == (1, 3, 9)
    assert rung_schedule(max_epochs=9) == (1, 3)
    assert rung_schedule(max_epochs=27, min_epochs=2, eta=2) == (2, 4, 8, 16)
    assert rung_schedule(max_epochs=1) == ()
    with pytest.raises(ValueError, match="'eta' parameter of rung_schedule must be an int >= 2"):
        rung_schedule(max_epochs=9, eta=1)


# --- the dominance rule ------------------------------------------------------------------------


def test_dominance_is_weak_and_needs_every_cost_no_higher():
    assert dominates(rec(0, 0.9, 1.0, 5.0), rec(1, 0.8, 1.0, 5.0))
    assert dominates(rec(0, 0.8, 1.0, 5.0), rec(1, 0.8, 1.0, 5.0))  # equal records
    assert not dominates(rec(0, 0.9, 1.0, 5.1), rec(1, 0.8, 1.0, 5.0))  # dearer in one cost
    assert not dominates(rec(0, 0.7, 0.5, 1.0), rec(1, 0.8, 1.0, 5.0))  # less accurate


def test_stops_exactly_when_k_dominators_at_no_higher_cost_exist():
    table = RungTable(rungs=(1,), eta=3, min_dominators=2, min_records=3)
    for trial, (acc, lat, size) in enumerate([(0.9, 1.0, 1.0), (0.5, 9.0, 9.0), (0.4, 9.0, 9.0)]):
        assert not table.report(1, rec(trial, acc, lat, size)).stop  # fewer than 3 records
    # 3 earlier records -> k = max(2, 4 // 3) = 2; only trial 0 dominates (0.6 > 0.5, 0.4)
    decision = table.report(1, rec(3, 0.6, 2.0, 2.0))
    assert (decision.stop, decision.competitors, decision.dominators, decision.required) == (
        False,
        3,
        1,
        2,
    )
    # now trials 0 and 3 dominate (0.55, 2.0, 2.0): exactly k = 2 -> stopped
    decision = table.report(1, rec(4, 0.55, 2.0, 2.0))
    assert decision.stop and decision.dominators == 2 == decision.required


def test_never_stops_a_candidate_cheaper_in_some_cost():
    table = RungTable(rungs=(1, 3), min_dominators=1, min_records=1)
    for trial in range(30):
        table.report(1, rec(trial, 0.99, 1.0, 1.0))
    # far less accurate, but the smallest model: nobody dominates it, whatever the count
    decision = table.report(1, rec(30, 0.10, 2.0, 0.5))
    assert not decision.stop and decision.dominators == 0
    # the same accuracy at no cost advantage is stopped; k grows with the rung (31 // 3 = 10)
    decision = table.report(1, rec(31, 0.10, 2.0, 1.0))
    assert decision.stop and decision.required == 32 // 3 and decision.dominators == 31


def test_k_follows_the_asha_quota_with_a_floor():
    table = RungTable(rungs=(1,), eta=3, min_dominators=2)
    assert [table.required_dominators(n) for n in (0, 4, 5, 8, 29)] == [2, 2, 2, 3, 10]
    # With no costs the rule is successive halving: the top 1/eta of the rung goes on.
    table = RungTable(rungs=(1,), eta=3, min_dominators=1, min_records=0)
    accuracies = [0.1 * i for i in range(1, 10)]  # increasing: each new one is the best so far
    assert not any(table.report(1, rec(i, a)).stop for i, a in enumerate(accuracies))
    decision = table.report(1, rec(9, 0.75))  # 2 of 9 earlier are better; quota 10 // 3 = 3
    assert not decision.stop and decision.required == 3
    assert table.report(1, rec(10, 0.65)).stop  # 4 better, quota 11 // 3 = 3


def test_report_validates_its_input():
    table = RungTable(rungs=(1, 3))
    with pytest.raises(ValueError, match=r"'rung' parameter of RungTable.report must be one of"):
        table.report(2, rec(0, 0.5, 1.0))
    with pytest.raises(ValueError, match="'record.score'"):
        table.report(1, rec(0, float("nan"), 1.0))
    table.report(1, rec(0, 0.5, 1.0))
    with pytest.raises(ValueError, match="'record.costs' parameter .* as many costs"):
        table.report(1, rec(1, 0.5, 1.0, 2.0))
    with pytest.raises(ValueError, match="'rungs' parameter of RungTable must be strictly"):
        RungTable(rungs=(3, 1))
    with pytest.raises(ValueError, match="'store' parameter of RungTable"):
        RungTable(rungs=(1,), store=object())


class SlowStore(InMemoryRungStore):
    """Widens the read-then-write window so that a missing lock would show."""

    def records(self, rung):
        found = super().records(rung)
        time.sleep(0.001)
        return found


def test_concurrent_reports_each_see_every_earlier_record():
    table = RungTable(rungs=(1,), min_records=0, store=SlowStore())
    decisions = {}

    def worker(start: int) -> None:
        for trial in range(start, start + 10):
            decisions[trial] = table.report(1, rec(trial, 0.5, float(trial % 3)))

    threads = [threading.Thread(target=worker, args=(10 * i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stored = table.store.records(1)
    assert len(stored) == 80
    # Atomic compare-and-add: the i-th stored record was judged against exactly i earlier ones.
    assert [decisions[r.trial].competitors for r in stored] == list(range(80))


def test_records_persist_in_optuna_trial_user_attrs():
    study = optuna.create_study(directions=["maximize", "minimize"])
    trials = [study.ask() for _ in range(3)]
    store = OptunaRungStore(study)
    assert isinstance(store, RungStore)
    table = RungTable(rungs=(1, 3), min_records=0, min_dominators=1, store=store)
    table.report(1, rec(trials[0].number, 0.9, 1.0))
    table.report(3, rec(trials[0].number, 0.95, 1.0))
    assert table.report(1, rec(trials[1].number, 0.8, 1.0)).stop
    assert trials[1].number != trials[0].number
    # a fresh table over the same study (a resumed run) sees the stored records
    resumed = RungTable(rungs=(1, 3), min_records=0, min_dominators=1, store=OptunaRungStore(study))
    assert resumed.store.records(1) == [rec(0, 0.9, 1.0), rec(1, 0.8, 1.0)]
    assert study.trials[0].user_attrs["rung.3"] == {"trial": 0, "score": 0.95, "costs": [1.0]}
    # records stored by runs that predate tasks name the score "accuracy"
    old = {"trial": 0, "accuracy": 0.95, "costs": [1.0]}
    assert RungRecord.from_dict(old) == rec(0, 0.95, 1.0)
    assert resumed.report(1, rec(trials[2].number, 0.85, 1.0)).dominators == 1


# --- the evaluator -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    return load_data(DataConfig(dataset="digits", limit_train=256), seed=0)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Tiny models on shared, oversubscribed CPUs: a second intra-op thread mostly spins and
    # was seen to make these steps ~5x slower.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_cnn(seed: int = 0):
    names = ("features.0.0", "features.1.0", "classifier")
    candidate = Candidate(
        "small_cnn",
        {"channels": [8, 8], "kernels": [3, 3], "strides": [1, 2]},
        {name: LayerChoice(w_bits=8, a_bits=8) for name in names},
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_compressed(candidate, num_classes=10, input_shape=(1, 8, 8))
    return model, candidate


def evaluator(table: RungTable, digits, *, epochs: int, **kwargs) -> EarlyStoppingTrainEvaluator:
    return EarlyStoppingTrainEvaluator(
        table=table,
        data=digits,
        epochs=epochs,
        lr=0.01,
        weight_decay=0.0,
        batch_size=128,
        device=CPU,
        **kwargs,
    )


def test_stops_at_the_rung_where_dominators_appear(digits):
    table = RungTable(rungs=rung_schedule(max_epochs=4), min_dominators=2, min_records=2)
    assert table.rungs == (1, 3)
    # Rung 1 (1 epoch): perfect but dearer competitors, so no stop. Rung 3: two perfect ones
    # at lower latency and equal size dominate the candidate.
    for trial in (100, 101):
        table.report(1, rec(trial, 1.0, 10.0, 50.0))
        table.report(3, rec(trial, 1.0, 0.1, 5.0))
    model, candidate = tiny_cnn()
    ev = evaluator(table, digits, epochs=4, cost_names=["latency_ms", "size_kb"])
    context = TrialContext(number=7, costs={"latency_ms": 1.0, "size_kb": 5.0, "energy_mj": 2.0})
    with pytest.raises(CandidateStopped) as info:
        ev.evaluate_trial(model, candidate, context=context)
    stopped = info.value
    assert (stopped.rung, stopped.epochs) == (1, 3) and 0.0 <= stopped.value <= 1.0
    assert not isinstance(stopped, CandidateError)  # a result, not a failure
    # the trial's own records: one per rung reached, costs in cost_names order
    assert table.store.records(1)[-1] == rec(7, table.store.records(1)[-1].score, 1.0, 5.0)
    assert table.store.records(3)[-1].trial == 7 and len(table.store.records(3)) == 3


def test_a_candidate_never_stopped_trains_exactly_like_train_evaluator(digits):
    table = RungTable(rungs=(1,), min_records=1000)  # records, never stops
    model, candidate = tiny_cnn()
    context = TrialContext(number=0, costs={"latency_ms": 1.0})
    metrics = evaluator(table, digits, epochs=2).evaluate_trial(model, candidate, context=context)
    reference, _ = tiny_cnn()
    expected = TrainEvaluator(
        data=digits, epochs=2, lr=0.01, weight_decay=0.0, batch_size=128, device=CPU
    ).evaluate(reference, candidate)
    assert metrics.accuracy == expected.accuracy and metrics.epochs == 2
    assert metrics.loss == pytest.approx(expected.loss, rel=1e-6)
    assert len(table.store.records(1)) == 1
    for key, value in reference.state_dict().items():
        assert torch.allclose(model.state_dict()[key].float(), value.float(), atol=1e-6), key


def test_missing_costs_are_reported_by_name(digits):
    ev = evaluator(RungTable(rungs=(1,)), digits, epochs=2, cost_names=["latency_ms"])
    model, candidate = tiny_cnn()
    with pytest.raises(ValueError, match=r"'context.costs' .*missing \['latency_ms'\]"):
        ev.evaluate_trial(model, candidate, context=TrialContext(number=0, costs={"size": 1.0}))


def test_a_retried_attempts_records_do_not_judge_its_retry():
    # An interrupted attempt measured the candidate at rung 1; its retry measures it again. Two
    # equal records dominate each other, so the retry must not see its own first attempt.
    study = optuna.create_study(directions=["maximize", "minimize"])
    first = study.ask()
    store = OptunaRungStore(study)
    store.add(1, rec(first.number, 0.9, 1.0))
    study.tell(first, state=optuna.trial.TrialState.FAIL)
    other = study.ask()
    store.add(1, rec(other.number, 0.95, 1.0))
    assert [r.trial for r in store.records(1)] == [first.number, other.number]

    study.enqueue_trial(first.params, user_attrs={"retry_of": first.number})
    retry = study.ask()
    assert [r.trial for r in store.records(1)] == [other.number]
    table = RungTable(rungs=(1, 3), min_records=0, min_dominators=2, store=store)
    decision = table.report(1, rec(retry.number, 0.9, 1.0))
    assert (decision.competitors, decision.dominators, decision.stop) == (1, 1, False)
