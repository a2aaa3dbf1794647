import json

import pytest
import torch
from typer.testing import CliRunner

from autocompress.cli import app
from autocompress.compression.serialization import load_model
from autocompress.export.trial import export_trial

runner = CliRunner()


def test_cli_export_with_pick_to_onnx_verifies_and_writes_the_report(finished_run, tmp_path):
    out = tmp_path / "onnx"
    run = str(finished_run.run_dir)
    result = runner.invoke(
        app, ["export", run, "--pick", "most accurate", "--format", "onnx", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "picked trial" in result.output and "max accuracy" in result.output
    assert "verification PASSED" in result.output and "predicted" in result.output
    assert (out / "model.onnx").is_file() and (out / "candidate.yaml").is_file()
    report = json.loads((out / "export_report.json").read_text())
    front = finished_run.front
    best = front.sort_values(["accuracy", "number"], ascending=[False, True]).iloc[0]
    assert report["trial"] == int(best["number"])
    assert report["passed"] and report["checks"]["weights_exact"]
    assert report["exported_score"] == pytest.approx(best["accuracy"], abs=0.01)
    assert report["file_bytes"] == (out / "model.onnx").stat().st_size
    assert {layer["weight_format"] for layer in report["layers"]} <= {"int4", "int8"}


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_export_round_trips(finished_run, tmp_path):
    trial = int(finished_run.front.iloc[0]["number"])
    result = export_trial(finished_run.run_dir, trial=trial, out_dir=tmp_path, format="torchscript")
    assert result.report.passed and result.report.max_abs_diff == 0.0
    loaded = torch.jit.load(str(tmp_path / "model.torchscript.pt"))
    model, spec = load_model(finished_run.run_dir / "trials" / str(trial))
    x = torch.randn(5, *spec["input_shape"], generator=torch.Generator().manual_seed(0))
    assert torch.equal(loaded(x), model.eval()(x))


def test_state_dict_export_writes_packed_weights_near_the_predicted_size(finished_run, tmp_path):
    trial = int(finished_run.front.iloc[0]["number"])
    result = export_trial(finished_run.run_dir, trial=trial, out_dir=tmp_path)
    report = result.report
    assert result.format == "state-dict" and report.artefact == "weights.bin"
    assert report.passed and report.checks["packed_weights_exact"]
    assert report.predicted_bytes <= report.file_bytes <= report.predicted_bytes + 64
    assert result.reproduced_score == pytest.approx(result.recorded_score, abs=1e-9)


def test_finetune_epochs_trains_before_exporting(finished_run, tmp_path):
    trial = int(finished_run.front.iloc[0]["number"])
    result = runner.invoke(
        app,
        ["export", str(finished_run.run_dir), "--trial", str(trial), "--format", "state-dict"]
        + ["--finetune-epochs", "1", "--out", str(tmp_path)],
    )
    assert result.exit_code == 0, result.output
    assert "fine-tuned 1 epoch(s)" in result.output
    report = json.loads((tmp_path / "export_report.json").read_text())
    tune = report["finetune"]
    assert tune["epochs"] == 1
    assert tune["score_before"] == pytest.approx(finished_run.front.iloc[0]["accuracy"])
    assert report["recorded_score"] == pytest.approx(tune["score_after"])
    spec = json.loads((tmp_path / "spec.json").read_text())
    assert spec["metrics"]["finetune_epochs"] == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "exactly one of --trial N and --pick RULE"),
        (["--trial", "0", "--pick", "fastest"], "exactly one of"),
        (["--pick", "quickest"], "Understood so far: nothing yet"),
        (["--pick", "fastest with accuracy >= 1.5"], "No completed, within-budget trial"),
        (["--trial", "0", "--format", "tflite"], "--format must be one of"),
    ],
)
def test_cli_export_errors_exit_with_code_2(finished_run, args, message):
    result = runner.invoke(app, ["export", str(finished_run.run_dir), *args])
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())
