import copy
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from autocompress.compression import QuantConv2d, QuantLinear, quantize_weight
from autocompress.compression.calibration import (
    activation_error,
    activation_range,
    calibrate_activations_,
    clip_weights_,
    correct_bias_,
    observe_activations_,
    post_training_quantize_,
    quantization_disabled,
    recalibrate_batchnorm_,
    weight_clip,
)
from autocompress.compression.quantization import MOMENTUM


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def heavy_tailed(*shape: int, seed: int = 0) -> torch.Tensor:
    # Student's t with 4 degrees of freedom: a few values far out, as in real activations.
    normal = torch.randn(*shape, generator=_gen(seed))
    chi2 = torch.randn(4, *shape, generator=_gen(seed + 1)).square().sum(0)
    return normal / (chi2 / 4).sqrt()


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = QuantConv2d(3, 8, 3, padding=1, bias=False, w_bits=4, a_bits=8)
        self.bn = nn.BatchNorm2d(8)
        self.fc = QuantLinear(8, 5, w_bits=3, a_bits=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))


def batches(n: int = 4, seed: int = 0) -> list[torch.Tensor]:
    return [torch.randn(16, 3, 6, 6, generator=_gen(seed + i)) + 0.5 for i in range(n)]


@pytest.mark.parametrize(("bits", "ratio"), [(4, 0.3), (6, 0.6), (8, 0.95)])
def test_mse_clipping_lowers_the_quantization_error_against_minmax_on_heavy_tails(bits, ratio):
    x = heavy_tailed(50_000)
    minmax = activation_error(x, *activation_range(x, bits=bits, method="minmax"), bits)
    mse = activation_error(x, *activation_range(x, bits=bits, method="mse"), bits)
    assert mse < ratio * minmax  # the fewer the levels, the more clipping pays


@pytest.mark.parametrize(("bits", "ratio"), [(3, 0.5), (4, 0.7), (8, 1.0)])
def test_mse_clipping_lowers_the_weight_quantization_error_per_channel(bits, ratio):
    w = heavy_tailed(16, 128, 2, 2, seed=2)
    errors = {}
    for method in ("minmax", "mse"):
        bound = weight_clip(w, bits=bits, method=method).view(-1, 1, 1, 1)
        clipped = torch.minimum(torch.maximum(w, -bound), bound)
        errors[method] = (quantize_weight(clipped, bits) - w).square().flatten(1).mean(1)
    assert torch.all(errors["mse"] <= errors["minmax"])  # min/max is in the grid
    assert errors["mse"].mean() <= ratio * errors["minmax"].mean()


def test_mse_keeps_the_whole_range_of_a_uniform_tensor():
    # Nothing to clip: cutting the range off only adds clipping error.
    x = torch.rand(10_000, generator=_gen()) * 4 - 1
    lo, hi = activation_range(x, bits=8, method="mse")
    assert torch.isclose(lo, x.min()) and torch.isclose(hi, x.max())


def test_percentile_range_cuts_each_tail():
    x = heavy_tailed(100_000)
    lo, hi = activation_range(x, bits=8, method="percentile", percentile=99.0)
    assert x.min() < lo < 0 < hi < x.max()
    assert abs(float((x > hi).float().mean()) - 0.01) < 1e-3
    assert abs(float((x < lo).float().mean()) - 0.01) < 1e-3


def test_unknown_method_names_the_choices():
    with pytest.raises(ValueError, match="minmax, percentile, mse. Got 'max'"):
        activation_range(torch.ones(3), bits=8, method="max")


def test_calibration_stores_the_ranges_that_eval_and_a_reload_use():
    net = Net()
    inputs = batches()
    ranges = calibrate_activations_(net, inputs, method="minmax")
    assert set(ranges) == {"conv", "fc"}
    expected = min(float(x.min()) for x in inputs), max(float(x.max()) for x in inputs)
    assert ranges["conv"] == pytest.approx(expected)
    assert bool(net.conv.act_initialized) and float(net.conv.act_max) == pytest.approx(expected[1])
    # The calibrated state is all in the state_dict: a fresh copy computes the same outputs.
    copy = Net()
    copy.load_state_dict(net.state_dict())
    x = torch.randn(4, 3, 6, 6, generator=_gen(9)) * 5  # wider than calibrated: clamped alike
    assert torch.equal(copy.eval()(x), net.eval()(x))


def test_weight_clipping_is_stored_in_the_weights():
    layer = QuantLinear(512, 4, w_bits=3, a_bits=8)
    with torch.no_grad():
        layer.weight.copy_(heavy_tailed(4, 512, seed=3))
    before = layer.weight.detach().abs().amax(1)
    thresholds = clip_weights_(nn.Sequential(layer), method="mse")
    after = layer.weight.detach().abs().amax(1)
    assert torch.all(thresholds["0"] < before)  # heavy tails: every channel is clipped
    assert torch.allclose(after, thresholds["0"])
    assert clip_weights_(nn.Sequential(layer), method="minmax") == {}  # the quantizer's range


def test_bias_correction_removes_the_mean_output_shift():
    layer = QuantLinear(16, 6, w_bits=3, a_bits=4)
    model = nn.Sequential(layer)
    weight, bias = layer.weight.detach().clone(), layer.bias.detach().clone()
    # Positive inputs with a large mean: rounding the weights shifts every output's mean.
    inputs = [torch.rand(64, 16, generator=_gen(i)) * 3 + 1 for i in range(4)]
    calibrate_activations_(model, inputs, method="percentile", percentile=99.0)

    def mean_shift() -> torch.Tensor:
        # quantized layer - float layer (the original weight and bias), per output channel
        with torch.no_grad():
            return torch.cat([layer(x) - F.linear(x, weight, bias) for x in inputs]).mean(0)

    before = mean_shift()
    assert before.abs().max() > 1e-2
    shifts = correct_bias_(model, inputs)
    assert torch.allclose(shifts["0"], before, atol=1e-6)
    assert mean_shift().abs().max() < 1e-5


