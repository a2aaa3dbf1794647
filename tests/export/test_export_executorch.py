import json

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

pytest.importorskip("executorch")

from autocompress.cli import app  # noqa: E402
from autocompress.compression.quantization import QuantConv2d, QuantLinear  # noqa: E402
from autocompress.export.trial import export_trial  # noqa: E402
from autocompress.export.verify import (  # noqa: E402
    EXECUTORCH_LOWERING,
    TOLERANCES,
    compare_outputs,
    within,
)
from autocompress.hardware_profiles.executorch_backend import (  # noqa: E402
    as_executed,
    executorch_runner,
    float_model,
    lower_to_executorch,
    precision_plan,
)

runner = CliRunner()


def _batches(shape, n, *, seed):
    generator = torch.Generator().manual_seed(seed)
    return [2 * torch.randn(64, *shape, generator=generator) for _ in range(n)]


@pytest.fixture(scope="module")
def mixed_program(mixed_bits_cnn):
    model, shape = mixed_bits_cnn
    return lower_to_executorch(model, input_shape=shape, calibration=_batches(shape, 4, seed=1))


def test_mixed_candidate_records_which_layers_ran_int8_and_which_float(mixed_program):
    layers = {layer.name: layer for layer in mixed_program.layers}
    assert {name: layer.precision for name, layer in layers.items()} == {
        "features.0.0": "int8",
        "features.1.0": "float32",
        "features.2.0": "int8",
        "classifier": "int8",
    }
    assert mixed_program.float_layers == ["features.1.0"]
    assert mixed_program.widened_layers == ["features.2.0"]
    assert "requested w4/a4 executed as int8" in layers["features.2.0"].note
    assert "more than 8 bits" in layers["features.1.0"].note
    assert layers["features.0.0"].note == ""
    assert all(layer.delegated for layer in layers.values())
    assert mixed_program.ops_outside_delegate == {}
    assert mixed_program.buffer[4:8] == b"ET12"  # the .pte flatbuffer identifier


def test_program_matches_its_pt2e_model_and_the_candidate_as_executed(
    mixed_bits_cnn, mixed_program
):
    model, shape = mixed_bits_cnn
    run = executorch_runner(mixed_program.buffer)
    batches = [(x, torch.zeros(len(x), dtype=torch.long)) for x in _batches(shape, 2, seed=2)]

    class Converted(torch.nn.Module):  # the converted graph refuses .eval()
        def forward(self, x):
            return mixed_program.quantized_reference(x)

    lowering = compare_outputs(run, Converted(), batches)
    assert within(lowering, EXECUTORCH_LOWERING), lowering
    executed = compare_outputs(run, as_executed(model, precision_plan(model)), batches)
    assert within(executed, TOLERANCES["executorch"]), executed


def test_dropping_the_qat_conv_bn_patterns_leaves_the_program_unchanged(
    mixed_bits_cnn, mixed_program, monkeypatch
):
    # The lowering skips XNNPACK's conv-batch-norm patterns because prepare_pt2e folds an
    # eval-mode batch norm before annotating; should that ever change, the programs differ.
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer

    from autocompress.hardware_profiles import executorch_backend

    model, shape = mixed_bits_cnn
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    monkeypatch.setattr(executorch_backend, "_eval_quantizer_class", lambda: XNNPACKQuantizer)
    full = lower_to_executorch(model, input_shape=shape, calibration=_batches(shape, 4, seed=1))
    assert full.buffer == mixed_program.buffer
    assert full.layers == mixed_program.layers


def test_float_model_keeps_the_fake_quant_weights_and_drops_the_fake_quant(mixed_bits_cnn):
    model, shape = mixed_bits_cnn
    floating = float_model(model)
    assert not any(isinstance(m, QuantConv2d | QuantLinear) for m in floating.modules())
    for name, module in model.named_modules():
        if isinstance(module, QuantConv2d | QuantLinear):
            weight = floating.get_submodule(name).weight
            assert torch.equal(weight, module.quantized_weight())
    assert model.features[0][0].quant_enabled  # the candidate itself is unchanged


