"""End to end: the quickstart config with a per-layer sparsity dimension searches, reports
(with the dense-pricing note) and exports ONNX and the packed state-dict, both verified."""

import json
from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.slow

QUICKSTART = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"


def test_quickstart_with_sparsity_searches_reports_and_exports(run_cli, tmp_path):
    sets = [
        "search.n_trials=4",
        "train.epochs=1",
        "teacher.epochs=3",
        'space.sparsity=[0,0.5,"2:4"]',
    ]
    args = [arg for s in sets for arg in ("--set", s)]
    run_cli("search", str(QUICKSTART), *args, "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path)
    run = tmp_path / "runs" / "quickstart"
    trials = pd.read_csv(run / "trials.csv")
    assert trials["summary"].str.contains("sparse").any()
    run_cli("report", str(run), cwd=tmp_path)
    page = (run / "report" / "report.html").read_text()
    assert "latency priced dense because cortex_a72 declares no sparse kernels" in page
    for fmt in ("onnx", "state-dict"):
        output = run_cli(
            "export", str(run), "--pick", "max accuracy", "--format", fmt, cwd=tmp_path
        )
        assert "verification PASSED" in output, output
    (folder,) = (run / "export").iterdir()
    spec = json.loads((folder / "spec.json").read_text())
    assert any("sparsity" in layer for layer in spec["candidate"]["layers"].values())
    index = json.loads((folder / "weights.json").read_text())["tensors"]
    assert any(entry["encoding"] == "bitmask" for entry in index.values())
