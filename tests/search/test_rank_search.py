"""End to end: a search over rank ratios factorizes layers, completes, and its factorized trials
export to ONNX and to packed weights (both verified) and appear in the report."""

import json

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from autocompress.cli import app

runner = CliRunner()


@pytest.mark.slow
def test_search_with_rank_ratios_exports_and_reports(tmp_path, tiny_config_dict):
    tiny_config_dict["space"]["rank_ratios"] = [1.0, 0.5, 0.25]
    tiny_config_dict["teacher"]["epochs"] = 2
    tiny_config_dict["train"]["epochs"] = 1
    tiny_config_dict["search"]["n_trials"] = 4
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config_dict))
    runs = tmp_path / "runs"
    result = runner.invoke(app, ["search", str(config), "--runs-dir", str(runs)])
    assert result.exit_code == 0, result.output
    run = runs / "tiny"

    trials = pd.read_csv(run / "trials.csv")
    assert trials["state"].eq("COMPLETE").all()
    layers = {
        int(number): json.loads(text)["layers"]
        for number, text in zip(trials["number"], trials["candidate"], strict=True)
    }
    factorized = [
        number
        for number, layer in layers.items()
        if any(c.get("rank_ratio", 1.0) < 1.0 for c in layer.values())
    ]
    assert factorized, trials["summary"].tolist()
    trial = factorized[0]
    assert "rank~" in trials.set_index("number").loc[trial, "summary"]

    for fmt in ("onnx", "state-dict"):
        out = tmp_path / fmt
        args = ["export", str(run), "--trial", str(trial), "--format", fmt, "--out", str(out)]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        report = json.loads((out / "export_report.json").read_text())
        assert report["passed"], report
    onnx_layers = json.loads((tmp_path / "onnx" / "export_report.json").read_text())["layers"]
    names = [layer["name"] for layer in onnx_layers]
    ranked = [n for n, c in layers[trial].items() if c.get("rank_ratio", 1.0) < 1.0]
    assert all(f"{n}.0" in names and f"{n}.1" in names for n in ranked)

    result = runner.invoke(app, ["report", str(run), "--trial", str(trial)])
    assert result.exit_code == 0, result.output
