"""Low-rank factorization as a per-layer dimension: the space offers it only where it pays, an
unset rank_ratios leaves every existing space (and run fingerprint) as it was, and candidates
written before the field still load."""

import json

import optuna
import pytest
import torch

from autocompress.compression.apply import build_compressed
from autocompress.config import parse_config
from autocompress.core.trials import candidate_summary
from autocompress.spaces import Candidate, JointSearchSpace, LayerChoice, SpaceConfig
from autocompress.spaces.candidate import low_rank_pays
from autocompress.spaces.groups import is_depthwise
from autocompress.spaces.sampling import enumerate_candidates


def test_default_rank_ratios_keep_the_dimensions_and_draws_of_a_space_without_them(
    small_space, draws
):
    fields = {"w_bits": [4, 8], "prune_ratios": [0.0, 0.5]}
    before, after = small_space(**fields), small_space(**fields, rank_ratios=[1.0])
    assert SpaceConfig().rank_ratios == [1.0]
    old, new = draws(before, 12), draws(after, 12)
    assert [t.params for t in new] == [t.params for t in old]
    assert not any(name.endswith(".rank") for t in new for name in t.params)
    # Their candidates' JSON is what it was before the field existed.
    candidate = before.suggest(optuna.create_study().ask())
    assert all(
        set(layer) == {"w_bits", "a_bits", "prune_ratio"}
        for layer in candidate.to_dict()["layers"].values()
    )


def test_rank_dimensions_follow_prune_per_layer_and_record_only_ratios_that_pay(small_space, draws):
    space = small_space(rank_ratios=[0.25, 1.0, 0.5, 0.5])
    assert space.config.rank_ratios == [0.25, 0.5, 1.0]
    ranked = 0
    for trial in draws(space, 30):
        names = list(trial.params)
        for name in (n.removesuffix(".rank") for n in names if n.endswith(".rank")):
            # Each layer's rank choice comes right after its bits (and pruning ratio).
            assert names.index(f"{name}.rank") == names.index(f"{name}.a_bits") + 1 + (
                f"{name}.prune" in names
            )
            ranked += 1
    assert ranked > 0
    shapes = space.factorizable_shapes(space.family.largest_arch())
    assert set(shapes) == {"features.0.0", "features.1.0", "classifier"}
    assert shapes["features.1.0"] == (48, 48 * 9)
    seen = set()
    small = small_space(rank_ratios=[0.5, 1.0], w_bits=[8], a_bits=[8], prune_ratios=[0.0])
    for candidate in enumerate_candidates(small):
        arch_shapes = space.factorizable_shapes(candidate.arch)
        for name, choice in candidate.layers.items():
            assert choice.rank_ratio in (0.5, 1.0)
            if choice.rank_ratio < 1.0:
                assert low_rank_pays(choice.rank_ratio, *arch_shapes[name])
                seen.add(name)
    assert seen == {"features.0.0", "features.1.0", "classifier"}


def test_a_layer_where_no_ratio_pays_gets_no_rank_dimension(small_space, draws):
    # features.0.0 with 8 channels: 8 x 9 at 0.9 -> rank 7, 7 * 17 > 72 never pays.
    space = small_space(rank_ratios=[0.9, 1.0])
    for trial in draws(space, 20):
        assert "features.0.0.rank" not in trial.params


def test_overrides_fix_rank_ratio_where_it_pays_and_exclude_keeps_layers_whole(small_space, draws):
    space = small_space(
        rank_ratios=[0.25, 1.0],
        overrides={"features.*": {"rank_ratio": 0.5}, "classifier": {"rank_ratio": 0.9}},
        exclude=["features.0.0"],
    )
    for trial in draws(space, 10):
        assert not any(name.endswith(".rank") for name in trial.params)
    candidate = space.suggest(optuna.create_study().ask())
    # features.1.0 is at most 48 x 432 and at least 8 x 72: rank 1/2 pays at every width.
    assert candidate.layers["features.1.0"].rank_ratio == 0.5
    assert candidate.layers["features.0.0"] == LayerChoice()
    # 10 x 48 at 0.9 is rank 9: 9 * 58 > 480 does not pay, so the classifier stays whole.
    assert candidate.layers["classifier"].rank_ratio == 1.0


def test_depthwise_convs_are_never_factorized():
    config = SpaceConfig(family="mobilenetv2", rank_ratios=[0.25, 1.0], prune_ratios=[0.0])
    space = JointSearchSpace(config, num_classes=10, input_shape=(3, 16, 16))
    arch = space.family.largest_arch()
    model = space.family.build(arch, num_classes=10, input_shape=(3, 16, 16))
    depthwise = {n for n, m in model.named_modules() if is_depthwise(m)}
    assert depthwise and not depthwise & set(space.factorizable_shapes(arch))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(3):
        candidate = space.suggest(study.ask())
        assert all(
            candidate.layers[n].rank_ratio == 1.0 for n in depthwise if n in candidate.layers
        )
        model = build_compressed(candidate, num_classes=10, input_shape=(3, 16, 16))
        assert model(torch.randn(2, 3, 16, 16)).shape == (2, 10)


