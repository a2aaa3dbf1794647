import json

import numpy as np
import pytest
import torch

from autocompress.compression.apply import build_compressed
from autocompress.compression.inherit import inherit_weights_
from autocompress.data import DataConfig, load_data, make_loaders
from autocompress.evaluators import Evaluator, TaskMetrics
from autocompress.evaluators.supernet import (
    SupernetConfig,
    SupernetEvaluator,
    get_supernet,
    rank_correlation,
)
from autocompress.evaluators.train import evaluate_accuracy, recalibrate_bn_
from autocompress.spaces import Candidate, JointSearchSpace, LayerChoice, SpaceConfig, build_model
from autocompress.spaces.sampling import sample_arch, sample_candidates, smallest_arch

CPU = torch.device("cpu")
SHAPES = {"num_classes": 10, "input_shape": (1, 8, 8)}
# Depth, width and kernel all vary: every kind of slice is shared.
ARCH_SPACE = {"depths": [1, 2], "widths": [8, 16], "kernel_sizes": [3, 5], "strides": [1, 2]}
CONFIG = SupernetConfig(epochs=8, lr=0.03, batch_size=128, n_random=2, seed=0)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Tiny models on shared, oversubscribed CPUs: a second intra-op thread mostly spins.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits():
    return load_data(DataConfig(dataset="digits"), seed=0)


@pytest.fixture(scope="module")
def space():
    config = SpaceConfig(
        family="small_cnn", arch=ARCH_SPACE, w_bits=[4, 8], a_bits=[8], prune_ratios=[0.0, 0.5]
    )
    return JointSearchSpace(config, **SHAPES)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, digits, space):
    directory = tmp_path_factory.mktemp("supernet")
    supernet, metrics = get_supernet(
        space, data=digits, config=CONFIG, directory=directory, device=CPU
    )
    return supernet, metrics, directory


def subnet_accuracy(space, arch, source: torch.nn.Module, digits) -> float:
    train, val = make_loaders(digits, batch_size=128, num_workers=0, seed=0)
    subnet = space.family.build(arch, **SHAPES)
    inherit_weights_(subnet, source.state_dict())
    recalibrate_bn_(subnet, train, batches=8, device=CPU)
    return evaluate_accuracy(subnet, val, device=CPU)[0]


def test_sampling_points_without_optuna(space):
    assert smallest_arch(space.family) == {"channels": [8], "kernels": [3], "strides": [1]}
    archs = [sample_arch(space.family, rng=np.random.default_rng(i)) for i in range(20)]
    assert {len(a["channels"]) for a in archs} == {1, 2}
    assert {k for a in archs for k in a["kernels"]} == {3, 5}
    first, again = sample_candidates(space, n=5, seed=3), sample_candidates(space, n=5, seed=3)
    assert first == again and len({c.to_json() for c in first}) > 1
    for candidate in first:  # every sampled point builds and has a choice for each layer
        model = build_compressed(candidate, **SHAPES)
        assert set(candidate.layers) <= {n for n, _ in model.named_modules()}


def test_sandwich_training_makes_every_subnet_far_better_than_untrained(trained, space, digits):
    supernet, metrics, _ = trained
    assert metrics["largest_accuracy"] > 0.85
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        untrained = build_model(space.teacher(), **SHAPES)
    archs = [
        smallest_arch(space.family),
        {"channels": [16], "kernels": [5], "strides": [1]},
        {"channels": [8, 16], "kernels": [5, 3], "strides": [1, 2]},
        {"channels": [16, 16], "kernels": [3, 3], "strides": [1, 2]},
    ]
    for arch in archs:
        after = subnet_accuracy(space, arch, supernet, digits)
        before = subnet_accuracy(space, arch, untrained, digits)
        assert after > 0.3 and after > before + 0.2, (arch, after, before)


def test_bn_recalibration_replaces_inherited_statistics(trained, space, digits):
    supernet, _, _ = trained
    subnet = space.family.build({"channels": [8], "kernels": [3], "strides": [1]}, **SHAPES)
    inherit_weights_(subnet, supernet.state_dict())
    train, _ = make_loaders(digits, batch_size=128, num_workers=0, seed=0)
    bn = subnet.features[0][1]
    inherited = bn.running_mean.clone()
    assert recalibrate_bn_(subnet, train, batches=3, device=CPU) == 3
    assert not torch.allclose(bn.running_mean, inherited)
    assert bn.num_batches_tracked.item() == 3 and bn.momentum == 0.1 and not subnet.training
    # the plain average over the three batches (momentum=None), not an EMA
    same_batches, _ = make_loaders(digits, batch_size=128, num_workers=0, seed=0)
    with torch.no_grad():
        means = [subnet.features[0][0](x).mean(dim=(0, 2, 3)) for x, _ in same_batches][:3]
    assert torch.allclose(bn.running_mean, torch.stack(means).mean(0), atol=1e-5)


