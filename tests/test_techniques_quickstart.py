"""End to end: the quickstart config with every per-layer technique searched at once (weight
quantizers, sparsity, low-rank ranks by channel and spatial SVD, Taylor importance for pruning
and sparsity), then its report and the ONNX and packed state-dict exports of the trial that uses
the most of them, both verified."""

import json
from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.slow

QUICKSTART = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"


def _techniques(candidate: dict) -> dict[str, set]:
    layers = candidate["layers"].values()
    return {
        "quantizer": {c["quantizer"] for c in layers if c.get("quantizer", "uniform") != "uniform"},
        "sparsity": {c["sparsity"] for c in layers if c.get("sparsity", 0.0)},
        "rank": {c["rank_ratio"] for c in layers if c.get("rank_ratio", 1.0) < 1.0},
        "spatial": {c.get("factorization") for c in layers if c.get("rank_ratio", 1.0) < 1.0}
        - {None},
    }


def test_quickstart_with_every_technique_searches_reports_and_exports(run_cli, tmp_path):
    sets = [
        "search.n_trials=6",
        "train.epochs=1",
        "teacher.epochs=3",
        "space.quantizers=[uniform,pot,apot,codebook]",
        'space.sparsity=[0,0.5,"2:4"]',
        "space.rank_ratios=[1.0,0.5]",
        "space.factorizations=[channel,spatial]",
        "space.pruning_importance=taylor",
        "space.sparsity_importance=taylor",
    ]
    args = [arg for s in sets for arg in ("--set", s)]
    run_cli("search", str(QUICKSTART), *args, "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path)
    run = tmp_path / "runs" / "quickstart"
    trials = pd.read_csv(run / "trials.csv")
    trained = trials[trials["state"].eq("COMPLETE") & trials["trained"]]
    used = {
        int(n): _techniques(json.loads(text))
        for n, text in zip(trained["number"], trained["candidate"], strict=True)
    }
    trial = max(used, key=lambda n: sum(bool(v) for v in used[n].values()))
    # One trial quantizes, sparsifies and factorizes (some spatially), all verified below.
    assert all(used[trial].values()), used
    summary = trials.set_index("number").loc[trial, "summary"]
    assert " Q=" in summary and "sparse" in summary and "rank~" in summary

    run_cli("report", str(run), cwd=tmp_path)
    page = (run / "report" / "report.html").read_text()
    assert "quantizers" in page and "codebook" in page
    assert "latency priced dense because cortex_a72 declares no sparse kernels" in page

    for fmt, exact in (("onnx", "weights_exact"), ("state-dict", "packed_weights_exact")):
        out = tmp_path / fmt
        output = run_cli(
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
        assert "verification PASSED" in output, output
        report = json.loads((out / "export_report.json").read_text())
        assert report["passed"] and report["checks"][exact] is True, report
    onnx_layers = json.loads((tmp_path / "onnx" / "export_report.json").read_text())["layers"]
    assert {layer["quantizer"] for layer in onnx_layers if "quantizer" in layer} == used[trial][
        "quantizer"
    ]
    index = json.loads((tmp_path / "state-dict" / "weights.json").read_text())["tensors"]
    assert any(entry["encoding"] == "bitmask" for entry in index.values())
    assert {e["quantizer"] for e in index.values() if "quantizer" in e} == used[trial]["quantizer"]
