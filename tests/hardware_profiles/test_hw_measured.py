import math
import sys
import types

import pytest
import torch
from torch import nn

from autocompress.hardware_profiles import MeasuredProfile, model_size_bytes

_SHAPE = (3, 16, 16)


class _FakeQuantConv(nn.Conv2d):
    """Stand-in for a quant layer: rounds its input only while quant_enabled is True."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.w_bits, self.a_bits, self.quant_enabled = 4, 8, True
        self.register_buffer("act_min", torch.tensor(-1.0))
        self.register_buffer("act_max", torch.tensor(1.0))

    def forward(self, x):
        if self.quant_enabled:
            # Observer update in any mode: must never reach the caller's model.
            self.act_min.fill_(min(self.act_min.item(), x.min().item()))
            x = torch.round(x * 16) / 16
        return super().forward(x)


def _model() -> nn.Module:
    return nn.Sequential(
        _FakeQuantConv(3, 8, 3),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 14 * 14, 10),
    )


def _fast(**kwargs) -> MeasuredProfile:
    return MeasuredProfile(warmup=1, repeats=5, **kwargs)


def test_torch_backend_measures_and_leaves_model_unchanged():
    model = _model().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    m = _fast(threads=1).profile(model, input_shape=_SHAPE)
    assert math.isfinite(m.latency_ms) and m.latency_ms > 0
    d = m.details
    assert d["backend"] == "torch" and d["repeats"] == 5 and len(d["samples_ms"]) >= 5
    assert d["min_ms"] <= m.latency_ms <= d["max_ms"] and d["p10_ms"] <= d["p90_ms"]
    assert m.latency_ms == pytest.approx(min(d["round_medians_ms"]))
    assert math.isnan(m.energy_mj) and "power_w" in d["energy_note"]
    assert m.size_bytes == model_size_bytes(model)
    assert m.peak_mem_bytes > 0
    assert model[0].quant_enabled is True and model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_torch_threads_restored():
    previous = torch.get_num_threads()
    _fast(threads=1).profile(_model(), input_shape=_SHAPE)
    assert torch.get_num_threads() == previous


def test_power_gives_energy():
    m = _fast(power_w=5.0).profile(_model(), input_shape=_SHAPE)
    assert m.energy_mj == pytest.approx(5.0 * m.latency_ms)  # W * ms = mJ
    assert "energy_note" not in m.details


def test_onnxruntime_backend():
    pytest.importorskip("onnxruntime")
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    m = _fast(backend="onnxruntime", threads=1).profile(model, input_shape=_SHAPE)
    assert math.isfinite(m.latency_ms) and m.latency_ms > 0
    assert m.details["backend"] == "onnxruntime"
    assert model[0].quant_enabled is True
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_device():
    m = _fast(device="cuda").profile(_model(), input_shape=_SHAPE)
    assert math.isfinite(m.latency_ms) and m.latency_ms > 0


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"backend": "tflite"}, "backend"),
        ({"warmup": -1}, "warmup"),
        ({"repeats": 0}, "repeats"),
        ({"threads": 0}, "threads"),
        ({"power_w": -2.0}, "power_w"),
        ({"power_w": float("nan")}, "power_w"),
        ({"device": "tpu"}, "device"),
    ],
)
def test_invalid_arguments(kwargs, param):
    with pytest.raises(ValueError, match=f"'{param}' parameter of MeasuredProfile"):
        MeasuredProfile(**kwargs)


def test_cuda_unavailable_is_rejected():
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(ValueError, match="'device' parameter of MeasuredProfile"):
        MeasuredProfile(device="cuda")


# --- energy through NVML (CUDA) --------------------------------------------------------------


class _FakeNvmlError(Exception):
    pass


def _fake_pynvml(readings, *, fail_on=None):
    """A pynvml stand-in whose energy counter returns ``readings`` (mJ) one call at a time."""
    fake = types.ModuleType("pynvml")
    fake.calls = []
    fake.NVMLError = _FakeNvmlError
    values = iter(readings)

    def call(name, result=None):
        fake.calls.append(name)
        if name == fail_on:
            raise _FakeNvmlError("Not Supported")
        return result

    fake.nvmlInit = lambda: call("init")
    fake.nvmlShutdown = lambda: call("shutdown")
    fake.nvmlDeviceGetHandleByPciBusId = lambda bus_id: call("handle", ("handle", bus_id))
    fake.nvmlDeviceGetTotalEnergyConsumption = lambda handle: call("energy", next(values))
    return fake


def _to_cuda(args, kwargs) -> bool:
    """Whether a ``.to(...)`` call asks for a CUDA device."""
    targets = (*args, kwargs.get("device"))
    return any(
        isinstance(t, torch.device | str) and torch.device(t).type == "cuda" for t in targets
    )


@pytest.fixture
def fake_cuda(monkeypatch):
    """Pretend CUDA exists; the timed runs happen on the CPU but take the CUDA code path (moves
    to a CUDA device leave modules and tensors where they are)."""
    syncs = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: syncs.append(device))
    props = types.SimpleNamespace(pci_domain_id=0, pci_bus_id=0x3B, pci_device_id=0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: props)
    module_to, tensor_to = nn.Module.to, torch.Tensor.to

    def stay_on_cpu(real):
        def to(self, *args, **kwargs):
            return self if _to_cuda(args, kwargs) else real(self, *args, **kwargs)

        return to

    monkeypatch.setattr(nn.Module, "to", stay_on_cpu(module_to))
    monkeypatch.setattr(torch.Tensor, "to", stay_on_cpu(tensor_to))
    return syncs


def test_nvml_energy_is_counter_delta_over_repeats(monkeypatch, fake_cuda):
    fake = _fake_pynvml([10_000.0, 10_600.0])
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    m = MeasuredProfile(device="cuda", warmup=2, repeats=5, power_w=3.0).profile(
        _model(), input_shape=_SHAPE
    )
    d = m.details
    runs = len(d["samples_ms"])  # 5, plus any rounds added until two rounds agree
    assert m.energy_mj == pytest.approx(600.0 / runs)  # NVML wins over power_w
    assert d["energy_source"] == "nvml" and d["nvml_energy_total_mj"] == pytest.approx(600.0)
    assert d["nvml_device"] == "00000000:3B:00.0"  # matched by PCI bus id, not index
    assert "whole GPU board" in d["energy_note"] and d["energy_window_ms"] > 0
    assert "coarse" in d["energy_note"]  # a 5-run window is far below a second
    assert fake.calls == ["init", "handle", "energy", "energy", "shutdown"]
    # Synchronised before the first reading (warm-up work done) and around every timed run,
    # the settling warm-up runs (all but the 2 plain ones) included.
    assert len(fake_cuda) == 1 + 2 * (d["warmup_runs"] - 2 + runs)


def test_nvml_missing_falls_back_to_power_or_nan(monkeypatch, fake_cuda):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml raises ImportError
    m = _fast(device="cuda", power_w=4.0).profile(_model(), input_shape=_SHAPE)
    assert m.energy_mj == pytest.approx(4.0 * m.latency_ms)
    assert m.details["energy_source"] == "power_w"
    assert "autocompress[gpu]" in m.details["energy_note"]
    m = _fast(device="cuda").profile(_model(), input_shape=_SHAPE)
    assert math.isnan(m.energy_mj) and m.details["energy_source"] is None
    assert "autocompress[gpu]" in m.details["energy_note"] and "power_w" in m.details["energy_note"]


@pytest.mark.parametrize(
    ("readings", "fail_on", "reason"),
    [
        ([5.0, 5.0], None, "did not advance"),
        ([5.0, 6.0], "energy", "Not Supported"),  # pre-Volta GPUs have no energy counter
        ([5.0, 6.0], "handle", "no NVML handle"),
        ([5.0, 6.0], "init", "nvmlInit failed"),
    ],
)
def test_nvml_failures_fall_back_with_a_note(monkeypatch, fake_cuda, readings, fail_on, reason):
    fake = _fake_pynvml(readings, fail_on=fail_on)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    m = _fast(device="cuda", power_w=2.0).profile(_model(), input_shape=_SHAPE)
    assert m.energy_mj == pytest.approx(2.0 * m.latency_ms)
    assert m.details["energy_source"] == "power_w"
    assert reason in m.details["energy_note"]
    assert fake.calls.count("init") == fake.calls.count("shutdown") or fail_on == "init"


def test_cpu_never_touches_nvml(monkeypatch):
    fake = _fake_pynvml([1.0, 2.0])
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    m = _fast().profile(_model(), input_shape=_SHAPE)
    assert fake.calls == [] and math.isnan(m.energy_mj)
    assert "NVML" not in m.details["energy_note"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_energy_from_real_nvml_when_present():
    m = MeasuredProfile(device="cuda", warmup=5, repeats=200).profile(_model(), input_shape=_SHAPE)
    if m.details["energy_source"] == "nvml":
        assert math.isfinite(m.energy_mj) and m.energy_mj > 0
    else:
        assert math.isnan(m.energy_mj) and "NVML energy not used" in m.details["energy_note"]
