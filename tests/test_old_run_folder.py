"""A run folder written by an earlier release still resumes and is read by every command.

``fixtures/run_made_by_0.1.0.tar.gz`` holds ``old.yaml`` and the folder ``old/`` that
``autocompress search old.yaml --runs-dir runs`` wrote with autocompress 0.1.0 (4 trials; the
PNGs and lock files left out to keep it small).
"""

from __future__ import annotations

import tarfile
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from autocompress.cli import app

pytestmark = pytest.mark.slow

FIXTURE = Path(__file__).parent / "fixtures" / "run_made_by_0.1.0.tar.gz"


@pytest.fixture
def old_run(tmp_path: Path) -> Path:
    with tarfile.open(FIXTURE) as archive:
        archive.extractall(tmp_path, filter="data")
    return tmp_path


def _ok(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_old_run_resumes_without_retraining_or_redoing_trials(old_run):
    run = old_run / "old"
    before = pd.read_csv(run / "trials.csv")
    teacher = (run / "teacher" / "model.pt").read_bytes()
    _ok("search", str(old_run / "old.yaml"), "--runs-dir", str(old_run), "--n-trials", "6")
    after = pd.read_csv(run / "trials.csv")
    assert list(after["number"]) == list(range(6))
    # The 4 earlier trials are kept as they were, not re-run (same accuracies and costs) ...
    columns = ["number", "state", "accuracy", "latency_ms", "size_kb", "candidate"]
    pd.testing.assert_frame_equal(after[columns].head(4), before[columns])
    # ... and the teacher is reused. (A new trial may be stopped early at a rung: PRUNED.)
    assert (run / "teacher" / "model.pt").read_bytes() == teacher
    assert set(after["state"]) <= {"COMPLETE", "PRUNED"}


def test_every_command_reads_an_old_run(old_run):
    run = old_run / "old"
    front = pd.read_csv(run / "pareto.csv")
    assert "Pareto-optimal of 4 completed trials" in _ok("pareto", str(run))
    _ok("report", str(run))
    assert (run / "report" / "report.html").stat().st_size > 0
    trial = str(int(front["number"].iloc[0]))
    _ok("export", str(run), "--trial", trial, "--format", "onnx")
    assert (run / "export" / f"trial_{trial}" / "model.onnx").is_file()
    _ok("refit", str(run), "--epochs", "1", "--budget", "1")
    refit = pd.read_csv(old_run / "old-refit" / "refit.csv")
    assert len(refit) == 1 and refit["state"].eq("COMPLETE").all()
