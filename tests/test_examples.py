"""The examples run as their READMEs say, from a copy of their folder."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

pytestmark = pytest.mark.slow


def test_resnet18_from_a_checkpoint_and_a_config_only(run_process, run_cli, tmp_path):
    folder = shutil.copytree(EXAMPLES / "resnet18_checkpoint", tmp_path / "example")
    assert "saved resnet18.pt" in run_process(sys.executable, "train_checkpoint.py", cwd=folder)
    # 4 of the example's 6 trials (the first ones the warm start's), enough for every command;
    # their fine-tunes on 256 of the 1400 training images (the checkpoint saw them all).
    output = run_cli(
        "search",
        "resnet18.yaml",
        "--set",
        "search.n_trials=4",
        "--set",
        "data.limit_train=256",
        cwd=folder,
    )
    assert "Teacher loaded from resnet18.pt" in output and "Training the teacher" not in output
    run = folder / "runs" / "resnet18"
    trials = pd.read_csv(run / "trials.csv")
    assert trials["state"].eq("COMPLETE").sum() >= 4
    assert trials["accuracy"].max() > 0.8
    # The stem was excluded: float and unpruned in every candidate.
    stems = [json.loads(c)["layers"]["conv1"] for c in trials["candidate"]]
    assert all(s == {"w_bits": 32, "a_bits": 32, "prune_ratio": 0.0} for s in stems)
    assert "Pareto-optimal" in run_cli("pareto", str(run), cwd=folder)
    run_cli("report", str(run), cwd=folder)
    exported = run_cli(
        "export", str(run), "--pick", "most accurate", "--format", "onnx", cwd=folder
    )
    assert "verification PASSED" in exported
    refit = run_cli("refit", str(run), "--epochs", "1", "--budget", "1", cwd=folder)
    assert "refit of" in refit


def test_a_segmentation_network_through_the_python_api(run_process, run_cli, tmp_path):
    folder = shutil.copytree(EXAMPLES / "segmentation_api", tmp_path / "example")
    output = run_process(
        sys.executable, "compress_segmenter.py", "--trials", "5", "--epochs", "1", cwd=folder
    )
    assert "trained TinySegNet: miou" in output
    trials = pd.read_csv(folder / "runs" / "segmenter" / "trials.csv")
    assert {"miou", "pixel_accuracy"} <= set(trials.columns)
    assert trials["miou"].max() > 0.5
    assert "verification PASSED" in output and "miou: exported" in output
