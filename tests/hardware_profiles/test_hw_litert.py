"""LiteRT conversion (autocompress.hardware_profiles.litert) and MeasuredProfile(backend="litert").

One mixed candidate is converted once for the module (conversion takes seconds): a 16-bit layer
that must stay float32 between int8 layers, a 4-bit layer that runs int8, and 8-bit layers.
Tests that convert need the litert extra (``litert`` fixture); the others run without it.
"""

import sys

import numpy as np
import pytest
import torch

from autocompress.compression.apply import build_compressed
from autocompress.hardware_profiles import MeasuredProfile
from autocompress.hardware_profiles.deployed import int8_plan
from autocompress.hardware_profiles.litert import (
    convert_litert,
    deployable_copy,
    litert_runner,
)
from autocompress.hardware_profiles.lut_build import layer_module
from autocompress.hardware_profiles.lut_table import DEPLOYED
from autocompress.hardware_profiles.lut_trace import model_layers
from autocompress.spaces import Candidate, build_model, conv_linear_layers
from autocompress.spaces.candidate import LayerChoice

ARCH = {"channels": [8, 16, 16], "kernels": [3, 5, 3], "strides": [1, 2, 1]}
SHAPE = (1, 8, 8)
MIXED = [(8, 8), (16, 16), (4, 4), (8, 8)]  # features.0.0, features.1.0, features.2.0, classifier


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _model(bits: list[tuple[int, int]]) -> torch.nn.Module:
    names = conv_linear_layers(
        build_model(Candidate("small_cnn", ARCH), num_classes=10, input_shape=SHAPE)
    )
    layers = {name: LayerChoice(*pair) for name, pair in zip(names, bits, strict=True)}
    model = build_compressed(
        Candidate("small_cnn", ARCH, layers), num_classes=10, input_shape=SHAPE
    )
    model.train()
    for seed in range(3):  # activation ranges and BN statistics
        model(torch.randn(64, *SHAPE, generator=_gen(seed)))
    return model.eval()


@pytest.fixture(scope="module")
def litert():
    for module in ("litert_torch", "ai_edge_quantizer", "ai_edge_litert"):
        pytest.importorskip(module)


@pytest.fixture(scope="module")
def mixed(litert):
    model = _model(MIXED)
    calibration = [torch.randn(64, *SHAPE, generator=_gen(10 + i)).numpy() for i in range(2)]
    return model, convert_litert(model, input_shape=SHAPE, calibration=calibration)


def test_int8_layers_are_those_with_at_most_8_bits():
    assert int8_plan(_model(MIXED)) == {
        "features.0.0": True,
        "features.1.0": False,
        "features.2.0": True,
        "classifier": True,
    }


def test_plain_layers_run_at_the_precision_their_bits_give(litert):
    # A LUT times each layer as a plain Conv/Linear carrying w_bits/a_bits; one without bits
    # is float32, also between int8 layers (never following its neighbours' precision).
    key = model_layers(_model(MIXED), input_shape=SHAPE, precision=DEPLOYED).layers[0].key
    assert key.precision == "int8"
    layer = layer_module(key)
    calibration = [torch.randn(8, *key.input_shape, generator=_gen(1)).numpy()]
    alone = convert_litert(layer, input_shape=key.input_shape, calibration=calibration)
    assert {x.name: x.precision for x in alone.layers} == {"0": "int8"}
    plain = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3, padding=1)
    ).eval()
    plain[0].w_bits = plain[0].a_bits = 8
    mixed = convert_litert(plain, input_shape=SHAPE, calibration=[torch.randn(8, *SHAPE).numpy()])
    assert {x.name: x.precision for x in mixed.layers} == {"0": "int8", "2": "float32"}
    bare = convert_litert(plain[0], input_shape=SHAPE, calibration=[torch.randn(8, *SHAPE).numpy()])
    assert {x.name: x.precision for x in bare.layers} == {"0": "int8"}


