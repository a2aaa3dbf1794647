import math

import numpy as np
import pytest
from scipy.stats import kendalltau

from autocompress.evaluators.accuracy_predictor import AccuracyPredictor, candidate_features
from autocompress.spaces import Candidate, JointSearchSpace, SpaceConfig
from autocompress.spaces.sampling import sample_candidates

SHAPES = {"num_classes": 10, "input_shape": (1, 8, 8)}


@pytest.fixture(scope="module")
def space():
    config = SpaceConfig(
        family="small_cnn",
        arch={"depths": [1, 2, 3], "widths": [8, 16, 32], "kernel_sizes": [3, 5]},
        w_bits=[2, 3, 4, 8],
        a_bits=[4, 8],
        prune_ratios=[0.0, 0.25, 0.5],
    )
    return JointSearchSpace(config, **SHAPES)


def true_accuracy(candidate: Candidate) -> float:
    """A known, nonlinear accuracy: the narrowest bit-width dominates, width and depth help,
    pruning hurts. Computed from the candidate itself, not from the predictor's features."""
    layers = list(candidate.layers.values())
    min_w = min(c.w_bits for c in layers)
    prune = np.mean([c.prune_ratio for c in layers])
    a_bits = np.mean([c.a_bits for c in layers])
    channels = candidate.arch["channels"]
    score = (
        0.5 * math.log2(min_w) / 3
        + 0.15 * len(channels) / 3
        + 0.15 * math.log2(sum(channels)) / math.log2(96)
        - 0.3 * prune
        + 0.05 * a_bits / 8
    )
    return float(np.clip(0.1 + 0.8 * score, 0.0, 1.0))


@pytest.fixture(scope="module")
def candidates(space):
    # Sampling traces each architecture's pruning groups: draw once for the whole module.
    return sample_candidates(space, n=100, seed=0)


@pytest.fixture(scope="module")
def fitted(candidates):
    noise = np.random.default_rng(1).normal(0.0, 0.01, size=len(candidates))
    accuracies = np.clip([true_accuracy(c) for c in candidates] + noise, 0.0, 1.0)
    train, held_out = candidates[:60], candidates[60:]
    predictor = AccuracyPredictor(**SHAPES, n_estimators=100, random_state=0)
    predictor.fit(train, accuracies[:60])
    return predictor, held_out, accuracies[60:]


def test_features_have_one_shape_for_every_architecture(candidates):
    shallow, deep = (next(c for c in candidates if len(c.arch["channels"]) == d) for d in (1, 3))
    a = candidate_features(shallow, **SHAPES)
    b = candidate_features(deep, **SHAPES)
    assert a.keys() == b.keys() and all(math.isfinite(v) for v in a.values())
    assert a["layers.count"] == 2 and b["layers.count"] == 4
    # first/last follow execution order, also after a JSON round-trip sorted the layer names
    round_tripped = Candidate.from_json(deep.to_json())
    assert list(round_tripped.layers)[0] == "classifier"
    assert candidate_features(round_tripped, **SHAPES) == b
    assert b["layers.w_bits.last"] == deep.layers["classifier"].w_bits
    assert b["layers.w_bits.first"] == deep.layers["features.0.0"].w_bits


def test_predictor_ranks_held_out_candidates_of_a_known_function(fitted):
    predictor, held_out, accuracies = fitted
    predicted = predictor.predict(held_out)
    tau = kendalltau(predicted, accuracies).statistic
    assert tau > 0.7, tau
    assert np.all((predicted >= 0) & (predicted <= 1))
    mean, std = predictor.predict(held_out, return_std=True)
    assert np.array_equal(mean, predicted) and np.all(std >= 0) and std.max() > 0


def test_fitting_is_deterministic(fitted, candidates):
    _, held_out, _ = fitted
    train = candidates[:30]
    accuracies = [true_accuracy(c) for c in train]
    first, second = (
        AccuracyPredictor(**SHAPES, n_estimators=20, random_state=3).fit(train, accuracies)
        for _ in range(2)
    )
    assert np.array_equal(first.predict(held_out), second.predict(held_out))


