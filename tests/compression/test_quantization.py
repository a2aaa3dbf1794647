import pytest
import torch
import torch.nn.functional as F
from torch import nn

from autocompress.compression import (
    QuantConv2d,
    QuantLinear,
    activation_qparams,
    fake_quantize,
    quantize_,
    quantize_weight,
    quantized_layers,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, stride=2, groups=8)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.dw(x))
        return self.fc(x.mean(dim=(2, 3)))


ALL_BITS = {"conv1": (4, 6), "dw": (3, 8), "fc": (8, 4)}


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_weight_error_at_most_half_a_step_per_channel(bits: int) -> None:
    w = torch.randn(6, 4, 3, 3, generator=_gen())
    w[2] *= 100.0  # channels of very different magnitude: per-channel scales must differ
    scale = w.abs().flatten(1).amax(1) / (2 ** (bits - 1) - 1)
    error = (quantize_weight(w, bits) - w).abs()
    assert torch.all(error <= scale.view(-1, 1, 1, 1) / 2 * (1 + 1e-5))


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_weight_levels_per_channel_are_symmetric_and_few(bits: int) -> None:
    w = torch.randn(5, 64, generator=_gen(1))
    wq = quantize_weight(w, bits)
    for c in range(w.shape[0]):
        assert wq[c].unique().numel() <= 2**bits - 1
        # the extreme weight is represented exactly (symmetric range reaches max|w|)
        assert torch.isclose(wq[c].abs().max(), w[c].abs().max())


def test_zero_weight_channel_stays_zero_without_nan() -> None:
    w = torch.randn(3, 4, generator=_gen())
    w[1] = 0.0
    wq = quantize_weight(w, 4)
    assert torch.isfinite(wq).all()
    assert torch.equal(wq[1], torch.zeros(4))


def test_32_bits_is_identity() -> None:
    w = torch.randn(4, 3, 3, 3, generator=_gen())
    assert quantize_weight(w, 32) is w
    conv = nn.Conv2d(3, 4, 3)
    q = QuantConv2d.from_float(conv, w_bits=32, a_bits=32).train()
    x = torch.randn(2, 3, 6, 6, generator=_gen(1))
    assert torch.equal(q(x), conv(x))


def test_ste_gradient_is_one_inside_and_zero_outside_the_range() -> None:
    x = torch.linspace(-2.0, 2.0, 401, requires_grad=True)
    scale, qmin, qmax = 0.1, -8, 7  # representable: [-0.8, 0.7] (+- half a step)
    y = fake_quantize(x, scale, 0.0, qmin, qmax)
    y.sum().backward()
    inside = (torch.round(x.detach() / scale) >= qmin) & (torch.round(x.detach() / scale) <= qmax)
    assert torch.equal(x.grad, inside.float())
    assert x.grad[x.detach().abs() < 0.5].eq(1).all()
    assert x.grad[x.detach().abs() > 1.0].eq(0).all()
    # forward values: clamped to the grid
    assert y.max().item() == pytest.approx(0.7) and y.min().item() == pytest.approx(-0.8)


def test_fake_quantize_broadcasts_per_channel_scale() -> None:
    x = torch.tensor([[0.26, -0.26], [2.6, -2.6]])
    scale = torch.tensor([[0.1], [1.0]])
    y = fake_quantize(x, scale, 0.0, -7, 7)
    assert torch.allclose(y, torch.tensor([[0.3, -0.3], [3.0, -3.0]]))


def test_activation_observer_ema_in_train_frozen_in_eval() -> None:
    layer = QuantLinear(4, 2, w_bits=8, a_bits=8).train()
    x1 = torch.randn(16, 4, generator=_gen(1))
    x2 = 3 * torch.randn(16, 4, generator=_gen(2))
    layer(x1)
    assert bool(layer.act_initialized)
    assert layer.act_min.item() == pytest.approx(x1.min().item())
    assert layer.act_max.item() == pytest.approx(x1.max().item())
    layer(x2)
    assert layer.act_min.item() == pytest.approx(0.9 * x1.min().item() + 0.1 * x2.min().item())
    assert layer.act_max.item() == pytest.approx(0.9 * x1.max().item() + 0.1 * x2.max().item())
    frozen = (layer.act_min.clone(), layer.act_max.clone())
    layer.eval()
    layer(100 * x2)
    assert torch.equal(layer.act_min, frozen[0]) and torch.equal(layer.act_max, frozen[1])


def test_activation_range_always_contains_zero() -> None:
    scale, zero_point = activation_qparams(torch.tensor(2.0), torch.tensor(5.0), 8)
    assert zero_point.item() == 0
    assert scale.item() == pytest.approx(5.0 / 255)
    scale, zero_point = activation_qparams(torch.tensor(-4.0), torch.tensor(-1.0), 8)
    assert zero_point.item() == 255
    # zero is exactly representable, whatever the range
    layer = QuantLinear(3, 1, w_bits=32, a_bits=4).train()
    layer(torch.rand(8, 3, generator=_gen()) + 1.0)
    x = torch.zeros(1, 3)
    assert torch.equal(layer.quantize_input(x), x)


def _relative_error(bits: int) -> float:
    conv = nn.Conv2d(8, 16, 3, padding=1)
    torch.nn.init.normal_(conv.weight, generator=_gen(3))
    q = QuantConv2d.from_float(conv, w_bits=bits, a_bits=bits).train()
    x = torch.randn(4, 8, 10, 10, generator=_gen(4))
    with torch.no_grad():
        q(x)  # calibrate the observer
        q.eval()
        reference = conv(x)
        return ((q(x) - reference).norm() / reference.norm()).item()


