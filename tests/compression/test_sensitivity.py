"""Per-layer output distortion of a trained network under single compression choices."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from autocompress.compression.lowrank import truncated_svd
from autocompress.compression.pruning import prune_
from autocompress.compression.quantization import (
    fit_codebook,
    quantize_weight,
    quantize_weight_nonuniform,
)
from autocompress.compression.sensitivity import (
    faster_layout,
    flat_output,
    measure_sensitivity,
    output_distortion,
)
from autocompress.compression.sparsity import sparsity_mask
from autocompress.spaces.candidate import factorizable_shape, low_rank


class Residual(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(width, width, 3, padding=1)

    def forward(self, x):
        return x + torch.relu(self.conv(x))


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        Residual(8),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 10),
    ).eval()


@pytest.fixture
def inputs():
    torch.manual_seed(1)
    return [torch.randn(16, 3, 8, 8) for _ in range(2)]


def _measure(model, inputs, **kwargs):
    options = dict(
        layers=["0", "2.conv", "5"],
        w_bits=[2, 4, 6, 8],
        a_bits=[4, 8, 32],
        prune_leaders=["0"],
        prune_ratios=[0.0, 0.25, 0.5],
        blocks=["2"],
        ignored=["5"],
    )
    return measure_sensitivity(model, inputs, **(options | kwargs))


def test_distortion_is_zero_unchanged_and_one_for_the_mean_output(inputs):
    model = _net()
    reference = [flat_output(model(x)).detach() for x in inputs]
    assert output_distortion(model, inputs, reference) == 0.0
    means = [r.mean(dim=0, keepdim=True).expand_as(r) for r in reference]

    class Constant(nn.Module):
        calls = iter(means)

        def forward(self, x):
            return next(self.calls)

    assert output_distortion(Constant(), inputs, reference) == pytest.approx(1.0)


def test_the_model_is_left_unchanged(inputs):
    model = _net()
    before = copy.deepcopy(model.state_dict())
    _measure(model, inputs)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_sensitivities_fall_with_bits_and_rise_with_pruning(inputs):
    s = _measure(_net(), inputs)
    for layer in ("0", "2.conv", "5"):
        w = [s.w_bits[layer][b] for b in (2, 4, 6, 8)]
        assert w == sorted(w, reverse=True) and w[-1] > 0
        assert s.a_bits[layer][4] > s.a_bits[layer][8] > s.a_bits[layer][32] == 0.0
    assert s.prune["0"][0.0] == 0.0 < s.prune["0"][0.25] < s.prune["0"][0.5]
    assert s.drop["2"] > 0
    assert s.params == {"0": 216, "2.conv": 576, "5": 80}
    assert s.macs == {"0": 216 * 64, "2.conv": 576 * 64, "5": 80}


def test_weight_widths_are_extrapolated_from_the_probe_by_error_energy(inputs):
    """The 4-bit probe is measured; the other widths are predicted from their weight error
    energy. Measured one by one, every width lands within a factor of 4 of its prediction, over
    a 2-8 bit span where the distortion itself moves by three orders of magnitude."""
    model = _net()
    s = _measure(model, inputs, w_bits=[2, 3, 4, 5, 6, 8])
    reference = [flat_output(model(x)).detach() for x in inputs]
    modules = dict(model.named_modules())
    for layer in ("0", "2.conv", "5"):
        weight = modules[layer].weight
        original = weight.detach().clone()
        for bits in (2, 3, 4, 5, 6, 8):
            with torch.no_grad():
                weight.copy_(quantize_weight(original, bits))
            measured = output_distortion(model, inputs, reference)
            with torch.no_grad():
                weight.copy_(original)
            assert 0.25 < s.w_bits[layer][bits] / measured < 4, (layer, bits)
        assert s.w_bits[layer][2] > 100 * s.w_bits[layer][8]


def test_quantizers_sparsity_and_ranks_are_priced_by_the_weight_gain(inputs):
    """Each weight-only change is the layer's gain (its 4-bit probe's distortion per unit of
    weight error energy) times the change's own error energy; measured by applying it, the
    quantizers and sparsities land within a factor of 4 of that (the rank, a structured error,
    within 10); a rank ratio whose factors would not shrink the layer is left out."""
    model = _net()
    s = _measure(
        model,
        inputs,
        quantizers=["uniform", "pot", "codebook"],
        sparsities=[0.0, 0.5, "2:4"],
        rank_ratios=[1.0, 0.5, 0.95],
    )
    reference = [flat_output(model(x)).detach() for x in inputs]
    modules = dict(model.named_modules())
    for layer in ("0", "2.conv", "5"):
        weight = modules[layer].weight
        original = weight.detach().clone()
        gain = s.w_bits[layer][4] / float((quantize_weight(original, 4) - original).pow(2).sum())
        changed = {
            ("quantizer", ("pot", 4)): quantize_weight_nonuniform(original, 4, "pot"),
            ("quantizer", ("codebook", 2)): quantize_weight_nonuniform(
                original, 2, "codebook", fit_codebook(original, 2)
            ),
            ("sparsity", 0.5): original * sparsity_mask(original.abs(), 0.5),
            ("sparsity", "2:4"): original * sparsity_mask(original.abs(), "2:4"),
        }
        shape = factorizable_shape(modules[layer])
        # Rank 0.5 pays on all three (e.g. 2.conv, 8 x 72: 4 x 80 < 576); 0.95 keeps all 8 rows.
        assert set(s.rank[layer]) == {0.5} and s.shapes[layer] == shape
        left, right = truncated_svd(original.reshape(shape), low_rank(0.5, *shape))
        changed["rank", 0.5] = (left @ right).reshape(original.shape)
        for (kind, key), new in changed.items():
            predicted = getattr(s, kind)[layer][key]
            energy = float((new - original).pow(2).sum())
            assert predicted == pytest.approx(gain * energy, rel=1e-4), (layer, kind, key)
            with torch.no_grad():
                weight.copy_(new)
            measured = output_distortion(model, inputs, reference)
            with torch.no_grad():
                weight.copy_(original)
            bound = 10 if kind == "rank" else 4
            assert 1 / bound < predicted / measured < bound, (layer, kind, key)
        widths = {(q, b) for q in ("pot", "codebook") for b in (2, 4, 6, 8)}
        assert set(s.quantizer[layer]) == widths


def test_a_block_dropped_is_its_identity(inputs):
    model = _net()
    s = _measure(model, inputs)
    without = copy.deepcopy(model)
    without[2] = nn.Identity()
    reference = [flat_output(model(x)).detach() for x in inputs]
    assert s.drop["2"] == pytest.approx(output_distortion(without, inputs, reference))


class _NormedNet(nn.Module):
    """conv1's channels meet a GroupNorm over channels: only a pruned copy measures them."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.norm = nn.GroupNorm(2, 8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = torch.relu(self.norm(self.conv1(x)))
        return self.fc(torch.relu(self.conv2(x)).mean(dim=(2, 3)))


