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


def _flat(output: str) -> str:
    # rich draws help in a box and wraps it at the terminal width: keep the words only.
    return " ".join(output.replace("│", " ").split())


def test_export_help_shows_the_pick_grammar_brackets():
    result = runner.invoke(app, ["export", "--help"])
    assert result.exit_code == 0, result.output
    # Unescaped, rich markup reads "[and ...]" as a style tag and drops it.
    assert "RANKING [with METRIC OP NUMBER [and METRIC OP NUMBER ...]]" in _flat(result.output)


def test_pareto_of_a_running_search_lists_only_files_that_exist(tmp_path, tiny_config_dict):
    import optuna

    from autocompress.config import dump_config, parse_config
    from autocompress.core import RunDir

    # A live search: config.yaml and study.db, no trials.csv or plots yet.
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    run.config_file.write_text(dump_config(parse_config(tiny_config_dict)))
    study = optuna.create_study(
        study_name="tiny", storage=run.study_url, directions=["maximize", "minimize", "minimize"]
    )
    metrics = {"accuracy": 0.9, "latency_ms": 1.0, "size_kb": 2.0, "energy_mj": 0.1}
    study.add_trial(
        optuna.trial.create_trial(
            state=optuna.trial.TrialState.COMPLETE,
            values=[0.9, 1.0, 2.0],
            user_attrs={**metrics, "peak_mem_kb": 1.0, "feasible": True, "trained": True},
        )
    )
    result = runner.invoke(app, ["pareto", str(run)])
    assert result.exit_code == 0, result.output
    output = _flat(result.output)
    assert "1 Pareto-optimal of 1 completed trials" in output
    assert "No result files yet" in output and "Files:" not in output

    run.trials_table.write_text("")  # what the search writes when it stops, in part
    run.front_plot.write_bytes(b"")
    output = _flat(runner.invoke(app, ["pareto", str(run)]).output)
    assert f"Files: {run}/trials.csv, pareto.png" in output
    assert "pareto.csv" not in output and "hypervolume.png" not in output
