import math
import sys

import pytest
import torch

from autocompress.hardware_profiles import MeasuredProfile, create_hardware_profile


def test_executorch_backend_times_the_program_and_says_each_layers_precision(mixed_bits_cnn):
    pytest.importorskip("executorch")
    model, shape = mixed_bits_cnn
    before = {k: v.clone() for k, v in model.state_dict().items()}
    profile = create_hardware_profile(
        "measured", backend="executorch", threads=1, warmup=1, repeats=5
    )
    metrics = profile.profile(model, input_shape=shape)
    assert math.isfinite(metrics.latency_ms) and metrics.latency_ms > 0
    details = metrics.details
    # At least the 5 asked for: the timing rule adds rounds until two agree.
    assert details["backend"] == "executorch" and len(details["samples_ms"]) >= 5
    assert details["executorch_threads"] == 1 and details["pte_bytes"] > 0
    precision = {layer["name"]: layer["precision"] for layer in details["layers"]}
    assert precision == {
        "features.0.0": "int8",
        "features.1.0": "float32",
        "features.2.0": "int8",
        "classifier": "int8",
    }
    assert details["widened_layers"] == ["features.2.0"]
    assert "XNNPACK" in details["note"] and "3 layer(s) ran int8" in details["note"]
    assert "seeded normal batches" in details["calibration"]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_executorch_backend_runs_on_the_cpu_only(monkeypatch):
    # Pretend CUDA exists so that the device itself is valid and the backend rule is what fails.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(ValueError, match="'device' parameter of MeasuredProfile must be 'cpu'"):
        MeasuredProfile(backend="executorch", device="cuda")


def test_executorch_backend_without_executorch_names_the_extra(mixed_bits_cnn, monkeypatch):
    monkeypatch.setitem(sys.modules, "executorch", None)  # as if it were not installed
    model, shape = mixed_bits_cnn
    profile = MeasuredProfile(backend="executorch", warmup=0, repeats=1)
    with pytest.raises(ImportError, match=r"pip install 'autocompress\[executorch\]'"):
        profile.profile(model, input_shape=shape)