def test_bias_correction_of_a_convolution_is_per_output_channel():
    conv = QuantConv2d(3, 4, 3, padding=1, w_bits=2, a_bits=8)
    model = nn.Sequential(conv)
    weight, bias = conv.weight.detach().clone(), conv.bias.detach().clone()
    inputs = batches()
    clip_weights_(model, method="mse")  # corrected against the unclipped float weights
    calibrate_activations_(model, inputs)

    def mean_shift() -> torch.Tensor:
        with torch.no_grad():
            error = [conv(x) - F.conv2d(x, weight, bias, padding=1) for x in inputs]
        return torch.cat(error).mean(dim=(0, 2, 3))

    assert mean_shift().abs().max() > 1e-2
    correct_bias_(model, inputs, float_weights={"0": weight})
    assert mean_shift().abs().max() < 1e-5


def test_bias_correction_of_a_deep_network_holds_for_every_layer():
    # Three biased layers corrected together: each pass re-measures a layer on the inputs the
    # upstream corrections of the pass before produce, so three passes leave every layer's mean
    # error against its float self (original bias) zero on the inputs it actually receives.
    torch.manual_seed(0)
    original = nn.Sequential(
        QuantLinear(12, 12, w_bits=2, a_bits=4),
        nn.ReLU(),
        QuantLinear(12, 12, w_bits=2, a_bits=4),
        nn.ReLU(),
        QuantLinear(12, 12, w_bits=2, a_bits=4),
    )
    inputs = [torch.rand(64, 12, generator=_gen(i)) * 3 + 1 for i in range(4)]
    calibrate_activations_(original, inputs, method="percentile", percentile=99.0)
    float_layers = [
        partial(
            F.linear,
            weight=original[i].weight.detach().clone(),
            bias=original[i].bias.detach().clone(),
        )
        for i in (0, 2, 4)
    ]

    def errors(model: nn.Module) -> list[float]:
        seen: dict[int, list[torch.Tensor]] = {i: [] for i in range(3)}
        hooks = [
            model[index].register_forward_hook(
                lambda m, args, out, i=i: seen[i].append(out - float_layers[i](args[0]))
            )
            for i, index in enumerate((0, 2, 4))
        ]
        with torch.no_grad():
            for x in inputs:
                model(x)
        for hook in hooks:
            hook.remove()
        return [float(torch.cat(seen[i]).mean(0).abs().max()) for i in range(3)]

    assert min(errors(original)) > 1e-2
    once, thrice = copy.deepcopy(original), copy.deepcopy(original)
    correct_bias_(once, inputs, passes=1)
    first, *later = errors(once)
    assert first < 1e-5 and max(later) > 1e-4  # the first layer's inputs never move
    correct_bias_(thrice, inputs, passes=3)
    assert max(errors(thrice)) < 1e-5


def test_observed_ranges_are_the_qat_observer_restarted_on_the_quantized_network():
    net = Net()
    inputs = batches()
    net.train()
    net(torch.full((2, 3, 6, 6), 100.0))  # a stale range, far too wide, and BatchNorm moved
    net.eval()
    stats = net.bn.running_mean.clone()
    seen: list[torch.Tensor] = []
    hook = net.fc.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    assert observe_activations_(net, inputs) == 4
    hook.remove()
    # fc's input is the quantized conv's output (on its observed range), and fc's range is the
    # EMA of those batches' extremes from the first batch on: the stale range is gone.
    lo, hi = seen[0].min(), seen[0].max()
    for x in seen[1:]:
        lo, hi = lo + MOMENTUM * (x.min() - lo), hi + MOMENTUM * (x.max() - hi)
    assert torch.allclose(net.fc.act_min, lo) and torch.allclose(net.fc.act_max, hi)
    with quantization_disabled(net):
        float_inputs = []
        hook = net.fc.register_forward_pre_hook(lambda m, args: float_inputs.append(args[0]))
        net(inputs[0])
        hook.remove()
    assert not torch.equal(float_inputs[0], seen[0])  # what it saw was the quantized network's
    assert torch.equal(net.bn.running_mean, stats) and not net.training  # nothing trained


def test_batchnorm_recalibration_keeps_the_calibrated_ranges():
    net = Net()
    inputs = batches()
    calibrate_activations_(net, inputs)
    ranges = (float(net.fc.act_min), float(net.fc.act_max))
    assert recalibrate_batchnorm_(net, inputs) == 4
    assert (float(net.fc.act_min), float(net.fc.act_max)) == ranges
    assert not net.training and net.bn.momentum == 0.1
    # The statistics are those of the quantized convolution's outputs on the inputs.
    with torch.no_grad():
        pre = torch.cat([net.conv(x) for x in inputs])
    assert torch.allclose(net.bn.running_mean, pre.mean(dim=(0, 2, 3)), atol=1e-5)


def test_post_training_quantization_brings_a_quantized_net_close_to_its_float_self():
    torch.manual_seed(0)
    net = Net()
    inputs = batches(8)
    with torch.no_grad(), quantization_disabled(net):
        recalibrate_batchnorm_(net, inputs)
        reference = [net(x) for x in inputs]

    def error() -> float:
        with torch.no_grad():
            return float(
                sum((net(x) - r).square().mean() for x, r in zip(inputs, reference, strict=True))
            )

    calibrate_activations_(net, inputs, method="minmax")
    plain = error()
    post_training_quantize_(net, inputs, method="mse", bias_correction=True)
    assert error() < plain
    assert all(bool(m.act_initialized) for m in (net.conv, net.fc)) and not net.training
