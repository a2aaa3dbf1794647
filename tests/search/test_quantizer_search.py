"""End to end: the quickstart with every weight quantizer searched, then its report and the
ONNX and packed state-dict exports of a trial with non-uniform layers, both verified."""

import json
from pathlib import Path

import pandas as pd
import pytest

QUICKSTART = Path(__file__).parents[2] / "configs" / "quickstart.yaml"


@pytest.mark.slow
def test_quickstart_with_non_uniform_quantizers_searches_reports_and_exports(tmp_path, run_cli):
    runs = tmp_path / "runs"
    run_cli(
        "search",
        str(QUICKSTART),
        "--set",
        "search.n_trials=4",
        "--set",
        "train.epochs=1",
        "--set",
        "teacher.epochs=5",
        "--set",
        "space.quantizers=[uniform,pot,apot,codebook]",
        "--runs-dir",
        str(runs),
        cwd=tmp_path,
    )
    run = runs / "quickstart"
    trials = pd.read_csv(run / "trials.csv")
    trained = trials[trials["state"].eq("COMPLETE") & trials["trained"]]
    quantizers = {
        int(n): [c.get("quantizer", "uniform") for c in json.loads(text)["layers"].values()]
        for n, text in zip(trained["number"], trained["candidate"], strict=True)
    }
    # The trial with the most non-uniform layers (the sampler draws among four per layer).
    trial = max(quantizers, key=lambda n: sum(q != "uniform" for q in quantizers[n]))
    assert any(q != "uniform" for q in quantizers[trial]), quantizers
    assert " Q=" in trials.set_index("number").loc[trial, "summary"]

    run_cli("report", str(run), cwd=tmp_path)
    html = (run / "report" / "report.html").read_text()
    assert "quantizers" in html and "codebook" in html

    for fmt, exact in (("onnx", "weights_exact"), ("state-dict", "packed_weights_exact")):
        out = tmp_path / fmt
        run_cli(
            "export",
            str(run),
            "--trial",
            str(trial),
            "--format",
            fmt,
            "--out",
            str(out),
            cwd=tmp_path,
        )
        report = json.loads((out / "export_report.json").read_text())
        assert report["passed"] and report["checks"][exact] is True, report
    onnx_layers = json.loads((tmp_path / "onnx" / "export_report.json").read_text())["layers"]
    non_uniform = {q for q in quantizers[trial] if q != "uniform"}
    assert {layer["quantizer"] for layer in onnx_layers if "quantizer" in layer} == non_uniform
    index = json.loads((tmp_path / "state-dict" / "weights.json").read_text())["tensors"]
    stored = {e["quantizer"] for e in index.values() if "quantizer" in e}
    assert stored == non_uniform
