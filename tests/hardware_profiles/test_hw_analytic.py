from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from torch import nn

from autocompress.hardware_profiles import (
    AnalyticProfile,
    DeviceSpec,
    create_hardware_profile,
    layer_costs,
    list_devices,
    load_device,
    model_size_bytes,
)


def _quant(layer: nn.Module, *, w_bits: int, a_bits: int) -> nn.Module:
    layer.w_bits, layer.a_bits, layer.quant_enabled = w_bits, a_bits, True
    layer.register_buffer("act_min", torch.tensor(-1.0))
    layer.register_buffer("act_max", torch.tensor(1.0))
    return layer


def _spec(**changes) -> DeviceSpec:
    fields = dict(
        name="toy",
        kind="cpu",
        supported_bits=[8, 32],
        peak_macs_per_s={8: 4e9, 32: 1e9},
        memory_bandwidth_bytes_per_s=1e9,
        onchip_memory_bytes=1,
        energy_per_mac_pj={8: 1.0, 32: 4.0},
        energy_per_dram_byte_pj=100.0,
        energy_per_sram_byte_pj=10.0,
        layer_overhead_s=1e-6,
        compute_efficiency=0.5,
        sources=["test"],
    )
    fields.update(changes)
    return DeviceSpec(**fields)


def _big_conv(w_bits: int, a_bits: int) -> nn.Module:
    """64->64 3x3 conv on 32x32: ~38 MMAC, compute-bound on every shipped device."""
    return _quant(nn.Conv2d(64, 64, 3, padding=1, bias=False), w_bits=w_bits, a_bits=a_bits)


_BIG_SHAPE = (64, 32, 32)


def _layer(metrics, i=0):
    return metrics.details["layers"][i]


def test_roofline_takes_max_of_compute_and_memory():
    model = nn.Linear(100, 10)  # 1000 MACs, (1000 + 100 + 10) * 4 bytes, fp32
    (cost,) = layer_costs(model, input_shape=(100,))
    compute_s = 1000 / (1e9 * 0.5)
    memory_s = cost.total_bytes / 1e9
    for bandwidth, expected in ((1e9, max(compute_s, memory_s)), (1e15, compute_s)):
        m = AnalyticProfile(device=_spec(memory_bandwidth_bytes_per_s=bandwidth)).profile(
            model, input_shape=(100,)
        )
        assert m.latency_ms == pytest.approx((expected + 1e-6) * 1e3)
    assert memory_s > compute_s  # the first case really was memory-bound
    row = _layer(AnalyticProfile(device=_spec()).profile(model, input_shape=(100,)))
    assert row["bound"] == "memory"
    assert row["compute_ms"] == pytest.approx(compute_s * 1e3)
    assert row["memory_ms"] == pytest.approx(memory_s * 1e3)


def test_energy_formula_offchip_and_onchip_weights():
    model = _quant(nn.Linear(100, 10, bias=False), w_bits=8, a_bits=8)
    (cost,) = layer_costs(model, input_shape=(100,))
    assert (cost.weight_bytes, cost.input_bytes, cost.output_bytes) == (1040, 100, 10)
    off = AnalyticProfile(device=_spec()).profile(model, input_shape=(100,))
    assert off.energy_mj == pytest.approx((1000 * 1.0 + 1150 * 100.0) * 1e-9)
    assert off.details["weights_on_chip"] is False
    on = AnalyticProfile(device=_spec(onchip_memory_bytes=1 << 20)).profile(
        model, input_shape=(100,)
    )
    assert on.details["weights_on_chip"] is True
    assert on.energy_mj == pytest.approx((1000 * 1.0 + 110 * 100.0 + 1040 * 10.0) * 1e-9)
    assert _layer(on)["memory_ms"] == pytest.approx(110 / 1e9 * 1e3)  # SRAM weights: no DRAM time


def test_size_and_peak_memory_fields():
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Flatten(), nn.Linear(256, 10))
    m = AnalyticProfile(device="cortex_a72").profile(model, input_shape=(1, 8, 8))
    assert m.size_bytes == model_size_bytes(model)
    assert m.peak_mem_bytes == 1280
    assert m.details["total_macs"] == 2304 + 2560
    assert [r["name"] for r in m.details["layers"]] == ["0", "2"]