def test_error_shrinks_with_bits_and_is_small_at_8() -> None:
    errors = [_relative_error(b) for b in (2, 3, 4, 6, 8)]
    assert errors == sorted(errors, reverse=True)
    assert errors[-1] < 0.02
    assert errors[0] > 10 * errors[-1]


def test_quant_disabled_is_exactly_the_float_layer() -> None:
    conv = nn.Conv2d(3, 4, 3, padding=1)
    q = QuantConv2d.from_float(conv, w_bits=2, a_bits=2).train()
    q.quant_enabled = False
    x = torch.randn(2, 3, 5, 5, generator=_gen())
    assert torch.equal(q(x), conv(x))
    assert not bool(q.act_initialized)  # observer untouched while disabled
    lin = nn.Linear(5, 3)
    ql = QuantLinear.from_float(lin, w_bits=2, a_bits=2)
    ql.quant_enabled = False
    xl = torch.randn(4, 5, generator=_gen())
    assert torch.equal(ql(xl), lin(xl))


def test_depthwise_conv_keeps_hyper_parameters_and_works() -> None:
    conv = nn.Conv2d(8, 8, 3, stride=2, padding=2, dilation=2, groups=8, bias=False)
    q = QuantConv2d.from_float(conv, w_bits=8, a_bits=8).eval()
    for attr in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation"):
        assert getattr(q, attr) == getattr(conv, attr)
    assert q.groups == 8 and q.bias is None
    x = torch.randn(2, 8, 9, 9, generator=_gen())
    out, reference = q(x), conv(x)
    assert out.shape == reference.shape
    assert torch.allclose(out, reference, atol=0.05 * reference.abs().max().item())


def test_from_float_copies_weights_dtype_and_is_a_conv() -> None:
    conv = nn.Conv2d(2, 3, 1, dtype=torch.float64)
    q = QuantConv2d.from_float(conv, w_bits=4, a_bits=8)
    assert isinstance(q, nn.Conv2d)
    assert q.weight.dtype == torch.float64 and q.act_min.dtype == torch.float64
    assert torch.equal(q.weight, conv.weight) and torch.equal(q.bias, conv.bias)
    assert q.weight is not conv.weight
    float_keys = set(conv.state_dict())
    assert float_keys < set(q.state_dict())
    assert set(q.state_dict()) - float_keys == {"act_min", "act_max", "act_initialized"}


def test_quant_layers_train_weights_through_the_ste() -> None:
    q = QuantConv2d.from_float(nn.Conv2d(3, 4, 3), w_bits=4, a_bits=4).train()
    q(torch.randn(2, 3, 5, 5, generator=_gen())).square().sum().backward()
    assert q.weight.grad is not None and q.weight.grad.abs().sum() > 0


def test_quantize_replaces_named_layers_in_place() -> None:
    model = SmallCNN()
    x = torch.randn(2, 3, 8, 8, generator=_gen())
    assert quantize_(model, ALL_BITS) is model
    assert isinstance(model.conv1, QuantConv2d) and isinstance(model.fc, QuantLinear)
    assert isinstance(model.bn1, nn.BatchNorm2d)
    assert quantized_layers(model) == ALL_BITS
    assert model(x).shape == (2, 5)
    # already-quantized layers only get their bits updated, observers are kept
    model.train()(x)
    act_max = model.conv1.act_max.clone()
    conv1 = model.conv1
    quantize_(model, {"conv1": (2, 32)})
    assert model.conv1 is conv1 and (conv1.w_bits, conv1.a_bits) == (2, 32)
    assert torch.equal(conv1.act_max, act_max)


def test_state_dict_round_trip_reproduces_outputs_exactly() -> None:
    model = quantize_(SmallCNN(), ALL_BITS).train()
    for seed in range(3):
        model(torch.randn(4, 3, 8, 8, generator=_gen(seed)))
    model.eval()
    x = torch.randn(2, 3, 8, 8, generator=_gen(9))
    state = model.state_dict()
    assert "conv1.act_min" in state and "fc.act_max" in state

    fresh = quantize_(SmallCNN(), ALL_BITS)
    fresh.load_state_dict(state)
    fresh.eval()
    assert torch.equal(fresh(x), model(x))


@pytest.mark.parametrize(
    ("bits", "needle"),
    [
        ({"nope": (8, 8)}, "nope"),
        ({"bn1": (8, 8)}, "bn1"),
        ({"conv1": (1, 8)}, "conv1"),
        ({"conv1": (8, 33)}, "conv1"),
        ({"conv1": (8.0, 8)}, "conv1"),
        ({"conv1": (True, 8)}, "conv1"),
        ({"conv1": (8,)}, "conv1"),
    ],
)
def test_quantize_rejects_bad_input_without_touching_the_model(bits, needle: str) -> None:
    model = SmallCNN()
    with pytest.raises(ValueError, match=needle):
        quantize_(model, {"fc": (8, 8), **bits})
    assert quantized_layers(model) == {}


def test_from_float_rejects_wrong_module_and_bits() -> None:
    with pytest.raises(ValueError, match="nn.Conv2d"):
        QuantConv2d.from_float(nn.Linear(2, 2), w_bits=8, a_bits=8)
    with pytest.raises(ValueError, match="bits"):
        QuantLinear.from_float(nn.Linear(2, 2), w_bits=8, a_bits=64)


def test_eval_before_calibration_uses_the_batch_range() -> None:
    lin = nn.Linear(4, 3)
    q = QuantLinear.from_float(lin, w_bits=8, a_bits=8).eval()
    x = torch.randn(8, 4, generator=_gen())
    assert torch.allclose(q(x), lin(x), atol=0.05)
    assert not bool(q.act_initialized)
    assert F.mse_loss(q(x), lin(x)) > 0
