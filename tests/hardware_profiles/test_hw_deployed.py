"""Measured paths time the model as deployed: int8 kernels for <= 8-bit layers on onnxruntime,
the precision each layer really ran at reported, and a LUT keyed by that precision; plus the
shared timing rule (rounds until two agree, smallest round median, repeatability)."""

import math

import pytest
import torch
from torch import nn

from autocompress.compression.quantization import QuantConv2d, QuantLinear
from autocompress.hardware_profiles import LUTProfile, MeasuredProfile, build_lut
from autocompress.hardware_profiles.deployed import (
    deployed_onnx,
    deployed_precision,
    int8_plan,
    precision_summary,
)
from autocompress.hardware_profiles.lut_table import DEPLOYED
from autocompress.hardware_profiles.lut_trace import model_layers
from autocompress.hardware_profiles.timing import time_calls

pytest.importorskip("onnxruntime")


def _wide(w_bits: int, a_bits: int, channels: int = 128) -> nn.Module:
    """Big enough that int8 GEMM kernels beat fp32 ones on any x86 CPU with SIMD."""
    bits = {"w_bits": w_bits, "a_bits": a_bits}
    return nn.Sequential(
        QuantConv2d(3, channels, 3, padding=1, **bits),
        nn.ReLU(),
        QuantConv2d(channels, channels, 3, padding=1, **bits),
        nn.ReLU(),
        QuantConv2d(channels, channels, 3, padding=1, **bits),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        QuantLinear(channels, 10, **bits),
    ).eval()


def _mixed() -> nn.Module:
    return nn.Sequential(
        QuantConv2d(3, 8, 3, padding=1, w_bits=3, a_bits=8),  # runs int8
        nn.ReLU(),
        QuantConv2d(8, 8, 3, padding=1, w_bits=16, a_bits=16),  # no int16 kernel: fp32
        nn.Flatten(),
        QuantLinear(8 * 8 * 8, 10, w_bits=8, a_bits=32),  # float inputs: fp32
    ).eval()


@pytest.mark.parametrize(
    ("w_bits", "a_bits", "expected"),
    [(8, 8, "int8"), (2, 4, "int8"), (8, 16, "fp32"), (16, 8, "fp32"), (32, 32, "fp32")],
)
def test_deployed_precision(w_bits, a_bits, expected):
    assert deployed_precision(w_bits, a_bits) == expected


def test_deployed_onnx_quantizes_only_layers_of_at_most_8_bits():
    import onnx

    deployed = deployed_onnx(_mixed(), input_shape=(3, 8, 8))
    assert deployed.planned == {"0": "int8", "2": "fp32", "4": "fp32"}
    assert deployed.requested == {"0": (3, 8), "2": (16, 16), "4": (8, 32)}
    proto = onnx.load_from_string(deployed.model_bytes)
    int8 = {n.name for n in proto.graph.initializer if n.data_type == onnx.TensorProto.INT8}
    assert {n for n in int8 if n.endswith("weight_quantized")} == {"0.weight_quantized"}
    float_twin = deployed_onnx(_mixed(), input_shape=(3, 8, 8), quantized=False)
    assert set(float_twin.planned.values()) == {"fp32"}
    assert not any(
        n.op_type == "QuantizeLinear"
        for n in onnx.load_from_string(float_twin.model_bytes).graph.node
    )


def test_a_layer_with_fake_quant_off_is_planned_fp32_by_every_runtime_and_the_lut():
    from autocompress.hardware_profiles.executorch_backend import precision_plan

    model = _mixed()
    model[0].quant_enabled = False  # 3-bit weights, but the layer computes in float
    assert int8_plan(model) == {"0": False, "2": False, "4": False}
    assert set(deployed_onnx(model, input_shape=(3, 8, 8)).planned.values()) == {"fp32"}
    assert set(precision_plan(model).values()) == {"float32"}
    traced = model_layers(model, input_shape=(3, 8, 8), precision=DEPLOYED)
    assert {r.key.precision for r in traced.layers} == {"fp32"}
    # Planned fp32, it ran fp32: not a missing integer kernel.
    note = precision_summary({"0": (3, 8)}, {"0": "fp32"}, {"0": "fp32"})
    assert "fused no integer kernel" not in note
    assert "fused no integer kernel" in precision_summary(
        {"0": (3, 8)}, {"0": "fp32"}, {"0": "int8"}
    )
    model[0].quant_enabled = True
    assert int8_plan(model) == {"0": True, "2": False, "4": False}
    assert (
        model_layers(model, input_shape=(3, 8, 8), precision=DEPLOYED).layers[0].key.precision
        == "int8"
    )


