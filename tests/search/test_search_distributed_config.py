"""The search section's distributed settings: validation, fingerprint, CLI, the optional extra."""

import sys

import pytest
import yaml
from typer.testing import CliRunner

import autocompress.search
from autocompress.cli import app
from autocompress.config import ConfigError, parse_config
from autocompress.search import run_search


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("storage", "mongodb://db/runs", "search.storage"),
        ("storage", "runs/study.db", "search.storage"),
        ("ray", {"address": "not an address"}, "search.ray.address"),
        ("ray", {"workers": 0}, "search.ray.workers"),
        ("worker", {"heartbeat_interval": 0}, "search.worker.heartbeat_interval"),
        ("backend", "dask", "search.backend"),
    ],
)
def test_bad_distributed_settings_name_the_field(tiny_config_dict, field, value, message):
    tiny_config_dict["search"][field] = value
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        parse_config(tiny_config_dict, source="tiny.yaml")


def test_where_trials_run_does_not_change_what_a_trial_means(tiny_config_dict):
    before = parse_config(tiny_config_dict).fingerprint()
    tiny_config_dict["search"].update(
        backend="ray",
        storage="journal:/shared/runs/tiny.log",
        ray={"address": "10.0.0.1:6379", "workers": 16, "gpus_per_trial": 0.5},
        worker={"heartbeat_interval": 30, "max_retry": 5},
    )
    config = parse_config(tiny_config_dict)
    assert config.fingerprint() == before
    assert config.search.ray.address == "10.0.0.1:6379" and config.search.ray.workers == 16


def test_search_command_takes_the_backend_options(tmp_path, tiny_config_dict):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config_dict))
    command = ["search", str(config), "--runs-dir", str(tmp_path), "--backend", "ray"]
    result = CliRunner().invoke(app, [*command, "--workers", "0"])
    assert result.exit_code == 2 and "search.ray.workers" in result.output
    result = CliRunner().invoke(app, [*command, "--address", "nowhere"])
    assert result.exit_code == 2 and "search.ray.address" in result.output


def test_the_ray_backend_without_ray_names_the_extra(tmp_path, tiny_config_dict, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    monkeypatch.delitem(sys.modules, "autocompress.search.ray_backend", raising=False)
    monkeypatch.delattr(autocompress.search, "ray_backend", raising=False)
    tiny_config_dict["search"]["backend"] = "ray"
    with pytest.raises(ImportError, match=r"pip install autocompress\[ray\]"):
        run_search(parse_config(tiny_config_dict), runs_dir=tmp_path)
