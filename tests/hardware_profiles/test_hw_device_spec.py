import re
from importlib import resources

import pytest
import yaml

from autocompress.hardware_profiles import DeviceSpec, list_devices, load_device

_A72_YAML = resources.files("autocompress.hardware_profiles").joinpath("devices/cortex_a72.yaml")


def _numbers(value):
    if isinstance(value, bool):
        return
    if isinstance(value, int | float):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _numbers(k)
            yield from _numbers(v)
    elif isinstance(value, list):
        for v in value:
            yield from _numbers(v)


def test_required_devices_are_shipped():
    required = {
        "cortex_a72",
        "bitfusion",
        "cortex_m7",
        "cortex_a53",
        "jetson_nano",
        "jetson_orin_nano",
        "edgetpu",
    }
    assert required <= set(list_devices())


@pytest.mark.parametrize("name", list_devices())
def test_every_shipped_device_loads_with_positive_numbers(name):
    spec = load_device(name)
    assert spec.name == name
    assert spec.sources and all(s.strip() for s in spec.sources)
    numbers = list(_numbers(spec.model_dump()))
    assert numbers and all(n > 0 for n in numbers)
    assert 0 < spec.compute_efficiency <= 1


@pytest.mark.parametrize("name", list_devices())
def test_every_field_of_shipped_yaml_has_a_source_comment(name):
    text = resources.files("autocompress.hardware_profiles").joinpath(f"devices/{name}.yaml")
    lines = text.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^[a-z_]+:", line):
            assert "#" in line or lines[i - 1].startswith("#"), f"{name}: {line!r} uncommented"


def _user_yaml(tmp_path, **changes):
    data = yaml.safe_load(_A72_YAML.read_text(encoding="utf-8"))
    data.update(changes)
    for key, value in changes.items():
        if value is None:
            del data[key]
    path = tmp_path / "my_board.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_user_yaml_by_path(tmp_path):
    spec = load_device(_user_yaml(tmp_path, name="my_board"))
    assert spec.name == "my_board" and spec.kind == "cpu"
    assert load_device(str(_user_yaml(tmp_path, name="b"))).name == "b"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"memory_bandwidth_bytes_per_s": -1.0}, "memory_bandwidth_bytes_per_s"),
        ({"layer_overhead_s": 0}, "layer_overhead_s"),
        ({"energy_per_dram_byte_pj": None}, "energy_per_dram_byte_pj"),
        ({"onchip_memory_bytes": None}, "onchip_memory_bytes"),
        ({"peak_macs_per_s": {8: 1e9, 16: -5.0, 32: 1e9}}, "peak_macs_per_s.16"),
        ({"compute_efficiency": 1.5}, "compute_efficiency"),
        ({"clock_hz": 1e9}, "clock_hz"),
        ({"peak_macs_per_s": {8: 1e9, 32: 1e9}}, "peak_macs_per_s"),
        ({"bit_flexible": True}, "base_bits"),
        ({"fallback_bits": [4]}, "fallback_bits"),
        ({"fallback_bits": [8, 16, 32]}, "fallback_bits"),
        ({"fallback_bits": [0]}, "fallback_bits.0"),
        (
            {"bit_flexible": True, "base_bits": 8, "fallback_bits": [32]},
            "fallback_bits",
        ),
    ],
)
def test_bad_user_yaml_names_file_and_field(tmp_path, changes, field):
    path = _user_yaml(tmp_path, **changes)
    with pytest.raises(ValueError) as err:
        load_device(path)
    assert str(path) in str(err.value)
    assert field in str(err.value)


