import json

import pytest
import yaml
from torch import nn
from typer.testing import CliRunner

from autocompress.cli import app
from autocompress.hardware_profiles import LatencyLUT, LatencyPredictor, create_hardware_profile

runner = CliRunner()
_FAST = [
    "--repeats",
    "2",
    "--warmup",
    "0",
    "--rounds",
    "1",
    "--input-shape",
    "1,8,8",
    "--num-classes",
    "10",
]


def _config(tmp_path, tiny_config_dict):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_config_dict))
    return path


def test_build_lut_for_a_tiny_space(tmp_path, tiny_config_dict):
    config, out = _config(tmp_path, tiny_config_dict), tmp_path / "lut.json"
    args = ["profile", "build-lut", "host", "--config", str(config), "--out", str(out)]
    result = runner.invoke(app, [*args, "--samples", "2", *_FAST])
    assert result.exit_code == 0, result.output
    assert "distinct layers" in result.output and "wrote" in result.output
    lut = LatencyLUT.load(out)
    assert len(lut) >= 3 and lut.backend == "onnxruntime" and lut.threads == 1
    assert json.loads(out.read_text())["host"]["cpu_model"]


def test_fit_writes_a_predictor_and_prints_the_calibrated_spec(tmp_path, tiny_config_dict):
    config, out = _config(tmp_path, tiny_config_dict), tmp_path / "predictor.json"
    spec = tmp_path / "host.yaml"
    args = ["profile", "fit", "host", "--config", str(config), "--out", str(out)]
    result = runner.invoke(app, [*args, "--samples", "8", "--spec-out", str(spec), *_FAST])
    assert result.exit_code == 0, result.output
    assert "after calibration" in result.output and "compute_efficiency" in result.output
    assert LatencyPredictor.load(out).layer_keys
    assert yaml.safe_load(spec.read_text())["name"] == "host"


def test_unknown_device_lists_the_supported_ones(tmp_path, tiny_config_dict):
    config = _config(tmp_path, tiny_config_dict)
    args = ["--config", str(config), "--out", str(tmp_path / "x.json")]
    result = runner.invoke(app, ["profile", "build-lut", "raspberry-pi", *args])
    assert result.exit_code == 2
    assert "'DEVICE' argument" in result.output and "host" in result.output


def test_fit_rejects_a_lut_measured_differently(tmp_path, tiny_config_dict):
    config = _config(tmp_path, tiny_config_dict)
    lut = LatencyLUT(entries={}, overhead_ms=0.0, backend="torch", threads=1, warmup=0, repeats=1)
    path = lut.save(tmp_path / "lut.json")
    args = ["profile", "fit", "host", "--config", str(config), "--out", str(tmp_path / "p.json")]
    result = runner.invoke(app, [*args, "--lut", str(path), *_FAST])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"error: The LUT {path} was measured with torch, 1 thread(s)" in result.output


def test_build_lut_and_fit_on_an_agent_url(tmp_path, tiny_config_dict, monkeypatch):
    from autocompress.hardware_profiles.agent import serve

    config = _config(tmp_path, tiny_config_dict)
    monkeypatch.setenv("AUTOCOMPRESS_AGENT_TOKEN", "s3cret")
    with serve(port=0, token="s3cret") as agent:
        out = tmp_path / "lut.json"
        args = ["profile", "build-lut", agent.url, "--config", str(config), "--out", str(out)]
        result = runner.invoke(app, [*args, "--samples", "2", *_FAST])
        assert result.exit_code == 0, result.output
        assert f"measuring on {agent.url}" in result.output
        lut = LatencyLUT.load(out)
        assert lut.host["remote"] == agent.url and "onnxruntime" in lut.host
        assert not (tmp_path / "lut.json.journal").exists()  # removed once the LUT is written
        predictor = tmp_path / "predictor.json"
        args = ["profile", "fit", agent.url, "--config", str(config), "--out", str(predictor)]
        result = runner.invoke(app, [*args, "--samples", "4", "--lut", str(out), *_FAST])
        assert result.exit_code == 0, result.output
        assert LatencyPredictor.load(predictor).layer_keys