@pytest.mark.parametrize("masked", [True, False], ids=["masked", "pruned-copy"])
def test_pruning_distortion_is_the_pruned_networks(inputs, masked):
    model, leaders = (_net(), ["0"]) if masked else (_NormedNet().eval(), ["conv1", "conv2"])
    ignored = ["5"] if masked else ["fc"]
    s = measure_sensitivity(
        model,
        inputs,
        layers=[],
        w_bits=[8],
        a_bits=[8],
        prune_leaders=leaders,
        prune_ratios=[0.0, 0.25, 0.5],
        ignored=ignored,
    )
    reference = [flat_output(model(x)).detach() for x in inputs]
    for leader in leaders:
        for ratio in (0.25, 0.5):
            pruned = prune_(copy.deepcopy(model), {leader: ratio}, inputs[0][:1], ignored=ignored)
            expected = output_distortion(pruned, inputs, reference)
            assert expected > 0
            assert s.prune[leader][ratio] == pytest.approx(expected, rel=1e-4)


def test_faster_layout_keeps_outputs_and_puts_the_model_back(inputs):
    model = _net()
    expected = [model(x).detach() for x in inputs]
    own = [t for t in [*model.parameters(), *model.buffers()]]
    data = [t.data for t in own]
    with faster_layout(model, inputs) as laid_out:
        channels_last = model[0].weight.is_contiguous(memory_format=torch.channels_last)
        layout = torch.channels_last if channels_last else torch.contiguous_format
        for x, out in zip(laid_out, expected, strict=True):
            assert x.is_contiguous(memory_format=layout)
            torch.testing.assert_close(model(x).detach(), out)
    assert all(t.data_ptr() == d.data_ptr() for t, d in zip(own, data, strict=True))
    flat = [torch.randn(4, 20)]
    with faster_layout(nn.Linear(20, 3), flat) as laid_out:
        assert laid_out[0] is flat[0]


class _Viewed(nn.Module):
    """Flattens by ``.view``, which channels-last strides do not allow."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4 * 8 * 8, 10)

    def forward(self, x):
        x = self.conv(x)
        return self.fc(x.view(x.size(0), -1))


def test_a_model_that_runs_only_in_nchw_is_measured_in_nchw(inputs):
    model = _Viewed().eval()
    with faster_layout(model, inputs) as laid_out:
        assert all(x.is_contiguous() for x in laid_out)
        model(laid_out[0])
    s = measure_sensitivity(
        model, inputs, layers=["conv"], w_bits=[4, 8], a_bits=[8], ignored=["fc"]
    )
    assert s.w_bits["conv"][4] > s.w_bits["conv"][8] > 0
