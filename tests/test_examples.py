"""The examples run as their READMEs say, from a copy of their folder."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

pytestmark = pytest.mark.slow


def _run(*command: str, cwd: Path) -> str:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


def _cli(*args: str, cwd: Path) -> str:
    return _run(sys.executable, "-m", "autocompress.cli", *args, cwd=cwd)


def test_resnet18_from_a_checkpoint_and_a_config_only(tmp_path):
    folder = shutil.copytree(EXAMPLES / "resnet18_checkpoint", tmp_path / "example")
    assert "saved resnet18.pt" in _run(sys.executable, "train_checkpoint.py", cwd=folder)
    output = _cli("search", "resnet18.yaml", cwd=folder)
    assert "Teacher loaded from resnet18.pt" in output and "Training the teacher" not in output
    run = folder / "runs" / "resnet18"
    trials = pd.read_csv(run / "trials.csv")
    assert trials["state"].eq("COMPLETE").sum() >= 5
    assert trials["accuracy"].max() > 0.8
    # The stem was excluded: float and unpruned in every candidate.
    stems = [json.loads(c)["layers"]["conv1"] for c in trials["candidate"]]
    assert all(s == {"w_bits": 32, "a_bits": 32, "prune_ratio": 0.0} for s in stems)
    assert "Pareto-optimal" in _cli("pareto", str(run), cwd=folder)
    _cli("report", str(run), cwd=folder)
    exported = _cli("export", str(run), "--pick", "most accurate", "--format", "onnx", cwd=folder)
    assert "verification PASSED" in exported
    refit = _cli("refit", str(run), "--epochs", "1", "--budget", "1", cwd=folder)
    assert "refit of" in refit