def test_a_url_device_needs_a_deployed_runtime_and_a_url(tmp_path, tiny_config_dict):
    config = _config(tmp_path, tiny_config_dict)
    args = ["--config", str(config), "--out", str(tmp_path / "x.json")]
    result = runner.invoke(
        app, ["profile", "build-lut", "http://127.0.0.1:9", "--backend", "torch", *args]
    )
    assert result.exit_code == 2 and "onnxruntime, executorch or litert" in result.output


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--backend", "tflite"], "must be one of onnxruntime, torch, executorch, litert"),
        (["--backend", "executorch", "--float"], "executorch times the converted program"),
        (["--backend", "torch", "--quantized"], "eager torch has no integer kernels"),
    ],
)
def test_backend_and_precision_are_checked(tmp_path, tiny_config_dict, options, message):
    config = _config(tmp_path, tiny_config_dict)
    args = ["--config", str(config), "--out", str(tmp_path / "x.json"), *options]
    result = runner.invoke(app, ["profile", "build-lut", "host", *args])
    assert result.exit_code == 2 and message in result.output, result.output


def _table_csv(tmp_path):
    """A small per-layer table: 1x1 and 3x3 convs, dense and depthwise, at 4 and 8 bits, whose
    latency grows with the MACs and halves at 4 bits, plus a fixed 5 us."""
    lines = [
        "in_channels,out_channels,kernel_size,stride,padding,groups,in_height,in_width,"
        "w_bits,a_bits,latency_ms"
    ]
    for c in (8, 16, 32):
        for k, groups in ((1, 1), (3, 1), (3, c)):
            for size in (8, 16):
                for bits in (4, 8):
                    macs = c * c * k * k * size * size // groups
                    ms = 0.005 + macs / (1e7 if groups == 1 else 2e6) * bits / 8
                    lines.append(
                        f"{c},{c},{k},1,{k // 2},{groups},{size},{size},{bits},{bits},{ms}"
                    )
    path = tmp_path / "board.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_import_lut_then_calibrate_writes_a_spec_the_analytic_profile_loads(tmp_path):
    table, lut, spec = _table_csv(tmp_path), tmp_path / "lut.json", tmp_path / "board.yaml"
    result = runner.invoke(app, ["profile", "import-lut", str(table), "--out", str(lut)])
    assert result.exit_code == 0, result.output
    assert "36 layers from 36 rows" in result.output and "(4, 4), (8, 8)" in result.output
    assert LatencyLUT.load(lut).source["file"] == str(table)

    args = ["profile", "calibrate", "cortex_a72", "--lut", str(lut), "--out", str(spec)]
    result = runner.invoke(app, [*args, "--holdout", "0.25", "--seed", "3"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "held-out layers (9):" in out and "cortex_a72" in out and "calibrated" in out
    assert "Kendall tau" in out and "within 10%" in out and "RMSE" in out

    data = yaml.safe_load(spec.read_text())
    assert data["name"] == "board" and data["calibration"]["seed"] == 3
    assert data["calibration"]["holdout"] == 0.25 and data["calibration"]["rows"] == 36
    assert data["calibration"]["metrics"]["heldout_calibrated"]["n"] == 9
    profile = create_hardware_profile("analytic", device=str(spec))
    assert profile.device.layer_efficiency["depthwise"] < 1
    assert profile.device.bit_scaling.saturation_bits == 4
    model = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 1))
    assert profile.profile(model, input_shape=(8, 8, 8)).latency_ms > 0


def test_import_lut_reports_the_bad_row_and_column(tmp_path):
    table = _table_csv(tmp_path)
    lines = table.read_text().splitlines()
    lines[3] = lines[3].replace(",4,4,", ",4,40,", 1)
    table.write_text("\n".join(lines) + "\n")
    result = runner.invoke(app, ["profile", "import-lut", str(table), "--out", "x.json"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"error: {table}, row 4, column 'a_bits'" in result.output


def test_calibrate_wants_a_yaml_out_and_a_known_device(tmp_path):
    lut = tmp_path / "lut.json"
    runner.invoke(app, ["profile", "import-lut", str(_table_csv(tmp_path)), "--out", str(lut)])
    args = ["profile", "calibrate", "cortex_a72", "--lut", str(lut), "--out"]
    result = runner.invoke(app, [*args, str(tmp_path / "spec.json")])
    assert result.exit_code == 2 and "'--out' option must be a .yaml" in result.output
    result = runner.invoke(app, ["profile", "calibrate", "pi5", *args[3:], "s.yaml"])
    assert result.exit_code == 2 and "cortex_a72" in result.output
