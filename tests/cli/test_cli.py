import re
import subprocess
import sys

import pytest
import yaml
from typer.testing import CliRunner

from autocompress.cli import app

runner = CliRunner()


@pytest.mark.slow
def test_search_pareto_export_from_the_command_line(tmp_path, tiny_config_dict):
    tiny_config_dict["search"]["n_trials"] = 3
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config_dict))
    runs = tmp_path / "runs"
    overrides = ["--set", "train.epochs=2", "--set", "space.w_bits=[4, 8]"]
    args = ["search", str(config), "--runs-dir", str(runs), "--n-trials", "4", *overrides]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "[4/4]" in result.output and "Pareto" in result.output
    assert (runs / "tiny" / "pareto.png").is_file()
    written = yaml.safe_load((runs / "tiny" / "config.yaml").read_text())
    assert written["train"]["epochs"] == 2 and written["space"]["w_bits"] == [4, 8]
    assert written["search"]["n_trials"] == 4

    result = runner.invoke(app, ["pareto", str(runs / "tiny")])
    assert result.exit_code == 0, result.output
    assert "Pareto front" in result.output and "Pareto-optimal" in result.output

    front = (runs / "tiny" / "pareto.csv").read_text().splitlines()
    trial = front[1].split(",")[0]
    result = runner.invoke(app, ["export", str(runs / "tiny"), "--trial", trial])
    assert result.exit_code == 0, result.output
    assert "reproduced" in result.output
    assert (runs / "tiny" / "export" / f"trial_{trial}" / "candidate.yaml").is_file()


def test_bad_config_gives_a_clear_error_and_exit_code_2(tmp_path, tiny_config_dict):
    tiny_config_dict["search"]["sampler"] = "bayes"
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump(tiny_config_dict))
    result = runner.invoke(app, ["search", str(config), "--runs-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "search.sampler" in result.output and "bad.yaml" in result.output


def test_bad_override_names_the_field(tmp_path, tiny_config_dict):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config_dict))
    for override, expected in [
        ("train.epochs=many", "train.epochs"),
        ("trian.epochs=2", "'trian' is not a config section"),
        ("train.epochz=2", "train.epochz"),
        ("epochs", "expected FIELD=VALUE"),
    ]:
        args = ["search", str(config), "--runs-dir", str(tmp_path), "--set", override]
        result = runner.invoke(app, args)
        assert result.exit_code == 2, override
        assert expected in result.output, result.output
    assert not (tmp_path / "tiny").exists()  # nothing ran


def test_pareto_on_a_folder_that_is_not_a_run(tmp_path):
    result = runner.invoke(app, ["pareto", str(tmp_path)])
    assert result.exit_code == 2
    assert "config.yaml" in result.output or "trials.csv" in result.output


def test_devices_lists_the_catalogue():
    result = runner.invoke(app, ["devices"])
    assert result.exit_code == 0, result.output
    assert "cortex_a72" in result.output and "bitfusion" in result.output


@pytest.mark.slow
def test_progress_lines_stay_whole_in_a_pipe(tmp_path, tiny_config_dict):
    # Not a terminal: rich would wrap at 80 columns, mid-word; each trial's line must stay whole.
    tiny_config_dict["teacher"]["epochs"] = 1
    tiny_config_dict["train"]["epochs"] = 1
    tiny_config_dict["search"]["n_trials"] = 3
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config_dict))
    command = [sys.executable, "-m", "autocompress.cli", "search", str(config)]
    run = subprocess.run(
        [*command, "--runs-dir", str(tmp_path / "runs")],
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
    )
    assert run.returncode == 0, run.stderr
    lines = [line for line in run.stdout.splitlines() if line.startswith("[")]
    assert len(lines) == 3
    for line in lines:
        assert re.fullmatch(r"\[\d/3\] trial \d: acc .* kB \| front \d+ HV \S+", line), line
    assert not any(len(line) == 80 for line in run.stdout.splitlines())


@pytest.mark.parametrize(
    ("dataset", "expected"),
    [
        ("no_such_module:load", "importable module"),
        ("json:no_such_function", "has no 'no_such_function'"),
    ],
)
def test_a_bad_dataset_import_string_is_one_clear_line(
    tmp_path, tiny_config_dict, dataset, expected
):
    tiny_config_dict["data"]["dataset"] = dataset
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config_dict))
    result = runner.invoke(app, ["search", str(config), "--runs-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "data.dataset" in result.output and expected in result.output
    assert "Traceback" not in result.output
