import json

import yaml
from typer.testing import CliRunner

from autocompress.cli import app
from autocompress.hardware_profiles import LatencyLUT, LatencyPredictor

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


def test_a_url_device_needs_onnxruntime_and_a_url(tmp_path, tiny_config_dict):
    config = _config(tmp_path, tiny_config_dict)
    args = ["--config", str(config), "--out", str(tmp_path / "x.json")]
    result = runner.invoke(
        app, ["profile", "build-lut", "http://127.0.0.1:9", "--backend", "torch", *args]
    )
    assert result.exit_code == 2 and "onnxruntime" in result.output