class _WithCumsum(torch.nn.Module):
    """A float network with an operator XNNPACK does not take (cumsum)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3)
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.conv(x).cumsum(2).amax((2, 3)))


def test_a_float_network_runs_float32_and_operators_outside_xnnpack_are_counted():
    torch.manual_seed(0)  # the layers' initial weights
    network = _WithCumsum().eval()
    program = lower_to_executorch(network, input_shape=(1, 8, 8))
    assert program.ops_outside_delegate.get("cumsum") == 1
    assert program.int8_layers == [] and program.quantized_reference is None
    assert program.calibration == "none (no int8 layer)"
    for layer in program.layers:
        assert layer.precision == "float32" and layer.delegated
        assert layer.note == "not quantized by the search: runs in float32"
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    got = executorch_runner(program.buffer)(x.numpy())
    np.testing.assert_allclose(got, network(x).detach().numpy(), rtol=1e-4, atol=1e-5)


def test_empty_calibration_is_a_clear_error(mixed_bits_cnn):
    model, shape = mixed_bits_cnn
    with pytest.raises(ValueError, match="'calibration' parameter of lower_to_executorch"):
        lower_to_executorch(model, input_shape=shape, calibration=[])


def test_export_writes_a_verified_pte_and_reports_each_layers_precision(finished_run, tmp_path):
    best = finished_run.front.sort_values("accuracy", ascending=False).iloc[0]
    trial = int(best["number"])
    result = export_trial(finished_run.run_dir, trial=trial, out_dir=tmp_path, format="executorch")
    report = result.report
    assert result.artefact == tmp_path / "model.pte" and report.artefact == "model.pte"
    assert report.passed, report.summary_lines()
    assert report.checks["pt2e_within_tolerance"] and report.checks["all_layers_delegated"]
    assert report.min_argmax_agreement == TOLERANCES["executorch"].min_argmax_agreement
    written = json.loads((tmp_path / "export_report.json").read_text())
    assert written["format"] == "executorch" and written["file_bytes"] > 0
    candidate = yaml.safe_load((tmp_path / "candidate.yaml").read_text())["candidate"]
    bits = {name: (c["w_bits"], c["a_bits"]) for name, c in candidate["layers"].items()}
    for layer in written["layers"]:
        assert layer["precision"] == "int8"  # every layer of the tiny space has <= 8 bits
        assert (layer["w_bits"], layer["a_bits"]) == bits[layer["name"]]
        widened = min(layer["w_bits"], layer["a_bits"]) < 8
        assert ("executed as int8" in layer["note"]) == widened
    assert written["checks"]["int8_layers"] == [layer["name"] for layer in written["layers"]]
    assert any("judged against the fake-quant candidate" in note for note in written["notes"])
    assert "ExecuTorch" in written["latency_runtime"] and written["measured_latency_ms"] > 0
    # The accuracy of the program is the candidate's, up to the int8 differences.
    assert abs(report.exported_score - best["accuracy"]) <= 0.05


@pytest.mark.slow
def test_search_then_export_executorch_from_the_command_line(tmp_path, tiny_config_dict):
    tiny_config_dict["search"]["n_trials"] = 2
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config_dict))
    runs = tmp_path / "runs"
    result = runner.invoke(app, ["search", str(config), "--runs-dir", str(runs)])
    assert result.exit_code == 0, result.output
    out = tmp_path / "pte"
    args = ["export", str(runs / "tiny"), "--pick", "most accurate", "--format", "executorch"]
    result = runner.invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "verification PASSED (executorch" in result.output
    assert "-> int8" in result.output  # the per-layer lines name the precision
    report = json.loads((out / "export_report.json").read_text())
    assert report["passed"] and (out / "model.pte").stat().st_size == report["file_bytes"]
    outputs = executorch_runner(out / "model.pte")(np.zeros((2, 1, 8, 8), dtype=np.float32))
    assert outputs.shape == (2, 10)
