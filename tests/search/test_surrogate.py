"""search.surrogate: model-based proposals queued through study.enqueue_trial."""

from __future__ import annotations

import json

import numpy as np
import pytest
from optuna import create_study
from optuna.trial import FixedTrial, TrialState, create_trial

from autocompress.config import parse_config
from autocompress.evaluators import TaskMetrics
from autocompress.evaluators.accuracy_predictor import Prediction
from autocompress.evaluators.train import TrainEvaluator
from autocompress.search import run_search
from autocompress.search.study import count_done
from autocompress.search.surrogate import PROPOSED_ATTR, Proposer
from autocompress.spaces import JointSearchSpace
from autocompress.spaces.sampling import enumerate_candidates
from autocompress.tasks import Classification


def _key(candidate_dict) -> str:
    return json.dumps(candidate_dict, sort_keys=True)


@pytest.fixture
def small(tiny_config_dict):
    tiny_config_dict["teacher"]["epochs"] = 1
    tiny_config_dict["space"].update(w_bits=[2, 8], a_bits=[8], prune_ratios=[0.0, 0.5])
    tiny_config_dict["search"]["objectives"] = ["accuracy", "size_kb"]
    config = parse_config(tiny_config_dict)
    space = JointSearchSpace(config.space, num_classes=10, input_shape=(1, 8, 8))
    return config, space, enumerate_candidates(space)


def _size(candidate) -> float:
    """A stand-in hardware cost: fewer weight bits and more pruning are cheaper."""
    layers = candidate.layers.values()
    return sum(c.w_bits * (1 - c.prune_ratio) for c in layers) + sum(candidate.arch["channels"])


def _proposer(config, space, *, over_budget=frozenset(), **settings) -> Proposer:
    def price(candidate):
        return {"size_kb": _size(candidate)}, _key(candidate.to_dict()) not in over_budget

    surrogate = config.search.surrogate.model_copy(update={"min_trials": 5, **settings})
    return Proposer(surrogate, space=space, objectives=config.objectives(), price=price, seed=0)


def _study_with(candidates, accuracies):
    study = create_study(directions=["maximize", "minimize"])
    for candidate, accuracy in zip(candidates, accuracies, strict=True):
        study.add_trial(
            create_trial(
                state=TrialState.COMPLETE,
                values=[accuracy, _size(candidate)],
                user_attrs={"trained": True, "candidate": candidate.to_dict()},
            )
        )
    return study


def test_queues_one_untried_within_budget_candidate_that_grows_the_front(small):
    config, space, candidates = small
    study = _study_with(candidates[:5], [0.9, 0.5, 0.6, 0.7, 0.8])
    tried = {_key(c.to_dict()) for c in candidates[:5]}
    over_budget = {_key(c.to_dict()) for c in candidates[5:8]}
    # Some untried candidate within budget is cheaper than every tried one: adding it at any
    # accuracy above 0 grows the front, so a proposal must come.
    cheapest_tried = min(_size(c) for c in candidates[:5])
    assert any(_size(c) < cheapest_tried for c in candidates[8:])
    # A pool as large as the space (128): it holds such a candidate.
    proposer = _proposer(config, space, over_budget=over_budget, pool_size=128)

    proposer(study, study.trials[-1])
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert len(waiting) == 1
    queued = space.suggest(study.ask())  # the next trial takes the queued parameters
    assert _key(queued.to_dict()) not in tried | over_budget
    assert waiting[0].user_attrs[PROPOSED_ATTR]["hypervolume_gain"] > 0

    # One proposal at a time: nothing more is queued while one waits.
    study.enqueue_trial(waiting[0].params)
    proposer(study, study.trials[-1])
    assert len(study.get_trials(states=(TrialState.WAITING,))) == 1


