"""Size and analytic price of non-uniform weights: b-bit indices plus per-channel scales (pot,
apot) or the layer's codebook; compute as int8 unless the device spec declares shifts."""

import pytest
import torch
from torch import nn

from autocompress.compression.quantization import quantize_
from autocompress.hardware_profiles import AnalyticProfile, DeviceSpec, model_size_bytes
from autocompress.hardware_profiles.device_spec import load_device
from autocompress.hardware_profiles.graph import layer_costs

CONV_PARAMS = 16 * 8 * 3 * 3


def _model(w_bits: int, quantizer: str) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 16, 3, bias=False))
    return quantize_(model, {"0": (w_bits, 8)}, {"0": quantizer})


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_size_counts_indices_plus_scales_or_the_codebook(bits):
    indices = CONV_PARAMS * bits // 8
    assert model_size_bytes(_model(bits, "uniform")) == indices + 4 * 16
    assert model_size_bytes(_model(bits, "pot")) == indices + 4 * 16
    assert model_size_bytes(_model(bits, "apot")) == indices + 4 * 16
    # The codebook: 2^b fp32 values for the layer, no per-channel scale (its buffer counts once).
    assert model_size_bytes(_model(bits, "codebook")) == indices + 4 * 2**bits
    costs = layer_costs(_model(bits, "codebook"), input_shape=(8, 6, 6))
    assert costs[0].quantizer == "codebook" and costs[0].weight_bytes == indices + 4 * 2**bits


def _spec(**changes) -> DeviceSpec:
    fields = dict(
        name="toy",
        kind="accelerator",
        supported_bits=[4, 8, 32],
        peak_macs_per_s={4: 8e9, 8: 4e9, 32: 1e9},
        memory_bandwidth_bytes_per_s=1e12,
        onchip_memory_bytes=1,
        energy_per_mac_pj={4: 0.5, 8: 1.0, 32: 4.0},
        energy_per_dram_byte_pj=100.0,
        energy_per_sram_byte_pj=10.0,
        layer_overhead_s=1e-9,
        compute_efficiency=0.5,
        sources=["test"],
    )
    fields.update(changes)
    return DeviceSpec(**fields)


def _row(spec: DeviceSpec, quantizer: str, a_bits: int = 4) -> dict:
    model = nn.Sequential(nn.Conv2d(8, 16, 3, bias=False))
    quantize_(model, {"0": (4, a_bits)}, {"0": quantizer})
    model(torch.randn(1, 8, 6, 6))  # calibrate the observer
    return AnalyticProfile(device=spec).profile(model, input_shape=(8, 6, 6)).details["layers"][0]


def test_non_uniform_weights_price_as_int8_unless_the_spec_declares_shifts():
    plain = _spec()
    shift = _spec(quantizers={"pot": {"executes_as": "shift", "source": "test: barrel shifter"}})
    uniform = _row(plain, "uniform")
    assert uniform["precision"] == "4" and "quantizer" not in uniform
    decoded = _row(plain, "pot")
    assert decoded["precision"] == "8" and decoded["quantizer"] == "pot"
    assert decoded["compute_ms"] == pytest.approx(2 * uniform["compute_ms"])
    assert decoded["energy_mj"] > uniform["energy_mj"]
    shifted = _row(shift, "pot")
    assert shifted["precision"] == "4"
    assert shifted["compute_ms"] == pytest.approx(uniform["compute_ms"])
    assert shifted["energy_mj"] == pytest.approx(uniform["energy_mj"])
    # The declaration is per quantizer: APoT and codebook are still decoded on that device.
    assert _row(shift, "apot")["precision"] == "8"
    assert _row(shift, "codebook")["precision"] == "8"
    # Memory traffic stays at the layer's own bits (plus its codebook), not at int8.
    assert decoded["offchip_bytes"] == uniform["offchip_bytes"]


def test_quantizer_costs_are_validated_and_optional():
    with pytest.raises(ValueError, match="codebook.*cannot execute as shift"):
        _spec(quantizers={"codebook": {"executes_as": "shift", "source": "x"}})
    with pytest.raises(ValueError, match="source"):
        _spec(quantizers={"pot": {"executes_as": "shift"}})
    with pytest.raises(ValueError):
        _spec(quantizers={"uniform": {"executes_as": "int8", "source": "x"}})
    assert "quantizers" not in _spec().model_dump()
    for name in ("cortex_m7", "edgetpu", "jetson_orin_nano"):
        spec = load_device(name)
        assert {q.executes_as for q in spec.quantizers.values()} == {"int8"}
        assert all(q.source for q in spec.quantizers.values())
        assert spec.weight_compute_bits(4, "pot") == 8 and spec.weight_compute_bits(4) == 4