def test_non_mapping_yaml(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n", encoding="utf-8")
    with pytest.raises(ValueError, match="list.yaml"):
        load_device(path)


def test_unknown_device_lists_valid_names():
    with pytest.raises(ValueError) as err:
        load_device("raspberry_pi_9")
    for name in list_devices():
        assert name in str(err.value)


def _spec(**changes) -> DeviceSpec:
    fields = dict(
        name="toy",
        kind="cpu",
        supported_bits=[8, 16, 32],
        peak_macs_per_s={8: 4e9, 16: 2e9, 32: 1e9},
        memory_bandwidth_bytes_per_s=1e9,
        onchip_memory_bytes=1024,
        energy_per_mac_pj={8: 1.0, 16: 2.0, 32: 4.0},
        energy_per_dram_byte_pj=100.0,
        energy_per_sram_byte_pj=10.0,
        layer_overhead_s=1e-6,
        compute_efficiency=1.0,
        sources=["test"],
    )
    fields.update(changes)
    return DeviceSpec(**fields)


def test_fallback_to_next_supported_precision():
    spec = _spec()
    assert [spec.compute_bits(b) for b in (1, 4, 8, 9, 16, 24, 32)] == [8, 8, 8, 16, 16, 32, 32]
    assert spec.mac_cost(w_bits=4, a_bits=4) == spec.mac_cost(w_bits=8, a_bits=8)
    assert spec.mac_cost(w_bits=4, a_bits=16).precision == "16"  # max(w, a) decides
    small = _spec(supported_bits=[8], peak_macs_per_s={8: 1e9}, energy_per_mac_pj={8: 1.0})
    assert small.compute_bits(32) == 8  # nothing wider: the largest supported precision


def test_cortex_a72_runs_int4_as_int8():
    spec = load_device("cortex_a72")
    assert spec.mac_cost(w_bits=4, a_bits=4) == spec.mac_cost(w_bits=8, a_bits=8)
    assert spec.mac_cost(w_bits=2, a_bits=8) == spec.mac_cost(w_bits=8, a_bits=8)


def test_bitfusion_scaling():
    spec = load_device("bitfusion")
    rate = {
        (w, a): spec.mac_cost(w_bits=w, a_bits=a).peak_macs_per_s
        for w in (2, 4, 8, 16)
        for a in (2, 4, 8, 16)
    }
    assert rate[2, 2] == pytest.approx(16 * rate[8, 8])
    assert rate[4, 4] == pytest.approx(4 * rate[8, 8])
    assert rate[2, 8] == pytest.approx(4 * rate[8, 8]) == pytest.approx(rate[8, 2])
    assert rate[16, 16] == pytest.approx(rate[8, 8] / 4)
    assert spec.mac_cost(w_bits=3, a_bits=3) == spec.mac_cost(w_bits=4, a_bits=4)  # round up
    assert spec.mac_cost(w_bits=1, a_bits=1) == spec.mac_cost(w_bits=2, a_bits=2)
    e = {b: spec.mac_cost(w_bits=b, a_bits=b).energy_pj for b in (2, 8)}
    assert e[2] == pytest.approx(e[8] / 16)


def test_spec_is_frozen_and_forbids_extra():
    spec = _spec()
    with pytest.raises(ValueError):
        spec.name = "other"
    with pytest.raises(ValueError):
        _spec(turbo=True)


def test_fallback_precision_is_labelled_and_uses_its_own_rates():
    spec = _spec(fallback_bits=[16, 32])
    assert spec.fallback_bits == [16, 32]
    assert spec.mac_cost(w_bits=8, a_bits=8).precision == "8"
    assert spec.mac_cost(w_bits=4, a_bits=12) == ("16-fallback", 2e9, 2.0)
    assert spec.mac_cost(w_bits=32, a_bits=8).precision == "32-fallback"
    assert _spec().fallback_bits == []  # optional field: existing specs load unchanged


def test_edgetpu_runs_int8_only_and_falls_back_to_the_host_cpu():
    spec = load_device("edgetpu")
    assert spec.kind == "accelerator" and spec.fallback_bits == [32]
    int8 = spec.mac_cost(w_bits=8, a_bits=8)
    assert int8.precision == "8"
    assert spec.mac_cost(w_bits=2, a_bits=4) == int8  # sub-8-bit is stored/computed as int8
    for w_bits, a_bits in ((16, 16), (8, 16), (32, 32)):
        host = spec.mac_cost(w_bits=w_bits, a_bits=a_bits)
        assert host.precision == "32-fallback"
        assert int8.peak_macs_per_s > 100 * host.peak_macs_per_s
        assert int8.energy_pj < host.energy_pj / 10
    assert int8.peak_macs_per_s == pytest.approx(2e12)  # 4 TOPS = 2e12 MAC/s
    assert spec.onchip_memory_bytes == 8 * 1024 * 1024


def test_jetson_nano_fp16_is_twice_fp32_and_has_no_int8():
    spec = load_device("jetson_nano")
    fp16 = spec.mac_cost(w_bits=16, a_bits=16)
    fp32 = spec.mac_cost(w_bits=32, a_bits=32)
    assert fp16.peak_macs_per_s == pytest.approx(2 * fp32.peak_macs_per_s)
    assert fp16.energy_pj < fp32.energy_pj
    assert spec.mac_cost(w_bits=8, a_bits=8) == fp16  # sm_53 has no int8 path: runs as fp16
    assert spec.memory_bandwidth_bytes_per_s == pytest.approx(25.6e9)


def test_jetson_orin_nano_has_int8_tensor_cores_and_a_2_4_sparse_kernel():
    spec = load_device("jetson_orin_nano")
    int8, fp16, fp32 = (spec.mac_cost(w_bits=b, a_bits=b) for b in (8, 16, 32))
    assert int8.peak_macs_per_s == pytest.approx(1.024e13)  # 20 dense INT8 TOPS
    assert int8.peak_macs_per_s == pytest.approx(2 * fp16.peak_macs_per_s)
    assert fp16.peak_macs_per_s > fp32.peak_macs_per_s
    assert spec.mac_cost(w_bits=4, a_bits=4) == int8  # no int4 conv kernels: runs as int8
    # the data sheet's 2x (40 sparse / 20 dense TOPS) is an upper bound of the 2:4 speedup
    assert list(spec.sparse) == ["2:4"] and 1 < spec.sparse["2:4"].speedup <= 2
    # no shift kernels: non-uniform weights are decoded to int8
    assert all(q.executes_as == "int8" for q in spec.quantizers.values())
    assert spec.weight_compute_bits(3, "pot") == 8
    assert spec.memory_bandwidth_bytes_per_s == pytest.approx(68e9)


def test_cortex_a53_is_a_slower_a72():
    a53, a72 = load_device("cortex_a53"), load_device("cortex_a72")
    assert a53.supported_bits == a72.supported_bits == [8, 16, 32]
    assert a53.mac_cost(w_bits=4, a_bits=4) == a53.mac_cost(w_bits=8, a_bits=8)
    int8, fp32 = (a53.mac_cost(w_bits=b, a_bits=b).peak_macs_per_s for b in (8, 32))
    assert int8 == pytest.approx(2 * fp32)
    for bits in (8, 16, 32):
        slow = a53.mac_cost(w_bits=bits, a_bits=bits).peak_macs_per_s
        assert slow < a72.mac_cost(w_bits=bits, a_bits=bits).peak_macs_per_s
    assert a53.memory_bandwidth_bytes_per_s < a72.memory_bandwidth_bytes_per_s