def test_no_proposal_before_min_trials_or_when_no_trial_will_run(small):
    config, space, candidates = small
    study = _study_with(candidates[:5], [0.9, 0.5, 0.6, 0.7, 0.8])
    _proposer(config, space, min_trials=6)(study, study.trials[-1])
    spent = _proposer(config, space)
    spent.budget_left = lambda trials: False
    spent(study, study.trials[-1])
    assert not study.get_trials(states=(TrialState.WAITING,))


@pytest.mark.slow
def test_search_runs_proposals_and_ends_with_exactly_n_trials(tmp_path, small, monkeypatch):
    config, _, _ = small

    def evaluate(self, model, candidate):  # no training: accuracy grows with the weight bits
        bits = [c.w_bits for c in candidate.layers.values()]
        accuracy = 0.5 + 0.05 * sum(bits) / len(bits)
        return TaskMetrics(accuracy=accuracy, loss=1.0, epochs=1, train_seconds=0.0)

    monkeypatch.setattr(TrainEvaluator, "evaluate", evaluate)
    raw = config.model_dump(mode="json")
    raw["search"].update(
        n_trials=8, early_stopping={"enabled": False}, surrogate={"enabled": True, "min_trials": 3}
    )
    study = run_search(parse_config(raw), runs_dir=tmp_path).study
    trials = study.get_trials(deepcopy=False)
    proposed = [t for t in trials if PROPOSED_ATTR in t.user_attrs]
    assert proposed and all(t.state == TrialState.COMPLETE for t in proposed)
    assert count_done(trials) == 8 == len(trials)  # no queued trial is left WAITING
    for t in proposed:  # a proposal is never a candidate tried before it
        earlier = {_key(u.user_attrs["candidate"]) for u in trials if u.number < t.number}
        assert _key(t.user_attrs["candidate"]) not in earlier


def test_zero_shot_proxy_is_a_predictor_feature_measured_once_per_candidate(small):
    config, space, candidates = small
    study = _study_with(candidates[:5], [0.9, 0.5, 0.6, 0.7, 0.8])
    measured = []

    def proxy(candidate):
        measured.append(_key(candidate.to_dict()))
        return 0.5

    surrogate = config.search.surrogate.model_copy(update={"min_trials": 5})
    proposer = Proposer(
        surrogate, space=space, objectives=config.objectives(), price=_price, proxy=proxy
    )
    proposer(study, study.trials[-1])
    assert "extra.proxy_score" in proposer.predictor.feature_names
    assert len(measured) == len(set(measured))  # cached: one measurement per candidate
    tried = {_key(c.to_dict()) for c in candidates[:5]}
    assert tried <= set(measured)  # the completed trials' candidates get it too, to fit on


def _price(candidate):
    return {"size_kb": _size(candidate)}, True


def test_objective_proxy_accuracy_is_the_untrained_compressed_model(tmp_path, small, monkeypatch):
    from autocompress.search.objective import TrialObjective
    from autocompress.search.setup import prepare_setup

    config, space, candidates = small
    setup = prepare_setup(config, tmp_path)
    objective = TrialObjective(setup)
    # The evaluator knows the teacher's score (a lossless PTQ fallback skips its fine-tune).
    assert setup.evaluator.teacher_metrics["accuracy"] == setup.teacher_metrics["accuracy"]
    eight_bit = next(c for c in candidates if all(x.w_bits == 8 for x in c.layers.values()))
    two_bit = next(c for c in candidates if all(x.w_bits == 2 for x in c.layers.values()))
    # 8-bit weights keep the (1-epoch) teacher's behaviour far better than 2-bit ones.
    assert objective.proxy_score(eight_bit) > objective.proxy_score(two_bit)
    # Scored on the first val_batches batches only (a pool scan must not cost full passes).
    seen = []
    original = Classification.evaluate

    def counting(self, model, loader, *, device):
        batches = list(loader)
        seen.append(len(batches))
        return original(self, model, batches, device=device)

    monkeypatch.setattr(Classification, "evaluate", counting)
    objective.proxy_score(eight_bit, val_batches=2)
    assert seen == [2]