def test_supernet_is_cached_and_reloaded_without_training(trained, space, digits, monkeypatch):
    supernet, metrics, directory = trained
    spec = json.loads((directory / "spec.json").read_text())
    assert spec["candidate"]["arch"] == space.family.largest_arch()
    assert spec["metrics"]["fingerprint"] == metrics["fingerprint"]

    def no_training(*args, **kwargs):
        raise AssertionError("the cached supernet should have been loaded")

    monkeypatch.setattr("autocompress.evaluators.supernet.train_supernet", no_training)
    loaded, loaded_metrics = get_supernet(
        space, data=digits, config=CONFIG, directory=directory, device=CPU
    )
    assert loaded_metrics["largest_accuracy"] == metrics["largest_accuracy"]
    for key, value in supernet.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    # another training config does not match the cache: it is retrained
    with pytest.raises(AssertionError, match="cached supernet"):
        get_supernet(
            space,
            data=digits,
            config=SupernetConfig(epochs=1, seed=1),
            directory=directory,
            device=CPU,
        )


def test_evaluator_scores_a_compressed_candidate_from_the_supernet(trained, digits):
    supernet, _, _ = trained
    candidate = Candidate(
        "small_cnn",
        {"channels": [16, 16], "kernels": [5, 3], "strides": [1, 2]},
        {
            "features.0.0": LayerChoice(w_bits=8, a_bits=8, prune_ratio=0.5),
            "features.1.0": LayerChoice(w_bits=4, a_bits=8),
            "classifier": LayerChoice(w_bits=8, a_bits=8),
        },
    )
    evaluator = SupernetEvaluator(
        supernet=supernet, data=digits, device=CPU, qat_steps=10, batch_size=128
    )
    model = build_compressed(candidate, **SHAPES)  # as the search builds it (no teacher here)
    metrics = evaluator.evaluate(model, candidate)
    assert metrics.accuracy > 0.5 and metrics.epochs == 1
    # the caller's model now holds the scored network: it reproduces the accuracy
    _, val = make_loaders(digits, batch_size=128, num_workers=0, seed=0)
    assert evaluate_accuracy(model, val, device=CPU)[0] == pytest.approx(metrics.accuracy)
    assert model.get_submodule("features.1.0").w_bits == 4
    assert model.get_submodule("features.0.0").out_channels == 8  # pruned by half


class FakeEvaluator(Evaluator):
    """Accuracy from the candidate alone: a known ranking without any training."""

    def __init__(self, score) -> None:
        self.score = score

    def evaluate(self, model, candidate):
        return TaskMetrics(accuracy=self.score(candidate), loss=0.0, epochs=0, train_seconds=0.0)


def test_rank_correlation_reports_kendall_tau_of_the_two_evaluators(space):
    candidates = sample_candidates(space, n=8, seed=0)

    def size(c: Candidate) -> float:
        return sum(c.arch["channels"]) + 0.1 * sum(ch.w_bits for ch in c.layers.values())

    same = rank_correlation(
        FakeEvaluator(size), FakeEvaluator(lambda c: 2 * size(c)), candidates, **SHAPES
    )
    assert same.kendall_tau == pytest.approx(1.0) and same.accuracies.shape == (8, 2)
    flipped = rank_correlation(
        FakeEvaluator(size), FakeEvaluator(lambda c: -size(c)), candidates, **SHAPES
    )
    assert flipped.kendall_tau == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="'candidates' parameter of rank_correlation"):
        rank_correlation(FakeEvaluator(size), FakeEvaluator(size), candidates[:1], **SHAPES)


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="'n_random' parameter of SupernetConfig"):
        SupernetConfig(n_random=-1)
    with pytest.raises(ValueError, match="'kd_alpha' parameter of SupernetConfig"):
        SupernetConfig(kd_alpha=1.5)