def test_measured_reports_the_precision_each_layer_ran_at():
    m = MeasuredProfile(backend="onnxruntime", warmup=1, repeats=3, threads=1)
    d = m.profile(_mixed(), input_shape=(3, 8, 8)).details
    assert d["quantized"] is True and d["precisions"] == {"0": "int8", "2": "fp32", "4": "fp32"}
    assert d["requested_bits"]["0"] == [3, 8]
    assert "1 layer(s) ran int8" in d["precision_note"]
    assert "w3/a8 executed as int8" in d["precision_note"]
    float_run = MeasuredProfile(backend="onnxruntime", warmup=1, repeats=3, quantized=False)
    assert set(
        float_run.profile(_mixed(), input_shape=(3, 8, 8)).details["precisions"].values()
    ) == {"fp32"}


def _bits(model: nn.Module, bits: dict[str, int], default: int) -> nn.Module:
    """Set w_bits/a_bits on every Conv/Linear of ``model`` (by module name, else ``default``)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            module.w_bits = module.a_bits = bits.get(name, default)
    return model.eval()


def test_nested_layers_run_at_their_own_planned_precision():
    # Nested modules: the exporter's scope of layer1.0.conv1 ends in "conv1", like the stem's.
    torchvision = pytest.importorskip("torchvision")
    model = _bits(
        torchvision.models.resnet18(num_classes=10),
        {"conv1": 16, "layer1.0.conv1": 8, "layer2.0.downsample.0": 8, "fc": 8},
        default=16,
    )
    d = (
        MeasuredProfile(backend="onnxruntime", warmup=1, repeats=3, threads=1)
        .profile(model, input_shape=(3, 32, 32))
        .details
    )
    int8 = {name for name, precision in d["precisions"].items() if precision == "int8"}
    assert int8 == {"layer1.0.conv1", "layer2.0.downsample.0", "fc"}


def test_untrained_batchnorm_models_still_get_integer_kernels():
    # Folding an untrained BatchNorm gives every conv the same zero bias, which the exporter
    # stores once: shared, it would keep onnxruntime from fusing integer kernels.
    torchvision = pytest.importorskip("torchvision")
    model = _bits(torchvision.models.mobilenet_v2(num_classes=10, width_mult=0.35), {}, default=8)
    d = (
        MeasuredProfile(backend="onnxruntime", warmup=1, repeats=3, threads=1)
        .profile(model, input_shape=(3, 32, 32))
        .details
    )
    assert set(d["precisions"].values()) == {"int8"}, d["precision_note"]


def test_int8_layers_and_their_float_twin_measure_differently():
    shape = (3, 16, 16)
    deployed = MeasuredProfile(backend="onnxruntime", warmup=3, repeats=15, threads=1)
    float_twin = MeasuredProfile(
        backend="onnxruntime", warmup=3, repeats=15, threads=1, quantized=False
    )
    model = _wide(8, 8)
    int8 = deployed.profile(model, input_shape=shape)
    fp32 = float_twin.profile(model, input_shape=shape)
    assert set(int8.details["precisions"].values()) == {"int8"}
    assert set(fp32.details["precisions"].values()) == {"fp32"}
    # Interleaved, best of two each, so a slow phase of the machine cannot decide it.
    int8_ms = min(int8.latency_ms, deployed.profile(model, input_shape=shape).latency_ms)
    fp32_ms = min(fp32.latency_ms, float_twin.profile(model, input_shape=shape).latency_ms)
    assert int8_ms < 0.85 * fp32_ms, (int8_ms, fp32_ms)
    # The same model with 16-bit layers deploys as fp32 and costs what the float twin does.
    wide16 = deployed.profile(_wide(16, 16), input_shape=shape)
    assert set(wide16.details["precisions"].values()) == {"fp32"}


def test_lut_keys_layers_by_deployed_precision_and_prices_them_apart():
    shape = (3, 16, 16)
    int8_model, fp32_model = _wide(8, 8, channels=64), _wide(16, 16, channels=64)
    int8_keys = {
        r.key for r in model_layers(int8_model, input_shape=shape, precision=DEPLOYED).layers
    }
    fp32_keys = {
        r.key for r in model_layers(fp32_model, input_shape=shape, precision=DEPLOYED).layers
    }
    assert {k.precision for k in int8_keys} == {"int8"} and {k.precision for k in fp32_keys} == {
        "fp32"
    }
    lut = build_lut(
        [(int8_model, shape), (fp32_model, shape)], warmup=2, repeats=6, rounds=1, threads=1
    )
    assert lut.precision == DEPLOYED and len(lut) == len(int8_keys) + len(fp32_keys)
    profile = LUTProfile(lut=lut)
    int8_ms = profile.profile(int8_model, input_shape=shape).latency_ms
    fp32_ms = profile.profile(fp32_model, input_shape=shape).latency_ms
    assert int8_ms != fp32_ms and math.isfinite(int8_ms) and math.isfinite(fp32_ms)
    # The widest conv's int8 entry is cheaper than its fp32 one.
    wide = max(int8_keys, key=lambda k: k.in_channels * k.out_channels)
    twin = next(k for k in fp32_keys if k.in_channels == wide.in_channels and k.kind == wide.kind)
    assert lut.layer_ms(wide) < lut.layer_ms(twin)


def test_quantized_needs_onnxruntime():
    with pytest.raises(ValueError, match="'quantized' parameter of MeasuredProfile"):
        MeasuredProfile(backend="torch", quantized=True)
    assert MeasuredProfile(backend="torch").quantized is False
    assert MeasuredProfile(backend="onnxruntime").quantized is True


class _Clock:
    """A run whose duration follows a script: slow warm-up, then noisy rounds."""

    def __init__(self, durations):
        self.durations = list(durations)
        self.now = 0.0

    def perf_counter(self):
        return self.now

    def run(self):
        self.now += self.durations.pop(0) if self.durations else 1.0


def test_timing_adds_rounds_until_two_agree_and_reports_the_smallest(monkeypatch):
    # warm-up 2 runs; settling: 5 runs at 3.0 then 5 at 1.0 then 5 at 1.0 (agree);
    # rounds of 2: [1.5, 1.5], [1.0, 1.0], [2.0, 2.0] disagree (1.0 vs 1.5), then [1.02, 1.02].
    script = [9.0, 9.0] + [3.0] * 5 + [1.0] * 10 + [1.5, 1.5, 1.0, 1.0, 2.0, 2.0, 1.02, 1.02]
    clock = _Clock(script)
    monkeypatch.setattr(
        "autocompress.hardware_profiles.timing.time.perf_counter", clock.perf_counter
    )
    result = time_calls(clock.run, warmup=2, repeats=6, rounds=3, max_rounds=6)
    assert result.warmup_runs == 2 + 15
    assert result.round_medians_s == pytest.approx([1.5, 1.0, 2.0, 1.02])
    assert result.latency_s == 1.0
    d = result.details()
    assert d["rounds"] == 4 and d["stable"] and d["repeatability"] == pytest.approx(0.02)
    assert d["round_spread"] == pytest.approx(1.0) and len(d["samples_ms"]) == 8


def test_timing_stops_at_max_rounds_and_says_it_is_unstable(monkeypatch):
    clock = _Clock([1.0, 2.0, 4.0, 8.0, 16.0])
    monkeypatch.setattr(
        "autocompress.hardware_profiles.timing.time.perf_counter", clock.perf_counter
    )
    result = time_calls(clock.run, warmup=0, repeats=2, rounds=2, max_rounds=3)
    assert result.warmup_runs == 0 and result.round_medians_s == [1.0, 2.0, 4.0]
    d = result.details()
    assert d["stable"] is False and d["repeatability"] == pytest.approx(1.0)


def test_measured_details_carry_repeatability():
    d = (
        MeasuredProfile(warmup=1, repeats=6, threads=1)
        .profile(nn.Sequential(nn.Linear(4, 4)), input_shape=(4,))
        .details
    )
    assert d["statistic"] == "min of per-round medians" and d["rounds"] >= 3
    assert d["repeatability"] >= 0 and isinstance(d["stable"], bool)
    assert torch.get_num_threads() >= 1