def test_cortex_a72_int4_costs_the_same_compute_as_int8():
    profile = AnalyticProfile(device="cortex_a72")
    m4 = profile.profile(_big_conv(4, 4), input_shape=_BIG_SHAPE)
    m8 = profile.profile(_big_conv(8, 8), input_shape=_BIG_SHAPE)
    assert _layer(m4)["precision"] == _layer(m8)["precision"] == "8"
    assert _layer(m4)["compute_ms"] == pytest.approx(_layer(m8)["compute_ms"])
    assert _layer(m8)["bound"] == "compute"
    assert m4.latency_ms == pytest.approx(m8.latency_ms)  # compute-bound: bits below 8 buy nothing
    assert m4.size_bytes < m8.size_bytes  # ...but storage still shrinks


def test_bitfusion_low_bits_are_faster():
    profile = AnalyticProfile(device="bitfusion")
    m = {b: profile.profile(_big_conv(b, b), input_shape=_BIG_SHAPE) for b in (2, 4, 8)}
    assert m[4].latency_ms < m[8].latency_ms
    assert m[2].latency_ms < m[4].latency_ms
    assert all(_layer(m[b])["bound"] == "compute" for b in m)
    assert _layer(m[8])["compute_ms"] == pytest.approx(16 * _layer(m[2])["compute_ms"])
    assert m[8].latency_ms / m[2].latency_ms > 10  # ~16x, minus the fixed layer overhead
    assert m[2].energy_mj < m[8].energy_mj


def test_edgetpu_int8_is_far_faster_than_the_host_fallback():
    profile = AnalyticProfile(device="edgetpu")
    m = {b: profile.profile(_big_conv(b, b), input_shape=_BIG_SHAPE) for b in (4, 8, 16, 32)}
    assert _layer(m[4])["precision"] == _layer(m[8])["precision"] == "8"
    assert _layer(m[16])["precision"] == _layer(m[32])["precision"] == "32-fallback"
    assert m[4].latency_ms <= m[8].latency_ms  # fewer input bytes over the link, same compute
    assert m[32].latency_ms > 10 * m[8].latency_ms
    assert m[16].latency_ms > 10 * m[8].latency_ms  # int16 is not native either
    assert _layer(m[32])["bound"] == "compute"
    assert m[32].energy_mj > 10 * m[8].energy_mj


def test_jetson_nano_fp16_halves_compute_time():
    profile = AnalyticProfile(device="jetson_nano")
    m16 = profile.profile(_big_conv(16, 16), input_shape=_BIG_SHAPE)
    m32 = profile.profile(_big_conv(32, 32), input_shape=_BIG_SHAPE)
    assert _layer(m16)["bound"] == _layer(m32)["bound"] == "compute"
    assert _layer(m32)["compute_ms"] == pytest.approx(2 * _layer(m16)["compute_ms"])
    assert m16.latency_ms < m32.latency_ms and m16.energy_mj < m32.energy_mj


@pytest.mark.parametrize("device", list_devices())
def test_latency_and_energy_monotone_in_macs(device):
    profile = AnalyticProfile(device=device)
    results = [
        profile.profile(nn.Conv2d(8, width, 3, padding=1), input_shape=(8, 16, 16))
        for width in (4, 8, 16, 32, 64)
    ]
    macs = [r.details["total_macs"] for r in results]
    assert macs == sorted(macs)
    for a, b in zip(results, results[1:], strict=False):
        assert b.latency_ms > a.latency_ms
        assert b.energy_mj > a.energy_mj


def test_profile_leaves_model_unchanged():
    model = nn.Sequential(_quant(nn.Conv2d(3, 8, 3), w_bits=4, a_bits=8), nn.BatchNorm2d(8))
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    AnalyticProfile(device="cortex_m7").profile(model, input_shape=(3, 16, 16))
    assert model.training and model[0].quant_enabled
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_concurrent_calls_agree():
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 14 * 14, 10))
    profile = create_hardware_profile("analytic", device="cortex_a72")
    expected = profile.profile(model, input_shape=(3, 16, 16))
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(
            pool.map(lambda _: profile.profile(model, input_shape=(3, 16, 16)), range(32))
        )
    assert all(r == expected for r in results)


def test_device_argument_forms(tmp_path):
    spec = _spec()
    assert AnalyticProfile(device=spec).device is spec
    with pytest.raises(ValueError, match="cortex_a72"):
        AnalyticProfile(device="no_such_device")
    with pytest.raises(ValueError, match="'device' parameter of AnalyticProfile"):
        AnalyticProfile(device=42)
    with pytest.raises(TypeError):
        AnalyticProfile("cortex_a72")  # keyword-only