def test_prescreen_skips_only_candidates_dominated_by_the_front_at_no_higher_cost(fitted):
    predictor, held_out, _ = fitted
    mean, std = predictor.predict(held_out, return_std=True)
    i = int(np.argmax(std))  # the most uncertain candidate: its optimistic bound is highest
    candidate, cost = held_out[i : i + 1], [(1.0, 10.0)]
    # Predicted alone, as prescreen predicts it: float sums over a batch may round otherwise.
    alone = predictor.predict(candidate, return_std=True)
    bound = alone.mean[0] + alone.std[0]

    def kept(front, **kwargs) -> bool:
        return bool(predictor.prescreen(candidate, cost, front, **kwargs)[0])

    assert not kept([(bound + 0.01, (1.0, 10.0))])  # better than its best case at equal cost
    assert not kept([(bound, (0.5, 10.0))])  # as good as its best case, cheaper
    assert kept([(bound + 0.01, (1.5, 5.0))])  # better, but dearer in one cost
    assert kept([(bound - 0.01, (0.5, 5.0))])  # cheaper, but its best case may beat it
    assert kept([(1.0, (2.0, 20.0))])  # perfect but dearer in everything
    assert kept([])  # no front yet
    # kappa=0 judges the mean prediction: a front point between mean and bound now skips it
    between = [((mean[i] + bound) / 2, (1.0, 10.0))]
    assert kept(between) and not kept(between, kappa=0.0)
    # a batch: one mask entry per candidate
    mask = predictor.prescreen(held_out[:5], [(1.0, 10.0)] * 5, [(1.0, (9.0, 90.0))])
    assert mask.tolist() == [True] * 5


def test_errors_name_the_parameter(fitted, space):
    predictor, held_out, _ = fitted
    with pytest.raises(RuntimeError, match="call fit"):
        AccuracyPredictor(**SHAPES).predict(held_out)
    with pytest.raises(ValueError, match="'accuracies' parameter of AccuracyPredictor.fit"):
        AccuracyPredictor(**SHAPES).fit(held_out[:3], [0.5, 0.2, 1.5])
    with pytest.raises(ValueError, match="'costs' parameter of AccuracyPredictor.prescreen"):
        predictor.prescreen(held_out[:2], [(1.0,)], [(0.5, (1.0,))])
    with pytest.raises(ValueError, match="one common length"):
        predictor.prescreen(held_out[:1], [(1.0, 2.0)], [(0.5, (1.0,))])


def test_an_informative_extra_feature_is_used(candidates):
    # The target is a hidden number the candidate's own features cannot know; given as an
    # extra feature (as the search's zero-shot proxy is), the forest predicts it.
    hidden = np.random.default_rng(2).uniform(0.1, 0.9, size=len(candidates))
    extra = [{"proxy_accuracy": h} for h in hidden]
    train, test = slice(0, 60), slice(60, None)
    with_extra = AccuracyPredictor(**SHAPES, n_estimators=50, random_state=0)
    with_extra.fit(candidates[train], hidden[train], extra=extra[train])
    assert "extra.proxy_accuracy" in with_extra.feature_names
    predicted = with_extra.predict(candidates[test], extra=extra[test])
    assert kendalltau(predicted, hidden[test]).statistic > 0.8
    blind = AccuracyPredictor(**SHAPES, n_estimators=50, random_state=0)
    blind.fit(candidates[train], hidden[train])
    assert abs(kendalltau(blind.predict(candidates[test]), hidden[test]).statistic) < 0.4
    with pytest.raises(ValueError, match="'extra' parameter"):
        with_extra.predict(candidates[test], extra=extra[:3])


def test_rank_cuts_are_features_only_of_factorizing_candidates(candidates):
    import dataclasses

    plain = candidates[0]
    assert not any(key.startswith("layers.rank_cut") for key in candidate_features(plain, **SHAPES))
    name = next(iter(plain.layers))
    layers = {**plain.layers, name: dataclasses.replace(plain.layers[name], rank_ratio=0.25)}
    factorized = dataclasses.replace(plain, layers=layers)
    features = candidate_features(factorized, **SHAPES)
    # A candidate without the features reads 0 for them: exactly its cut.
    assert features["layers.rank_cut.max"] == pytest.approx(0.75)
    predictor = AccuracyPredictor(**SHAPES, n_estimators=10, random_state=0)
    predictor.fit([plain, factorized, *candidates[1:4]], [0.9, 0.5, 0.8, 0.7, 0.6])
    assert "layers.rank_cut.max" in predictor.feature_names
    assert predictor.features([plain])[0][predictor.feature_names.index("layers.rank_cut.max")] == 0


def test_sparsity_spatial_splits_and_quantizers_are_features_only_where_used(candidates):
    import dataclasses

    plain = candidates[0]
    keys = candidate_features(plain, **SHAPES)
    assert not any(
        k.startswith(("layers.sparsity", "layers.spatial", "layers.quantizer")) for k in keys
    )
    names = list(plain.layers)
    layers = dict(plain.layers)
    layers[names[0]] = dataclasses.replace(
        layers[names[0]], sparsity="2:4", rank_ratio=0.5, factorization="spatial"
    )
    layers[names[1]] = dataclasses.replace(layers[names[1]], quantizer="pot", w_bits=4)
    features = candidate_features(dataclasses.replace(plain, layers=layers), **SHAPES)
    assert features["layers.sparsity.max"] == pytest.approx(0.5)
    assert features["layers.spatial.fraction"] == pytest.approx(1 / len(names))
    assert features["layers.quantizer.pot"] == pytest.approx(1 / len(names))