def test_rank_ratios_outside_0_1_are_refused_with_the_field_name():
    with pytest.raises(ValueError, match="rank ratios must lie in \\(0, 1\\]"):
        SpaceConfig(rank_ratios=[0.0, 1.0])
    with pytest.raises(ValueError, match="rank_ratio"):
        SpaceConfig(overrides={"*": {"rank_ratio": 1.5}})


def test_fingerprint_ignores_rank_ratios_at_their_default(tiny_config_dict):
    plain = parse_config(tiny_config_dict)
    tiny_config_dict["space"]["rank_ratios"] = [1.0]
    assert parse_config(tiny_config_dict).fingerprint() == plain.fingerprint()
    tiny_config_dict["space"]["rank_ratios"] = [0.5, 1.0]
    assert parse_config(tiny_config_dict).fingerprint() != plain.fingerprint()


def test_overrides_without_rank_ratio_dump_as_before():
    config = SpaceConfig(overrides={"classifier": {"w_bits": 8}})
    assert config.model_dump(mode="json")["overrides"] == {
        "classifier": {"w_bits": 8, "a_bits": None, "prune_ratio": None}
    }
    fixed = SpaceConfig(overrides={"classifier": {"rank_ratio": 0.5}})
    assert fixed.model_dump()["overrides"]["classifier"]["rank_ratio"] == 0.5


def test_old_candidate_json_without_rank_loads_at_full_rank():
    old = {
        "version": 1,
        "family": "small_cnn",
        "arch": {"channels": [8, 16], "kernels": [3, 3], "strides": [1, 2]},
        "layers": {"features.0.0": {"w_bits": 4, "a_bits": 8, "prune_ratio": 0.25}},
    }
    candidate = Candidate.from_dict(old)
    assert candidate.layers["features.0.0"].rank_ratio == 1.0 and candidate.rank_ratios() == {}
    assert candidate.to_dict() == old
    ranked = Candidate("small_cnn", old["arch"], {"classifier": LayerChoice(8, 8, 0.0, 0.5)})
    data = json.loads(ranked.to_json())
    assert data["layers"]["classifier"]["rank_ratio"] == 0.5
    assert Candidate.from_dict(data) == ranked and ranked.rank_ratios() == {"classifier": 0.5}
    data["layers"]["classifier"]["rank_ratio"] = 0
    with pytest.raises(ValueError, match="layers.classifier.rank_ratio"):
        Candidate.from_dict(data)


def test_summary_counts_the_factorized_layers():
    layers = {
        "a": {"w_bits": 4, "a_bits": 8, "prune_ratio": 0.0, "rank_ratio": 0.5},
        "b": {"w_bits": 4, "a_bits": 8, "prune_ratio": 0.5, "rank_ratio": 0.25},
        "c": {"w_bits": 4, "a_bits": 8, "prune_ratio": 0.0},
    }
    summary = candidate_summary({"family": "mlp", "arch": {"width": 8}, "layers": layers})
    assert summary.endswith("prune~50%x1 rank~38%x2")
    del layers["a"]["rank_ratio"], layers["b"]["rank_ratio"]
    assert "rank" not in candidate_summary({"family": "mlp", "arch": {}, "layers": layers})


def test_spatial_factorization_is_a_dimension_of_factorized_convs_only(small_space, draws):
    space = small_space(w_bits=[8], rank_ratios=[0.25, 0.5], factorizations=["channel", "spatial"])
    trials = draws(space, 12)
    kinds = {}
    for trial in trials:
        for name in trial.params:
            if name.endswith(".factorization"):
                layer = name.removesuffix(".factorization")
                assert not layer.startswith("classifier")  # a Linear: channel only
                kinds.setdefault(layer, set()).add(trial.params[name])
    assert kinds and set().union(*kinds.values()) == {"channel", "spatial"}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    built = 0
    for _ in range(8):
        candidate = space.suggest(study.ask())
        spatial = candidate.factorizations()
        assert all(candidate.layers[n].rank_ratio < 1 for n in spatial)
        assert Candidate.from_json(candidate.to_json()) == candidate
        if spatial:
            model = build_compressed(candidate, num_classes=10, input_shape=(1, 8, 8))
            name = next(iter(spatial))
            first = model.get_submodule(f"{name}.0")
            assert first.kernel_size[1] == 1 and model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
            assert "spatial)" in candidate_summary(candidate.to_dict())
            built += 1
    assert built
    # Not searched: no dimension, and candidates keep their former JSON (no factorization key).
    plain = draws(small_space(w_bits=[8], rank_ratios=[0.25, 0.5]), 4)
    assert not any(n.endswith(".factorization") for t in plain for n in t.params)
    with pytest.raises(ValueError, match="factorizations must be among"):
        SpaceConfig(factorizations=["tucker"])