# Latency and energy of _mixed_model() on every shipped spec, as computed before the spec had
# calibration terms: unset, those terms must leave every prediction where it was.
_SHIPPED_PREDICTIONS = {
    "bitfusion": (0.0060039047619047615, 0.002911414768),
    "cortex_a53": (0.10565440000000001, 0.006101032000000001),
    "cortex_a72": (0.05026472727272728, 0.006101032000000001),
    "cortex_m7": (0.533, 0.008993792000000002),
    "edgetpu": (0.07922, 0.0050109640000000006),
    "jetson_nano": (0.08260870233050847, 0.006359008000000001),
    "jetson_orin_nano": (0.040348352941176474, 0.00404644),
}


def _mixed_model() -> nn.Module:
    """Dense w8a8, depthwise w4a8 and pointwise w2a4 convs, then a float Linear."""
    layers = [
        nn.Conv2d(3, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, groups=16),
        nn.ReLU(),
        nn.Conv2d(16, 24, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(24, 10),
    ]
    for layer, (w, a) in zip(
        [layers[0], layers[2], layers[4]], [(8, 8), (4, 8), (2, 4)], strict=True
    ):
        layer.w_bits, layer.a_bits = w, a
    return nn.Sequential(*layers)


@pytest.mark.parametrize("device", sorted(_SHIPPED_PREDICTIONS))
def test_shipped_specs_predict_what_they_did_before_calibration_terms(device):
    m = AnalyticProfile(device=device).profile(_mixed_model(), input_shape=(3, 32, 32))
    assert (m.latency_ms, m.energy_mj) == pytest.approx(_SHIPPED_PREDICTIONS[device], rel=1e-12)
    assert "compute_efficiency_by_bits" not in load_device(device).model_dump()


def _compute_ms(spec: DeviceSpec, layer: nn.Module, shape) -> float:
    return _layer(AnalyticProfile(device=spec).profile(layer, input_shape=shape))["compute_ms"]


def test_efficiency_by_bits_and_by_layer_class():
    dense, shape = _big_conv(8, 8), _BIG_SHAPE
    base = _compute_ms(_spec(), dense, shape)
    assert _compute_ms(_spec(compute_efficiency_by_bits={8: 0.25}), dense, shape) == (
        pytest.approx(2 * base)
    )
    float_conv = _big_conv(32, 32)  # runs at 32 bits: keeps compute_efficiency
    spec = _spec(compute_efficiency_by_bits={8: 0.25})
    assert _compute_ms(spec, float_conv, shape) == pytest.approx(
        _compute_ms(_spec(), float_conv, shape)
    )
    depthwise = _quant(nn.Conv2d(64, 64, 3, padding=1, groups=64), w_bits=8, a_bits=8)
    grouped = _quant(nn.Conv2d(64, 64, 3, padding=1, groups=4), w_bits=8, a_bits=8)
    factors = _spec(layer_efficiency={"depthwise": 0.1})
    assert _compute_ms(factors, depthwise, shape) == pytest.approx(
        10 * _compute_ms(_spec(), depthwise, shape)
    )
    assert _compute_ms(factors, grouped, shape) == pytest.approx(
        _compute_ms(_spec(), grouped, shape)
    )
    assert _compute_ms(factors, dense, shape) == pytest.approx(base)


def test_bit_scaling_saturates_and_channel_tile_rounds_up():
    shape = _BIG_SHAPE
    scaled = _spec(bit_scaling={"exponent": 1.0, "saturation_bits": 4})
    c8 = _compute_ms(scaled, _big_conv(8, 8), shape)
    assert _compute_ms(scaled, _big_conv(4, 4), shape) == pytest.approx(c8 / 2)
    assert _compute_ms(scaled, _big_conv(2, 2), shape) == pytest.approx(c8 / 2)  # saturated
    assert _compute_ms(scaled, _big_conv(4, 8), shape) == pytest.approx(c8)  # the wider operand
    assert _compute_ms(_spec(), _big_conv(4, 4), shape) == pytest.approx(c8)
    conv = _quant(nn.Conv2d(64, 24, 3, padding=1), w_bits=8, a_bits=8)
    tiled = _compute_ms(_spec(channel_tile=16), conv, shape)
    assert tiled == pytest.approx(_compute_ms(_spec(), conv, shape) * 32 / 24)


def test_calibration_terms_are_checked():
    with pytest.raises(ValueError, match="compute_efficiency_by_bits"):
        _spec(compute_efficiency_by_bits={4: 0.5})
    bitfusion = load_device("bitfusion").model_dump()
    with pytest.raises(ValueError, match="bit_flexible"):
        DeviceSpec.model_validate(
            {**bitfusion, "bit_scaling": {"exponent": 1.0, "saturation_bits": 2}}
        )
    with pytest.raises(ValueError, match="layer_efficiency"):
        _spec(layer_efficiency={"depthwise": 1.5})
