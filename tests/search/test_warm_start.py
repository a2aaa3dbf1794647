"""``search.warm_start``: sensitivity-allocated candidates queued before the sampler draws any."""

from __future__ import annotations

import os

import optuna
import pytest
import torch

from autocompress.compression.sensitivity import Sensitivity
from autocompress.config import ConfigError, parse_config
from autocompress.search import run_search
from autocompress.search.warm_start import (
    WARM_START_ATTR,
    Allocator,
    cost_levels,
    coverage_order,
)
from autocompress.spaces import JointSearchSpace


@pytest.fixture
def net(tiny_net):
    """The conftest's ``tiny_net.py`` with a saved checkpoint of it, ``net.pt``."""
    from tiny_net import build

    torch.manual_seed(0)
    torch.save(build().state_dict(), tiny_net / "net.pt")
    return tiny_net


def _config(**search) -> dict:
    return {
        "name": "warm",
        "data": {"dataset": "digits", "val_fraction": 0.25, "batch_size": 128},
        "model": {
            "factory": "tiny_net:build",
            "checkpoint": "net.pt",
            "droppable_blocks": ["block"],
        },
        "space": {"w_bits": [2, 4, 8], "a_bits": [4, 8], "prune_ratios": [0.0, 0.5]},
        "train": {"epochs": 1, "lr": 0.01},
        "search": {"n_trials": 3, "sampler": "random", **search},
    }


def _sensitivity(**stem) -> Sensitivity:
    """The stem 100x as sensitive as the block's convs; the fc in between."""
    layers = {"stem": 100.0, "block.conv1": 1.0, "block.conv2": 1.0, "fc": 10.0}
    return Sensitivity(
        w_bits={n: {2: k * 16, 4: k, 8: k / 256} for n, k in layers.items()},
        a_bits={n: {4: k, 8: k / 16} for n, k in layers.items()},
        prune={"stem": {0.0: 0.0, 0.5: 1e3}, "block.conv1": {0.0: 0.0, 0.5: 2.0}},
        drop={"block": 50.0, **stem},
        params={"stem": 72, "block.conv1": 576, "block.conv2": 576, "fc": 80},
        macs={"stem": 72 * 64, "block.conv1": 576 * 64, "block.conv2": 576 * 64, "fc": 80},
    )


def test_the_allocation_meets_each_level_and_spends_bits_where_they_matter(net):
    space = JointSearchSpace(parse_config(_config()).space, num_classes=10, input_shape=(1, 8, 8))
    arch = space.family.largest_arch()
    layers, prunable = space.layer_dimensions(arch)
    assert set(prunable) == {"stem", "block.conv1"}  # the fixture's groups
    allocator = Allocator(space, _sensitivity(), arch=arch)
    assert allocator.allocate(0.0)[2] == pytest.approx(1.0)  # no pressure: uniform int8
    costs = []
    for level in cost_levels(4):
        chosen, dropped, cost = allocator.for_level(level)
        assert cost <= level + 1e-9
        costs.append(cost)
        if level < 0.5:  # squeezed: the insensitive convs give up bits before the stem
            assert chosen["stem"][0] >= chosen["block.conv2"][0]
            assert chosen["stem"][2] == 0.0  # pruning the stem costs 1000x its saving
    assert costs == sorted(costs, reverse=True)
    # A block that costs little to drop goes at once; a costly one only under pressure.
    cheap = Allocator(space, _sensitivity(block=1e-6), arch=arch)
    assert cheap.for_level(0.8)[1] == {"block"}
    assert allocator.for_level(0.8)[1] == set()


