"""The per-layer sparsity dimension: unset it leaves every existing space, candidate JSON and
run fingerprint as it was; set, it is searched per layer, overridable, and round-trips."""

import json

import optuna
import pytest

from autocompress.config import parse_config
from autocompress.core.trials import candidate_summary
from autocompress.spaces import Candidate, LayerChoice, SpaceConfig


def test_default_sparsity_keeps_the_dimensions_draws_and_json_of_a_space_without_it(
    small_space, draws
):
    fields = {"w_bits": [4, 8], "prune_ratios": [0.0, 0.5]}
    before, after = small_space(**fields), small_space(**fields, sparsity=[0])
    assert SpaceConfig().sparsity == [0.0]
    assert SpaceConfig().sparsity_importance == "magnitude"
    assert SpaceConfig().pruning_importance == "l1"
    old, new = draws(before, 12), draws(after, 12)
    assert [t.params for t in new] == [t.params for t in old]
    candidate = after.suggest(optuna.create_study().ask())
    assert all("sparsity" not in layer for layer in candidate.to_dict()["layers"].values())


def test_sparsity_is_one_dimension_per_layer_and_overrides_fix_it(small_space, draws):
    space = small_space(sparsity=[0, 0.5, "2:4"], overrides={"classifier": {"sparsity": "1:4"}})
    trials = draws(space, 10)
    dims = {name for t in trials for name in t.params if name.endswith(".sparsity")}
    assert dims and "classifier.sparsity" not in dims
    values = {v for t in trials for k, v in t.params.items() if k.endswith(".sparsity")}
    assert values <= {0.0, 0.5, "2:4"} and len(values) > 1
    candidate = space.suggest(optuna.create_study().ask())
    assert candidate.layers["classifier"].sparsity == "1:4"


def test_sparsities_are_validated_with_the_field_name():
    # fractions first, then patterns by the share they zero (1:4 zeroes 75%, 2:4 50%)
    assert SpaceConfig(sparsity=["1:4", 0.5, 0, " 2 : 4 ", 0.5]).sparsity == [
        0.0,
        0.5,
        "2:4",
        "1:4",
    ]
    for bad in ([1.0], [-0.1], ["4:2"], ["0:4"], ["2-4"], ["0.5"], [True]):
        with pytest.raises(ValueError, match="sparsities must be fractions"):
            SpaceConfig(sparsity=bad)
    with pytest.raises(ValueError, match="N:M"):
        SpaceConfig(overrides={"*": {"sparsity": "3:3"}})
    with pytest.raises(ValueError, match="sparsity_importance"):
        SpaceConfig(sparsity_importance="random")
    with pytest.raises(ValueError, match="pruning_importance"):
        SpaceConfig(pruning_importance="l2")


def test_config_error_names_space_sparsity(tiny_config_dict):
    tiny_config_dict["space"]["sparsity"] = [0, 1.5]
    with pytest.raises(Exception, match=r"space\.sparsity"):
        parse_config(tiny_config_dict)


def test_fingerprint_ignores_the_new_fields_at_their_defaults(tiny_config_dict):
    plain = parse_config(tiny_config_dict)
    tiny_config_dict["space"] |= {
        "sparsity": [0],
        "sparsity_importance": "magnitude",
        "pruning_importance": "l1",
    }
    assert parse_config(tiny_config_dict).fingerprint() == plain.fingerprint()
    for key, value in (
        ("sparsity", [0, "2:4"]),
        ("sparsity_importance", "taylor"),
        ("pruning_importance", "bn_scale"),
    ):
        changed = json.loads(json.dumps(tiny_config_dict))
        changed["space"][key] = value
        assert parse_config(changed).fingerprint() != plain.fingerprint()


def test_overrides_without_sparsity_dump_as_before():
    config = SpaceConfig(overrides={"classifier": {"w_bits": 8}})
    assert config.model_dump(mode="json")["overrides"] == {
        "classifier": {"w_bits": 8, "a_bits": None, "prune_ratio": None}
    }


def test_candidate_json_round_trips_sparsity_and_old_json_loads_dense():
    arch = {"channels": [8, 16], "kernels": [3, 3], "strides": [1, 2]}
    old = {
        "version": 1,
        "family": "small_cnn",
        "arch": arch,
        "layers": {"features.0.0": {"w_bits": 4, "a_bits": 8, "prune_ratio": 0.25}},
    }
    candidate = Candidate.from_dict(old)
    assert candidate.layers["features.0.0"].sparsity == 0.0 and candidate.sparsities() == {}
    assert candidate.to_dict() == old
    sparse = Candidate(
        "small_cnn",
        arch,
        {
            "classifier": LayerChoice(8, 8, sparsity="2:4"),
            "features.0.0": LayerChoice(4, 8, 0, 1.0, sparsity=0.75),
        },
    )
    data = json.loads(sparse.to_json())
    assert data["layers"]["classifier"]["sparsity"] == "2:4"
    assert data["layers"]["features.0.0"]["sparsity"] == 0.75
    assert Candidate.from_json(sparse.to_json()) == sparse
    assert sparse.sparsities() == {"classifier": "2:4", "features.0.0": 0.75}
    data["layers"]["classifier"]["sparsity"] = "5:4"
    with pytest.raises(ValueError, match="layers.classifier"):
        Candidate.from_dict(data)


def test_summary_shows_the_sparse_layers():
    layers = {
        "a": {"w_bits": 4, "a_bits": 8, "prune_ratio": 0.0, "sparsity": "2:4"},
        "b": {"w_bits": 4, "a_bits": 8, "prune_ratio": 0.0, "sparsity": "2:4"},
        "c": {"w_bits": 4, "a_bits": 8, "prune_ratio": 0.0, "sparsity": 0.5},
        "d": {"w_bits": 4, "a_bits": 8, "prune_ratio": 0.0},
    }
    summary = candidate_summary({"family": "mlp", "arch": {"width": 8}, "layers": layers})
    assert summary.endswith("sparse 2:4x2 50%x1")
    for layer in layers.values():
        layer.pop("sparsity", None)
    assert "sparse" not in candidate_summary({"family": "mlp", "arch": {}, "layers": layers})
