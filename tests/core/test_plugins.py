"""Plugins: user modules imported for what they register, from a config's ``plugins`` list,
``--import`` or an installed entry point; recorded in the run folder for later commands."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from autocompress.cli import app
from autocompress.config import ConfigError, load_config, parse_config
from autocompress.core.plugins import import_plugin, load_installed_plugins
from autocompress.spaces import list_families

FAMILY = """
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from autocompress.spaces import ModelFamily, register_family


class Space(BaseModel):
    model_config = ConfigDict(extra="forbid")
    widths: list[int] = Field(default=[8, 16])


@register_family
class Family(ModelFamily):
    name = "{name}"
    space_model = Space

    def suggest_arch(self, trial):
        return {{"width": trial.suggest_categorical("arch.width", self.space.widths)}}

    def largest_arch(self):
        return {{"width": max(self.space.widths)}}

    @staticmethod
    def build(arch, *, num_classes, input_shape):
        size = 1
        for dim in input_shape:
            size *= dim
        width = arch["width"]
        return nn.Sequential(
            nn.Flatten(), nn.Linear(size, width), nn.ReLU(), nn.Linear(width, num_classes)
        )
"""


def _plugin(folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.py"
    path.write_text(textwrap.dedent(FAMILY.format(name=name)))
    return path


def _config(family: str, **extra) -> dict:
    return {
        "name": family,
        "space": {"family": family, "w_bits": [4, 8], "a_bits": [8]},
        "teacher": {"epochs": 1},
        "train": {"epochs": 1},
        "search": {"n_trials": 2, "sampler": "random"},
        **extra,
    }


def test_a_plugin_file_registers_and_is_recorded_by_absolute_path(tmp_path):
    path = _plugin(tmp_path / "code", "family_by_file")
    assert import_plugin("code/family_by_file.py", base=tmp_path) == str(path)
    assert "family_by_file" in list_families()


def test_config_plugins_are_relative_to_the_config_file(tmp_path, monkeypatch):
    path = _plugin(tmp_path / "project", "family_in_config")
    config_file = tmp_path / "project" / "run.yaml"
    config_file.write_text(
        yaml.safe_dump(_config("family_in_config", plugins=["family_in_config.py"]))
    )
    monkeypatch.chdir(tmp_path)  # not the config's folder
    config = load_config(config_file)
    assert config.plugins == [str(path)] and config.space.family == "family_in_config"


def test_a_plugin_that_cannot_be_imported_says_how_to_pass_it(tmp_path):
    with pytest.raises(ConfigError, match=r"'plugins' field names 'gone.py'.*--import"):
        parse_config(_config("mlp", plugins=["gone.py"]), base=tmp_path)
    with pytest.raises(ConfigError, match="'plugins' field must be a list"):
        parse_config(_config("mlp", plugins="gone.py"))


def test_import_is_recorded_and_used_by_later_commands(tmp_path, monkeypatch):
    _plugin(tmp_path, "family_by_cli")
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(_config("family_by_cli")))
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    result = runner.invoke(app, ["--import", "family_by_cli.py", "search", "run.yaml"])
    assert result.exit_code == 0, result.output
    written = yaml.safe_load((tmp_path / "runs" / "family_by_cli" / "config.yaml").read_text())
    assert written["plugins"] == [str(tmp_path / "family_by_cli.py")]
    # The recorded file moved: an --import of its new place stands in for it.
    moved = tmp_path / "moved"
    moved.mkdir()
    (tmp_path / "family_by_cli.py").rename(moved / "family_by_cli.py")
    args = ["--import", str(moved / "family_by_cli.py"), "pareto", "runs/family_by_cli"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output


def test_installed_entry_points_are_loaded(tmp_path, monkeypatch):
    _plugin(tmp_path, "family_installed")
    info = tmp_path / "family_installed-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: family-installed\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[autocompress.plugins]\nfamily_installed = family_installed\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "family_installed" in load_installed_plugins(reload=True)
    assert "family_installed" in list_families()
