"""`export --format litert`: a .tflite with int8 for the layers the search put at <= 8 bits,
verified against the PyTorch candidate with the LiteRT interpreter. One export of the tiny run's
most accurate trial is shared by the module (conversion takes seconds)."""

import json

import numpy as np
import pytest
import torch
import yaml

pytest.importorskip("litert_torch")
pytest.importorskip("ai_edge_quantizer")
pytest.importorskip("ai_edge_litert")

from autocompress.compression.serialization import load_model  # noqa: E402
from autocompress.export import export_trial  # noqa: E402
from autocompress.export.verify import TOLERANCES  # noqa: E402
from autocompress.hardware_profiles.litert import litert_runner  # noqa: E402


@pytest.fixture(scope="module")
def litert_export(finished_run, tmp_path_factory):
    front = finished_run.front.sort_values(["accuracy", "number"], ascending=[False, True])
    trial = int(front.iloc[0]["number"])
    out = tmp_path_factory.mktemp("litert")
    return trial, export_trial(finished_run.run_dir, trial=trial, out_dir=out, format="litert")


def test_litert_export_verifies_against_the_pytorch_candidate(litert_export):
    _, result = litert_export
    report = result.report
    tolerance = TOLERANCES["litert"]
    assert result.format == "litert" and result.artefact.name == "model.tflite"
    assert report.passed and report.n_samples > 0
    assert report.min_argmax_agreement == tolerance.min_argmax_agreement
    assert report.argmax_agreement >= tolerance.min_argmax_agreement
    assert report.max_abs_diff <= tolerance.rel * report.logit_range
    assert report.file_bytes == result.artefact.stat().st_size
    assert report.measured_latency_ms > 0 and "LiteRT interpreter" in report.latency_runtime
    # Against the float model that was converted, int8 alone: closer than the fake-quant.
    assert report.checks["argmax_agreement_float_source"] >= 0.95


def test_litert_export_records_layout_and_each_layers_precision(litert_export, finished_run):
    trial, result = litert_export
    document = json.loads((result.out_dir / "export_report.json").read_text())
    assert document["format"] == "litert" and document["trial"] == trial
    assert document["checks"]["input_layout"] == "NCHW"
    model, spec = load_model(finished_run.run_dir / "trials" / str(trial))
    assert document["checks"]["input_shape"] == [1, *spec["input_shape"]]
    layers = document["layers"]
    bits = {name: (m.w_bits, m.a_bits) for name, m in model.named_modules() if hasattr(m, "w_bits")}
    assert [layer["name"] for layer in layers] == list(bits)
    for layer in layers:
        # The tiny space has 2..8 bits only: every layer runs int8, and a layer below 8 bits
        # says that it executed as int8.
        assert layer["precision"] == layer["weight_format"] == "int8"
        assert (layer["w_bits"], layer["a_bits"]) == bits[layer["name"]]
        widened = min(bits[layer["name"]]) < 8
        assert ("executed as int8" in layer["note"]) == widened
    assert document["checks"]["layers_not_as_requested"] == []
    assert any("NCHW" in note for note in document["notes"])


def test_the_written_tflite_reproduces_the_reported_accuracy(litert_export, finished_run):
    _, result = litert_export
    candidate = yaml.safe_load((result.out_dir / "candidate.yaml").read_text())
    assert candidate["preprocessing"]["channel_order"] == "CHW"
    run = litert_runner((result.out_dir / "model.tflite").read_bytes())
    x = torch.randn(4, *candidate["preprocessing"]["input_shape"]).numpy()
    logits = run(x)
    assert logits.shape == (4, candidate["preprocessing"]["num_classes"])
    assert np.isfinite(logits).all()


@pytest.mark.slow
def test_tiny_search_then_litert_export_from_the_cli(run_cli, tiny_config_dict, tmp_path):
    tiny_config_dict["search"]["n_trials"] = 2
    tiny_config_dict["teacher"]["epochs"] = 2
    tiny_config_dict["train"]["epochs"] = 1
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(tiny_config_dict))
    run_cli("search", "tiny.yaml", "--runs-dir", "runs", cwd=tmp_path)
    output = run_cli(
        "export", "runs/tiny", "--pick", "most accurate", "--format", "litert", cwd=tmp_path
    )
    assert "verification PASSED (litert" in output and "check input_layout: NCHW" in output
    assert "-> int8" in output
    report = json.loads(
        next((tmp_path / "runs" / "tiny" / "export").glob("*/export_report.json")).read_text()
    )
    assert report["artefact"] == "model.tflite" and report["passed"]
