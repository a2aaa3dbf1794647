"""What a user sees when something is wrong: one or two lines naming the file or field and what
to do, exit code 2, never a traceback."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from autocompress.cli import app

runner = CliRunner()


def _clean_error(result, *expected: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for text in expected:
        assert text in result.output, result.output


@pytest.fixture
def damaged_run(finished_run, tmp_path):
    """A copy of a finished run, to damage."""
    return shutil.copytree(finished_run.run_dir, tmp_path / "tiny")


def test_a_damaged_study_is_read_from_trials_csv(damaged_run, caplog):
    (damaged_run / "study.db").write_bytes(b"not a database" * 100)
    with caplog.at_level(logging.WARNING, logger="autocompress"):
        result = runner.invoke(app, ["pareto", str(damaged_run)])
    assert result.exit_code == 0, result.output
    assert "study.db cannot be read" in caplog.text and "trials.csv" in caplog.text
    assert "Pareto-optimal" in result.output
    result = runner.invoke(app, ["export", str(damaged_run), "--pick", "most accurate"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["report", str(damaged_run)])
    assert result.exit_code == 0, result.output


def test_searching_on_a_damaged_study_says_what_to_do(damaged_run):
    (damaged_run / "study.db").write_bytes(b"not a database" * 100)
    config = damaged_run / "config.yaml"
    result = runner.invoke(app, ["search", str(config), "--runs-dir", str(damaged_run.parent)])
    _clean_error(result, "study.db cannot be read", "trials.csv", "another run name")


def test_a_damaged_model_is_named_by_export(damaged_run):
    trial = int(pd.read_csv(damaged_run / "pareto.csv")["number"].iloc[0])
    weights = damaged_run / "trials" / str(trial) / "model.pt"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    result = runner.invoke(app, ["export", str(damaged_run), "--trial", str(trial)])
    _clean_error(result, str(weights), "damaged")


def test_a_damaged_teacher_is_named_by_a_fine_tuning_export(damaged_run):
    trial = int(pd.read_csv(damaged_run / "pareto.csv")["number"].iloc[0])
    teacher = damaged_run / "teacher" / "model.pt"
    teacher.write_bytes(teacher.read_bytes()[:100])
    args = ["export", str(damaged_run), "--trial", str(trial), "--finetune-epochs", "1"]
    _clean_error(runner.invoke(app, args), str(teacher), "damaged")


def test_a_teacher_that_cannot_be_trained_is_said_to_be_the_teacher(tmp_path, tiny_config_dict):
    tiny_config_dict["teacher"].update(epochs=1, lr=1e12)  # the loss overflows
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config_dict))
    result = runner.invoke(app, ["search", str(config), "--runs-dir", str(tmp_path)])
    _clean_error(result, "The teacher", "teacher.lr")


@pytest.mark.slow
def test_a_failing_trial_is_one_progress_line_without_optunas_traceback(tmp_path, tiny_config_dict):
    tiny_config_dict["teacher"]["epochs"] = 1
    tiny_config_dict["train"].update(epochs=1, lr=1e12)  # every candidate's loss overflows
    tiny_config_dict["search"]["n_trials"] = 2
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config_dict))
    command = [sys.executable, "-m", "autocompress.cli", "search", str(config)]
    run = subprocess.run(
        [*command, "--runs-dir", str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    assert output.count("failed: CandidateError: non-finite training loss") == 2
    assert "Traceback" not in output and "Trial 0 failed" not in output
