from pathlib import Path

import pytest

from autocompress.config import ConfigError, apply_overrides, load_config, parse_config
from autocompress.core import list_samplers

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_validate(path):
    config = load_config(path)
    assert config.name == path.stem
    assert len(config.objectives()) >= 2


def test_defaults_fill_in(tiny_config_dict):
    config = parse_config({"name": "x"})
    assert config.space.family == "small_cnn"
    assert config.search.sampler == "nsga2"
    assert parse_config(tiny_config_dict).train.epochs == 3


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"colour": "red"}, "colour"),
        ({"search": {"n_trials": "many"}}, "search.n_trials"),
        ({"search": {"sampler": "bayes"}}, "search.sampler"),
        ({"search": {"objectives": ["accuracy", "speed"]}}, "search.objectives"),
        ({"search": {"objectives": ["accuracy", "speed:min"]}}, "search.objectives"),
        ({"evaluator": {"name": "nope"}}, "evaluator.name"),
        ({"data": {"dataset": "nope"}}, "data.dataset"),
        ({"train": {"kd_alpha": 2}}, "train.kd_alpha"),
        ({"train": {"device": "tpu"}}, "train.device"),
        ({"hardware": {"budget": {"max_latency_ms": -1}}}, "hardware.budget.max_latency_ms"),
        ({"space": {"family": "nope"}}, "space.family"),
        ({"space": {"arch": {"widths": ["wide"]}}}, "space.arch.widths.0"),
        ({"space": {"arch": {"unknown_knob": 1}}}, "space.arch.unknown_knob"),
        ({"data": {"val_fraction": 1.5}}, "data.val_fraction"),
        (
            {
                "hardware": {"profile": "measured"},
                "search": {"objectives": ["accuracy", "energy_mj"]},
            },
            "hardware.options.power_w",
        ),
    ],
)
def test_bad_fields_are_named(tiny_config_dict, patch, field):
    data = tiny_config_dict
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    with pytest.raises(ConfigError) as info:
        parse_config(data, source="my.yaml")
    assert "my.yaml" in str(info.value)
    assert field in str(info.value)


def test_load_config_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed")
    with pytest.raises(ConfigError, match="bad.yaml.*not valid YAML"):
        load_config(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(scalar)


def test_yaml_tags_that_run_code_are_refused(tmp_path):
    evil = tmp_path / "evil.yaml"
    evil.write_text("name: !!python/object/apply:os.system ['echo hacked']")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(evil)


def test_fingerprint_ignores_only_run_length_knobs(tiny_config_dict):
    base = parse_config(tiny_config_dict).fingerprint()
    tiny_config_dict["search"]["n_trials"] = 99
    assert parse_config(tiny_config_dict).fingerprint() == base
    tiny_config_dict["train"]["epochs"] = 5
    assert parse_config(tiny_config_dict).fingerprint() != base


def test_overrides_set_nested_fields_from_yaml_values(tiny_config_dict):
    resolved = parse_config(tiny_config_dict).model_dump(mode="json")  # as the CLI applies them
    data = apply_overrides(
        resolved,
        ["train.epochs=1", "space.w_bits=[4, 8]", "seed=7", "hardware.options.threads=2"],
    )
    config = parse_config(data)
    assert config.train.epochs == 1 and config.space.w_bits == [4, 8] and config.seed == 7
    assert config.hardware.options["threads"] == 2
    with pytest.raises(ConfigError, match="'train.epochs' is not a config section"):
        apply_overrides(tiny_config_dict, ["train.epochs.x=1"])
    with pytest.raises(ConfigError, match="not valid YAML"):
        apply_overrides(tiny_config_dict, ["train.lr=[1,"])
    with pytest.raises(ConfigError, match="expected FIELD=VALUE"):
        apply_overrides(tiny_config_dict, ["train..epochs=1"])


def test_objectives_are_the_metrics_a_trial_records(tiny_config_dict):
    # Any metric a trial records may be an objective, params included; a name no trial records
    # is refused at load time (not by a KeyError in every trial), and the message lists them.
    tiny_config_dict["search"]["objectives"] = ["accuracy", "params", "peak_mem_kb:min"]
    config = parse_config(tiny_config_dict)
    assert [(o.name, o.direction) for o in config.objectives()] == [
        ("accuracy", "maximize"),
        ("params", "minimize"),
        ("peak_mem_kb", "minimize"),
    ]
    tiny_config_dict["search"]["objectives"] = ["accuracy", "flops:min"]
    with pytest.raises(ConfigError, match=r"must name metrics .*'params'.*Got 'flops'"):
        parse_config(tiny_config_dict)


@pytest.mark.parametrize(
    ("patch", "line"),
    [
        # The project's validators end their message "Got X": the value is not repeated.
        (
            {"space": {"w_bits": [1]}},
            "space.w_bits: Value error, bit-widths must lie in [2, 32] (32 = float). Got [1]",
        ),
        (
            {"search": {"sampler": "bayes"}},
            # {samplers}: the registry at run time (another test may have registered one).
            "search.sampler: Value error, must be one of {samplers}. Got 'bayes'",
        ),
        # Pydantic's own messages name the limit, not the value: it is appended.
        ({"search": {"n_trials": 0}}, "search.n_trials: Input should be greater than 0 (got 0)"),
        (
            {"train": {"kd_alpha": 2}},
            "train.kd_alpha: Input should be less than or equal to 1 (got 2)",
        ),
    ],
)
def test_validation_messages_name_the_value_once(tiny_config_dict, patch, line):
    for key, value in patch.items():
        tiny_config_dict[key] = {**tiny_config_dict.get(key, {}), **value}
    with pytest.raises(ConfigError) as info:
        parse_config(tiny_config_dict, source="my.yaml")
    lines = str(info.value).splitlines()
    line = line.replace("{samplers}", str(list_samplers()))
    assert lines == ["my.yaml: invalid config", f"  {line}"]
