"""Non-uniform weight quantizers as a per-layer dimension: the default [uniform] leaves every
space, candidate JSON and fingerprint as it was; a layer at float or above 8 bits gets no
quantizer dimension; overrides fix it; bad names are refused naming the field."""

import optuna
import pytest

from autocompress.config import ConfigError, parse_config
from autocompress.spaces import Candidate, JointSearchSpace, LayerChoice, SpaceConfig

SMALL = {"depths": [2], "widths": [8, 48], "kernel_sizes": [3], "strides": [1, 2]}


def _space(**fields) -> JointSearchSpace:
    config = SpaceConfig(family="small_cnn", arch=SMALL, **fields)
    return JointSearchSpace(config, num_classes=10, input_shape=(1, 8, 8))


def _trials(space, n: int, seed: int = 0):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    candidates = []
    study.optimize(lambda t: (candidates.append(space.suggest(t)), 0.0)[1], n_trials=n)
    return study.trials, candidates


def test_default_quantizers_keep_the_dimensions_and_draws_of_a_space_without_them():
    assert SpaceConfig().quantizers == ["uniform"]
    before, _ = _trials(_space(), 6)
    after, candidates = _trials(_space(quantizers=["uniform"]), 6)
    assert [t.params for t in before] == [t.params for t in after]
    assert not any(k.endswith(".quantizer") for t in after for k in t.params)
    assert all(c.quantizers() == {} for c in candidates)
    assert all("quantizer" not in c.to_json() for c in candidates)


def test_quantizer_dimension_only_where_weights_are_quantized_at_8_bits_or_fewer():
    space = _space(quantizers=["codebook", "uniform", "pot", "apot", "pot"], w_bits=[4, 16, 32])
    assert space.config.quantizers == ["uniform", "pot", "apot", "codebook"]
    trials, candidates = _trials(space, 30)
    seen = set()
    for trial, candidate in zip(trials, candidates, strict=True):
        for name, choice in candidate.layers.items():
            asked = f"{name}.quantizer" in trial.params
            assert asked == (choice.w_bits == 4), (name, choice)
            if choice.w_bits > 8:
                assert choice.quantizer == "uniform"
            seen.add(choice.quantizer)
    assert seen == {"uniform", "pot", "apot", "codebook"}


def test_a_single_quantizer_is_applied_without_being_searched_and_overrides_fix_it():
    trials, candidates = _trials(_space(quantizers=["pot"], w_bits=[4]), 3)
    assert not any(k.endswith(".quantizer") for t in trials for k in t.params)
    assert all(c.layers[n].quantizer == "pot" for c in candidates for n in c.layers)
    space = _space(
        quantizers=["uniform", "apot"],
        w_bits=[4],
        overrides={"classifier": {"quantizer": "codebook"}, "features.0.*": {"w_bits": 16}},
    )
    trials, candidates = _trials(space, 4)
    for trial, candidate in zip(trials, candidates, strict=True):
        assert candidate.layers["classifier"].quantizer == "codebook"
        assert "classifier.quantizer" not in trial.params
        assert candidate.layers["features.0.0"].quantizer == "uniform"  # 16 bits: uniform only


def test_unknown_quantizers_are_refused_naming_the_field(tiny_config_dict):
    tiny_config_dict["space"]["quantizers"] = ["uniform", "log2"]
    with pytest.raises(ConfigError, match=r"space\.quantizers:.*among.*Got \['log2'\]"):
        parse_config(tiny_config_dict)
    tiny_config_dict["space"]["quantizers"] = []
    with pytest.raises(ConfigError, match=r"space\.quantizers"):
        parse_config(tiny_config_dict)
    with pytest.raises(ValueError, match="quantizer"):
        SpaceConfig(overrides={"*": {"quantizer": "kmeans"}})


def test_fingerprint_ignores_quantizers_at_their_default(tiny_config_dict):
    plain = parse_config(tiny_config_dict)
    tiny_config_dict["space"]["quantizers"] = ["uniform"]
    assert parse_config(tiny_config_dict).fingerprint() == plain.fingerprint()
    tiny_config_dict["space"]["quantizers"] = ["uniform", "pot"]
    assert parse_config(tiny_config_dict).fingerprint() != plain.fingerprint()


def test_overrides_without_quantizer_dump_as_before():
    assert SpaceConfig(overrides={"x": {"w_bits": 4}}).model_dump()["overrides"]["x"] == {
        "w_bits": 4,
        "a_bits": None,
        "prune_ratio": None,
    }
    fixed = SpaceConfig(overrides={"x": {"quantizer": "pot"}})
    assert fixed.model_dump()["overrides"]["x"]["quantizer"] == "pot"


def test_candidate_json_round_trips_with_and_without_the_quantizer_key():
    plain = Candidate("small_cnn", {"a": 1}, {"c": LayerChoice(w_bits=4, a_bits=8)})
    data = plain.to_dict()
    assert "quantizer" not in data["layers"]["c"]
    assert Candidate.from_json(plain.to_json()) == plain
    pot = Candidate("small_cnn", {"a": 1}, {"c": LayerChoice(w_bits=4, a_bits=8, quantizer="pot")})
    assert pot.to_dict()["layers"]["c"]["quantizer"] == "pot"
    assert Candidate.from_json(pot.to_json()) == pot and pot.quantizers() == {"c": "pot"}
    # JSON written before the field existed loads as uniform.
    old = {"family": "small_cnn", "arch": {}, "layers": {"c": {"w_bits": 4, "a_bits": 8}}}
    assert Candidate.from_dict(old).layers["c"].quantizer == "uniform"
    bad = {"family": "small_cnn", "arch": {}, "layers": {"c": {"w_bits": 4, "a_bits": 8}}}
    bad["layers"]["c"]["quantizer"] = "nonsense"
    with pytest.raises(ValueError, match=r"layers\.c\.quantizer.*one of"):
        Candidate.from_dict(bad)
    bad["layers"]["c"] |= {"quantizer": "codebook", "w_bits": 32}
    with pytest.raises(ValueError, match=r"layers\.c\.quantizer.*2\.\.8-bit"):
        Candidate.from_dict(bad)