def test_a_search_trains_the_warm_start_candidates_first_and_once(net):
    config = parse_config(_config(warm_start={"candidates": 2}))
    assert config.warm_start_method() == "sensitivity"
    result = run_search(config, runs_dir=net / "runs")
    study = optuna.load_study(study_name="warm", storage=f"sqlite:///{result.run_dir}/study.db")
    trials = sorted(study.trials, key=lambda t: t.number)
    levels = [t.user_attrs.get(WARM_START_ATTR, {}).get("level") for t in trials]
    assert levels[:2] == pytest.approx(cost_levels(2)[::-1]) and levels[2] is None
    assert all(t.state.is_finished() for t in trials)
    first = trials[0].user_attrs["candidate"]["layers"]
    second = trials[1].user_attrs["candidate"]["layers"]
    bits = [sum(c["w_bits"] for c in layers.values()) for layers in (first, second)]
    assert bits[0] < bits[1]  # the hardest first
    # Resumed with a larger budget: nothing is queued again.
    more = _config(warm_start={"candidates": 2})
    more["search"]["n_trials"] = 4
    run_search(parse_config(more), runs_dir=net / "runs")
    trials = optuna.load_study(
        study_name="warm", storage=f"sqlite:///{result.run_dir}/study.db"
    ).trials
    assert sum(WARM_START_ATTR in t.user_attrs for t in trials) == 2 and len(trials) == 4


def test_warm_start_off_and_its_errors(net):
    assert parse_config(_config(warm_start={"method": "none"})).warm_start_method() == "none"
    no_checkpoint = _config()
    del no_checkpoint["model"]["checkpoint"]
    assert parse_config(no_checkpoint).warm_start_method() == "none"  # auto
    no_checkpoint["search"]["warm_start"] = {"method": "sensitivity"}
    with pytest.raises(ConfigError, match=r"search\.warm_start\.method"):
        parse_config(no_checkpoint)
    with pytest.raises(ConfigError, match="warm_start"):
        parse_config(_config(warm_start={"method": "hessian"}))
    quickstart = parse_config({"name": "q", "data": {"dataset": "digits"}})
    assert quickstart.warm_start_method() == "none"


@pytest.mark.slow
def test_the_ray_backend_trains_the_warm_start_candidates_first(net, monkeypatch):
    ray = pytest.importorskip("ray", reason="Ray is not installed")
    # Ray's worker processes import the network from the test's folder.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(net), os.environ.get("PYTHONPATH", "")]))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        config = _config(warm_start={"candidates": 2}, backend="ray", ray={"workers": 1})
        config["model"]["checkpoint"] = str(net / "net.pt")  # Ray workers run elsewhere
        result = run_search(parse_config(config), runs_dir=net / "runs")
    finally:
        ray.shutdown()
    study = optuna.load_study(study_name="warm", storage=f"sqlite:///{result.run_dir}/study.db")
    trials = sorted(study.trials, key=lambda t: t.number)
    assert [WARM_START_ATTR in t.user_attrs for t in trials] == [True, True, False]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)


def test_dimensions_the_allocation_leaves_open_get_their_mildest_choice(net):
    """Ranks, quantizers, sparsity and factorizations are not allocated: a warm-start candidate
    keeps those layers whole, uniform and dense."""
    config = _config(warm_start={"candidates": 1})
    config["search"]["n_trials"] = 1
    config["space"] |= {
        "rank_ratios": [0.25, 1.0],
        "factorizations": ["spatial", "channel"],
        "quantizers": ["codebook", "pot", "uniform"],
        "sparsity": ["2:4", 0.5, 0.0],
    }
    result = run_search(parse_config(config), runs_dir=net / "runs")
    study = optuna.load_study(study_name="warm", storage=f"sqlite:///{result.run_dir}/study.db")
    (trial,) = study.trials
    assert WARM_START_ATTR in trial.user_attrs and trial.state.is_finished()
    for layer in trial.user_attrs["candidate"]["layers"].values():
        assert set(layer) <= {"w_bits", "a_bits", "prune_ratio"}, layer  # defaults left out


def test_the_cost_range_is_spanned_first():
    assert coverage_order(1) == [0] and coverage_order(2) == [1, 0]
    assert coverage_order(4) == [3, 0, 1, 2]
    for n in range(1, 12):
        order = coverage_order(n)
        assert sorted(order) == list(range(n)) and order[: min(n, 2)] == [n - 1, 0][: min(n, 2)]
