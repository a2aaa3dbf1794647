import math

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
    assert d["backend"] == "torch" and d["repeats"] == 5 and len(d["samples_ms"]) == 5
    assert d["min_ms"] <= d["p10_ms"] <= m.latency_ms <= d["p90_ms"] <= d["max_ms"]
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