def test_pool_persists_and_only_refresh_new_candidates_are_priced_per_proposal(small):
    config, space, candidates = small
    priced = []

    def price(candidate):
        priced.append(_key(candidate.to_dict()))
        return {"size_kb": _size(candidate)}, True

    surrogate = config.search.surrogate.model_copy(
        update={"min_trials": 5, "pool_size": 16, "refresh": 4}
    )
    proposer = Proposer(surrogate, space=space, objectives=config.objectives(), price=price)
    study = _study_with(candidates[:5], [0.9, 0.5, 0.6, 0.7, 0.8])
    proposer(study, study.trials[-1])
    first_pool = [_key(c.to_dict()) for c, _, _ in proposer._kept]
    assert len(first_pool) == 16 == len(set(priced))
    queued = study.ask()  # the queued candidate (or a sampled one, if none added volume)
    candidate = space.suggest(queued)
    queued.set_user_attr("trained", True)
    queued.set_user_attr("candidate", candidate.to_dict())
    study.tell(queued, [0.95, _size(candidate)])

    priced.clear()
    proposer(study, study.trials[-1])
    second_pool = [_key(c.to_dict()) for c, _, _ in proposer._kept]
    tried = {_key(t.user_attrs["candidate"]) for t in study.trials if "candidate" in t.user_attrs}
    assert len(second_pool) == 16 and not set(second_pool) & tried
    # 4 new draws: the tried candidate left the pool and the oldest others made room.
    survivors = [k for k in first_pool if k not in tried][-12:]
    assert second_pool[:12] == survivors
    assert len(priced) <= 4  # only the new draws were priced (a re-drawn old one is cached)


def _take(study, space):
    """What a worker does with the queued trial: take it, then price it (record its candidate);
    the trial stays RUNNING while it trains."""
    trial = study.ask()
    candidate = space.suggest(trial)
    trial.set_user_attr("candidate", candidate.to_dict())
    return candidate


def _queued(study) -> list[dict]:
    return [t.system_attrs["fixed_params"] for t in study.get_trials(states=(TrialState.WAITING,))]


def test_a_proposal_taken_but_not_priced_yet_is_not_proposed_again(small):
    config, space, candidates = small
    study = _study_with(candidates[:5], [0.9, 0.5, 0.6, 0.7, 0.8])
    proposer = _proposer(config, space, pool_size=128)
    proposer(study, study.trials[-1])
    [first] = _queued(study)
    study.ask()  # another thread took it and has not recorded its candidate yet
    proposer(study, study.trials[-1])
    [second] = _queued(study)
    taken = space.suggest(FixedTrial(first))
    assert _key(space.suggest(FixedTrial(second)).to_dict()) != _key(taken.to_dict())


class _SizePredictor:
    """Stand-in forest: the predicted accuracy grows with the stand-in size, with no spread, so
    candidates of one size are the same point of the objective space."""

    feature_names: list[str] = []

    def fit(self, candidates, scores, extra=None):
        return self

    def predict(self, candidates, *, return_std=False, extra=None):
        sizes = np.array([_size(c) for c in candidates], dtype=float)
        return Prediction(mean=0.5 + sizes / 1000, std=np.zeros(len(sizes)))


def test_concurrent_proposals_spread_over_the_front_instead_of_repeating_a_point(small):
    config, space, candidates = small
    study = _study_with(candidates[:5], [0.1] * 5)
    proposer = _proposer(config, space, pool_size=128)
    proposer.predictor = _SizePredictor()
    running = []
    for _ in range(4):  # four workers, each taking the proposal queued when it asked
        proposer(study, study.trials[-1])
        assert len(_queued(study)) == 1
        running.append(_take(study, space))
    # Every proposal is a new point: none repeats the cost (and so the predicted accuracy) of a
    # candidate already running, though the space has several candidates at each size.
    sizes = [_size(c) for c in running]
    assert len(set(sizes)) == len(sizes), sizes
    assert len({_key(c.to_dict()) for c in running}) == 4