def test_mixed_candidate_records_which_layers_ran_int8_and_which_float(mixed):
    _, converted = mixed
    layers = {layer.name: layer for layer in converted.layers}
    assert list(layers) == ["features.0.0", "features.1.0", "features.2.0", "classifier"]
    # Read back from the model's ops, so a quantizer that ignored the recipe would show here.
    assert {name: layer.precision for name, layer in layers.items()} == {
        "features.0.0": "int8",
        "features.1.0": "float32",
        "features.2.0": "int8",
        "classifier": "int8",
    }
    assert layers["features.1.0"].weight_format == "float32"
    assert layers["classifier"].ops == ["FULLY_CONNECTED"]
    assert "w4/a4" in layers["features.2.0"].note and "as int8" in layers["features.2.0"].note
    assert "executed as float32" in layers["features.1.0"].note
    assert layers["features.0.0"].note == "" and layers["classifier"].note == ""
    assert converted.precision_counts() == {"int8": 3, "float32": 1}
    assert converted.calibration_samples == 128


def test_converted_model_takes_pytorch_layout_and_float_io(mixed):
    model, converted = mixed
    assert converted.input_shape == (1, *SHAPE) and converted.input_layout == "NCHW"
    x = torch.randn(200, *SHAPE, generator=_gen(99))
    got = litert_runner(converted.content, threads=1)(x.numpy())
    expected = deployable_copy(model)(x).detach().numpy()
    assert got.dtype == np.float32 and got.shape == expected.shape
    # int8 against the float model it was converted from: a few int8 steps, not a wrong layout
    # or scale (those move the logits by their whole range).
    assert np.abs(got - expected).max() <= 0.15 * (expected.max() - expected.min())
    assert (got.argmax(1) == expected.argmax(1)).mean() >= 0.9


def test_all_float_candidate_is_not_quantized_and_matches_pytorch(litert):
    model = _model([(32, 32)] * 4)
    converted = convert_litert(model, input_shape=SHAPE, calibration=[])
    assert {layer.precision for layer in converted.layers} == {"float32"}
    assert converted.calibration_samples == 0
    x = torch.randn(50, *SHAPE, generator=_gen(5))
    got = litert_runner(converted.content)(x.numpy())
    assert np.abs(got - model(x).detach().numpy()).max() < 1e-4


@pytest.mark.parametrize(
    ("calibration", "message"),
    [
        ([], "must hold at least one input"),
        ([np.zeros((4, 3, 8, 8), dtype=np.float32)], r"must hold batches of shape \(n, 1, 8, 8\)"),
    ],
)
def test_bad_calibration_data_is_refused_before_converting(litert, calibration, message):
    with pytest.raises(ValueError, match=f"'calibration' parameter of convert_litert {message}"):
        convert_litert(_model(MIXED), input_shape=SHAPE, calibration=calibration)


def test_measured_profile_with_litert_backend_times_the_int8_float_split(litert):
    model = _model(MIXED)
    metrics = MeasuredProfile(backend="litert", warmup=2, repeats=5, threads=1).profile(
        model, input_shape=SHAPE
    )
    assert metrics.latency_ms > 0 and metrics.size_bytes > 0
    details = metrics.details
    assert details["backend"] == "litert" and len(details["samples_ms"]) >= 5
    assert details["layer_precision"] == {
        "features.0.0": "int8",
        "features.1.0": "float32",
        "features.2.0": "int8",
        "classifier": "int8",
    }
    assert details["litert_input_layout"] == "NCHW"
    assert "int8 kernels" in details["note"] and "3 int8" in details["note"]


def test_litert_backend_refuses_a_cuda_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(ValueError, match="'device' parameter of MeasuredProfile must be 'cpu'"):
        MeasuredProfile(backend="litert", device="cuda")


def test_without_the_extra_the_error_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "litert_torch", None)  # import fails as if not installed
    with pytest.raises(ImportError, match=r"pip install 'autocompress\[litert\]'"):
        MeasuredProfile(backend="litert").profile(_model(MIXED), input_shape=SHAPE)
