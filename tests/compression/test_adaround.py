import pytest
import torch
from torch import nn

from autocompress.compression import QuantConv2d, QuantLinear, quantize_weight
from autocompress.compression.adaround import adaround_, round_layer_, roundable
from autocompress.compression.calibration import (
    calibrate_activations_,
    post_training_quantize_,
    quantization_disabled,
)
from autocompress.compression.quantization import enable_lsq_, float_output


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class Net(nn.Module):
    def __init__(self, w_bits: int = 3) -> None:
        super().__init__()
        self.conv = QuantConv2d(3, 8, 3, padding=1, w_bits=w_bits, a_bits=8)
        self.fc = QuantLinear(8 * 36, 5, w_bits=w_bits, a_bits=8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def batches(n: int = 4, seed: int = 0) -> list[torch.Tensor]:
    return [torch.randn(32, 3, 6, 6, generator=_gen(seed + i)) for i in range(n)]


def relative_error(layer: nn.Module, x: torch.Tensor, target: torch.Tensor) -> float:
    with torch.no_grad():
        out = layer(x)
    return float((out - target).square().mean() / target.square().mean())


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_adaptive_rounding_lowers_a_layers_output_error_against_nearest(bits):
    torch.manual_seed(0)
    layer = QuantLinear(64, 16, w_bits=bits, a_bits=32)
    # Correlated inputs, as a layer sees in a network: with white inputs the output error is
    # the weight error itself, which rounding to nearest already minimises.
    mixing = torch.randn(64, 64, generator=_gen(3))
    x = torch.randn(512, 64, generator=_gen(1)) @ mixing + 0.5
    with torch.no_grad():
        target = float_output(layer, x)
    nearest_error = relative_error(layer, x, target)
    nearest, learned = round_layer_(layer, x, target, iterations=200, generator=_gen(2))
    assert nearest == pytest.approx(nearest_error, rel=1e-4)
    assert learned == pytest.approx(relative_error(layer, x, target), rel=1e-4)
    assert learned < 0.96 * nearest


def test_rounded_weights_lie_on_the_quantizers_own_grid():
    torch.manual_seed(0)
    layer = QuantConv2d(4, 6, 3, w_bits=3, a_bits=32)
    before = layer.weight.detach().clone()
    x = torch.randn(64, 4, 5, 5, generator=_gen(1))
    with torch.no_grad():
        target = float_output(layer, x)
    round_layer_(layer, x, target, iterations=100, generator=_gen(2))
    weight = layer.weight.detach()
    # Fake-quant leaves the stored weight where it is: it already is a grid point, and the
    # per-channel scale (from the largest |w|, kept) did not move.
    assert torch.allclose(quantize_weight(weight, 3), weight, atol=1e-7)
    max_before = before.abs().flatten(1).amax(1)
    assert torch.allclose(weight.abs().flatten(1).amax(1), max_before)
    # Each weight went to the grid point just below or just above it.
    step = (max_before / 3).view(-1, 1, 1, 1)
    assert bool(torch.all((weight - before).abs() < step + 1e-6))


def test_masked_weights_stay_zero():
    torch.manual_seed(0)
    layer = QuantLinear(32, 8, w_bits=2, a_bits=32)
    mask = (torch.rand(8, 32, generator=_gen(3)) > 0.5).float()
    layer.weight_mask = mask
    x = torch.randn(128, 32, generator=_gen(1))
    with torch.no_grad():
        target = float_output(layer, x, layer.masked_weight())
    round_layer_(layer, x, target, iterations=100, generator=_gen(2))
    assert bool(torch.all(layer.masked_weight()[mask == 0] == 0))


def test_only_uniform_weights_without_a_learned_step_are_rounded():
    assert roundable(QuantLinear(4, 4, w_bits=4, a_bits=8))
    assert not roundable(QuantLinear(4, 4, w_bits=32, a_bits=8))
    assert not roundable(QuantLinear(4, 4, w_bits=4, a_bits=8, w_quantizer="pot"))
    assert not roundable(nn.Linear(4, 4))
    net = Net()
    enable_lsq_(net)
    assert not roundable(net.fc)


def test_adaround_brings_a_post_training_quantized_net_closer_to_its_float_self():
    torch.manual_seed(0)
    net = Net(w_bits=2)
    inputs = batches(4)
    with torch.no_grad(), quantization_disabled(net):
        reference = [net(x) for x in inputs]

    def error() -> float:
        with torch.no_grad():
            return float(
                sum((net(x) - r).square().mean() for x, r in zip(inputs, reference, strict=True))
            )

    calibrate_activations_(net, inputs, method="minmax")
    nearest = error()
    errors = adaround_(net, inputs, iterations=200)
    assert set(errors) == {"conv", "fc"}
    assert all(learned <= near for near, learned in errors.values())
    assert error() < nearest and not net.training


def test_post_training_quantize_takes_adaround_iterations():
    torch.manual_seed(0)
    inputs = batches(4)
    plain, rounded = Net(w_bits=2), Net(w_bits=2)
    rounded.load_state_dict(plain.state_dict())
    with torch.no_grad(), quantization_disabled(plain):
        reference = [plain(x) for x in inputs]
    post_training_quantize_(plain, inputs, method="minmax", bias_correction=False)
    post_training_quantize_(
        rounded, inputs, method="minmax", bias_correction=False, adaround_iterations=200
    )

    def error(net: nn.Module) -> float:
        with torch.no_grad():
            pairs = zip(inputs, reference, strict=True)
            return float(sum((net(x) - r).square().mean() for x, r in pairs))

    assert error(rounded) < error(plain)
