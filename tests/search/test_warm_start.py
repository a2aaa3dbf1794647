"""``search.warm_start``: sensitivity-allocated candidates queued before the sampler draws any."""

from __future__ import annotations

import dataclasses
import os

import optuna
import pytest
import torch

from autocompress.compression.sensitivity import Sensitivity
from autocompress.config import ConfigError, parse_config
from autocompress.search import run_search
from autocompress.search.setup import prepare_setup
from autocompress.search.warm_start import (
    WARM_START_ATTR,
    Allocator,
    Choice,
    CostModel,
    cost_levels,
    coverage_order,
    device_cost_model,
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


def test_ranks_quantizers_and_sparsity_are_allocated_where_they_cost_least(net):
    """The fc loses little to rank 0.25 and the block's convs little to 2:4 sparsity or PoT
    weights: squeezed, the allocation takes those before it narrows the sensitive stem."""
    config = _config()
    config["space"] |= {
        "rank_ratios": [1.0, 0.25],
        "quantizers": ["uniform", "pot"],
        "sparsity": [0.0, "2:4"],
    }
    space = JointSearchSpace(parse_config(config).space, num_classes=10, input_shape=(1, 8, 8))
    arch = space.family.largest_arch()
    s = _sensitivity()
    s.rank = {"fc": {0.25: 0.0}, "stem": {0.25: 1e3}}
    s.shapes = {"fc": (10, 8), "stem": (8, 9)}
    convs = ("block.conv1", "block.conv2")
    s.sparsity = {n: {"2:4": 0.0} for n in convs} | {"stem": {"2:4": 1e3}, "fc": {"2:4": 1e3}}
    s.quantizer = {n: {("pot", b): 0.0 for b in (2, 4, 8)} for n in convs}
    allocator = Allocator(space, s, arch=arch)
    assert allocator.allocate(1e-12)[0]["stem"] == (8, 8, 0.0, 1.0, "uniform", 0.0)
    chosen, _, cost = allocator.for_level(0.5)
    assert cost <= 0.5
    assert chosen["fc"].rank == 0.25 and chosen["stem"].rank == 1.0
    assert all(chosen[n].sparsity == "2:4" for n in convs) and chosen["stem"].sparsity == 0.0
    # PoT costs what uniform does on the proxies; free of distortion here, 2 bits of it are.
    assert all(chosen[n].w_bits == 2 and chosen[n].quantizer == "pot" for n in convs)
    assert chosen["stem"].w_bits >= 4
    # A rank that the allocator never measured (one that does not pay) costs the whole layer.
    assert allocator._cost("stem", chosen["stem"]._replace(rank=0.5)) == allocator._cost(
        "stem", chosen["stem"]
    )


def test_the_allocated_ranks_quantizers_and_sparsity_reach_the_queued_trials(net, monkeypatch):
    """Measured as free of distortion, factorization and sparsity are taken by the hardest
    warm-start candidate, and the trial builds and trains them; the factorization kind, which
    the allocation does not decide, is the mildest (channel)."""
    from autocompress.search import warm_start

    measure = warm_start.measure_sensitivity

    def free(*args, **kwargs):
        s = measure(*args, **kwargs)
        for table in (s.rank, s.sparsity):
            for layer in table.values():
                layer.update(dict.fromkeys(layer, 0.0))
        return s

    monkeypatch.setattr(warm_start, "measure_sensitivity", free)
    config = _config(warm_start={"candidates": 2})
    config["search"]["n_trials"] = 2
    config["space"] |= {
        "rank_ratios": [0.25, 1.0],
        "factorizations": ["spatial", "channel"],
        "quantizers": ["codebook", "pot", "uniform"],
        "sparsity": ["2:4", 0.5, 0.0],
    }
    result = run_search(parse_config(config), runs_dir=net / "runs")
    study = optuna.load_study(study_name="warm", storage=f"sqlite:///{result.run_dir}/study.db")
    hardest = min(study.trials, key=lambda t: t.user_attrs[WARM_START_ATTR]["level"])
    assert hardest.state == optuna.trial.TrialState.COMPLETE
    layers = hardest.user_attrs["candidate"]["layers"]
    factorized = [n for n, c in layers.items() if c.get("rank_ratio", 1.0) < 1.0]
    sparse = [n for n, c in layers.items() if c.get("sparsity", 0.0)]
    assert factorized and sparse, layers
    assert all(layers[n].get("factorization", "channel") == "channel" for n in factorized)


def test_the_cost_range_is_spanned_first():
    assert coverage_order(1) == [0] and coverage_order(2) == [1, 0]
    assert coverage_order(4) == [3, 0, 1, 2]
    for n in range(1, 12):
        order = coverage_order(n)
        assert sorted(order) == list(range(n)) and order[: min(n, 2)] == [n - 1, 0][: min(n, 2)]


@pytest.mark.parametrize("device", ["cortex_a72", "jetson_orin_nano"])
def test_the_device_prices_sparsity_and_quantizers_as_it_runs_them(net, device):
    """2:4 sparsity saves storage everywhere and time only on a device with sparse kernels (the
    Orin's tensor cores); PoT weights decoded to int8 cost no less time than uniform ones."""
    from tiny_net import build

    # Wide enough that the Orin's time is in its multiply-accumulates, not per-layer overhead.
    torch.save(build(width=128).state_dict(), net / "wide.pt")
    config = _config()
    config["model"] |= {"kwargs": {"width": 128}, "checkpoint": "wide.pt"}
    config["hardware"] = {"profile": "analytic", "device": device}
    config["search"]["objectives"] = ["accuracy", "latency_ms", "size_kb"]
    config["space"] |= {
        "quantizers": ["uniform", "pot"],
        "sparsity": [0.0, "2:4"],
        "rank_ratios": [1.0, 0.25],
    }
    setup = prepare_setup(parse_config(config), net / "run")
    costs = device_cost_model(setup, setup.space.family.largest_arch())
    assert costs.sparsity["size_kb"]["2:4"] < 0.8
    if device == "cortex_a72":
        assert costs.sparsity["latency_ms"]["2:4"] == pytest.approx(1.0)
    else:
        assert costs.sparsity["latency_ms"]["2:4"] < 0.97
    assert set(costs.quantizer["latency_ms"]) == {"pot"}  # priced at 4 bits
    assert costs.quantizer["latency_ms"]["pot"] >= 1.0
    assert costs.quantizer["size_kb"]["pot"] == pytest.approx(1.0, abs=0.02)
    # Rank 0.25 cuts weights and MACs by ~3.5x; on the Orin each extra layer is another launch.
    assert costs.rank["size_kb"][0.25] < 0.4
    assert (costs.rank["latency_ms"][0.25] < 0.5) == (device == "cortex_a72")
    # The analytic profile prices layers one by one: each factorized layer's own ratio.
    layers = costs.layer_rank["latency_ms"]
    assert {name for name, _ in layers} == {"stem", "block.conv1", "block.conv2", "fc"}
    if device == "cortex_a72":  # the wide convs gain; a stem of 9 inputs per channel may not
        assert layers["block.conv1", 0.25] < 0.5 and layers["block.conv2", 0.25] < 0.5
    else:
        assert all(ratio > 1 for ratio in layers.values())


def test_a_factorization_the_device_runs_slower_is_costed_so(net):
    """Measured on the device, the network factorized at 0.25 everywhere takes 2x the time of
    the whole one: a factorized layer then costs more than the whole layer, not the 45% its
    shape says, and the network factorized everywhere costs exactly the measured 2x."""
    space = JointSearchSpace(parse_config(_config()).space, num_classes=10, input_shape=(1, 8, 8))
    s = _sensitivity()
    s.rank = {"fc": {0.25: 0.0}, "block.conv1": {0.25: 0.0}}
    s.shapes = {"fc": (10, 8), "block.conv1": (8, 72)}
    proxies = CostModel.proxies([8], [8], [0.0])
    slow = CostModel(share={"bops": "macs"}, bits=proxies.bits, prune=proxies.prune)
    slow = dataclasses.replace(slow, rank={"bops": {0.25: 2.0}})
    whole, factorized = Choice(8, 8, 0.0), Choice(8, 8, 0.0, rank=0.25)
    assert slow.layer_cost(s, "fc", factorized) > slow.layer_cost(s, "fc", whole)
    network = sum(slow.layer_cost(s, n, factorized if n in s.rank else whole) for n in s.macs)
    assert network == pytest.approx(2.0)
    unmeasured = CostModel(share={"bops": "macs"}, bits=proxies.bits, prune=proxies.prune)
    assert unmeasured.layer_cost(s, "fc", factorized) == pytest.approx(
        unmeasured.layer_cost(s, "fc", whole) * 2 * 18 / 80
    )
    assert (
        Allocator(space, s, arch=space.family.largest_arch(), costs=slow)
        .for_level(0.9)[0]["block.conv1"]
        .rank
        == 1.0
    )
