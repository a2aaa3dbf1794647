"""Non-uniform weight quantizers (pot, apot, codebook): every fake-quant weight lies on its level
set, the tables have the sizes the bits allow, the codebook is deterministic, the STE passes the
gradient, and a model's layers take the quantizer a candidate gives them."""

import pytest
import torch
from torch import nn

from autocompress.compression.apply import build_compressed
from autocompress.compression.quantization import (
    QuantConv2d,
    QuantLinear,
    fit_codebook,
    nearest_level,
    quantize_,
    weight_levels,
)
from autocompress.spaces import Candidate, LayerChoice


def _layer(quantizer: str, bits: int, seed: int = 0) -> QuantConv2d:
    torch.manual_seed(seed)
    conv = nn.Conv2d(4, 6, 3)
    with torch.no_grad():
        conv.weight[2].zero_()  # an all-zero channel must map to zero exactly
        conv.weight[3].mul_(40.0)  # channels of very different ranges
    return QuantConv2d.from_float(conv, w_bits=bits, a_bits=8, w_quantizer=quantizer)


def _expected_levels(quantizer: str, bits: int) -> set[float]:
    if quantizer == "pot":
        mags = {2.0**-k for k in range(2 ** (bits - 1) - 1)}
    else:  # apot: two interleaved PoT terms, b - 1 magnitude bits split between them
        first = [0.0] + [2.0 ** -(2 * j) for j in range(2 ** (bits // 2) - 1)]
        second = [0.0] + [2.0 ** -(2 * j + 1) for j in range(2 ** (bits - 1 - bits // 2) - 1)]
        sums = {a + b for a in first for b in second}
        mags = {s / max(sums) for s in sums if s > 0}
    mags = {float(torch.tensor(m, dtype=torch.float32)) for m in mags}
    return {0.0} | mags | {-m for m in mags}


@pytest.mark.parametrize("quantizer", ["pot", "apot"])
@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
def test_pot_and_apot_weights_lie_exactly_on_their_levels_times_channel_scale(quantizer, bits):
    levels = _expected_levels(quantizer, bits)
    assert set(weight_levels(quantizer, bits).tolist()) == levels
    layer = _layer(quantizer, bits)
    q = layer.quantized_weight().detach()
    for c in range(q.shape[0]):
        max_abs = layer.weight[c].detach().abs().max()
        scale = max_abs if max_abs > 0 else torch.tensor(1.0)
        allowed = {float(torch.tensor(v, dtype=torch.float32) * scale) for v in levels}
        assert set(q[c].flatten().tolist()) <= allowed, (quantizer, bits, c)
    assert torch.all(q[2] == 0)
    # At most 2^b - 1 distinct levels per channel: they fit b-bit indices.
    assert len(levels) <= 2**bits - 1


def test_pot_levels_are_powers_of_two_and_apot_levels_sums_of_two():
    pot = weight_levels("pot", 4)
    assert pot.tolist() == sorted([0.0] + [s * 2.0**-k for s in (1, -1) for k in range(7)])
    apot = weight_levels("apot", 4).tolist()
    # 3 magnitude bits: p0 in {0, 1, 1/4, 1/16}, p1 in {0, 1/2}, normalised by 3/2.
    assert 0.375 in apot and pytest.approx(1 / 24) in apot and len(apot) == 15
    assert not {0.125, 0.25} <= set(apot)  # not a uniform grid either


def test_pot_rounds_to_the_nearest_level_in_the_linear_domain():
    levels = weight_levels("pot", 3)  # 0, +-1/8, +-1/4 ... +-1 -> here 0, +-1/4, +-1/2, +-1
    x = torch.tensor([0.0, 0.1, 0.13, 0.37, 0.375, 0.376, 0.9, -0.74, -0.76])
    got = levels[nearest_level(x, levels)].tolist()
    assert got == [0.0, 0.0, 0.25, 0.25, 0.25, 0.5, 1.0, -0.5, -1.0]


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_codebook_has_at_most_2_to_the_b_values_and_is_deterministic(bits):
    layer = _layer("codebook", bits)
    q = layer.quantized_weight().detach()
    assert layer.codebook.shape == (2**bits,)
    assert torch.unique(q).numel() <= 2**bits
    assert set(torch.unique(q).tolist()) <= set(layer.codebook.tolist())
    again = fit_codebook(layer.weight, bits)
    assert torch.equal(again, layer.codebook)
    assert torch.equal(again, torch.sort(again).values)


def test_codebook_k_means_fits_clusters_better_than_a_linear_grid():
    torch.manual_seed(0)
    # Two tight clusters and a few outliers: k-means puts values where the weights are.
    w = torch.cat(
        [torch.randn(500) * 0.01 - 0.5, torch.randn(500) * 0.01 + 0.2, torch.tensor([3.0])]
    )
    codebook = fit_codebook(w.view(1, -1), 2)
    linear = torch.linspace(w.min(), w.max(), 4)
    err = (codebook[nearest_level(w, codebook)] - w).square().mean()
    err_linear = (linear[nearest_level(w, linear)] - w).square().mean()
    assert err < err_linear / 10
    assert fit_codebook(torch.zeros(3, 3), 2).tolist() == [0.0] * 4


def test_codebook_refits_in_training_forwards_only():
    layer = _layer("codebook", 3)
    before = layer.codebook.clone()
    with torch.no_grad():
        layer.weight.mul_(2)
    layer.eval()
    layer(torch.randn(1, 4, 5, 5))
    assert torch.equal(layer.codebook, before)
    layer.train()
    layer(torch.randn(1, 4, 5, 5))
    assert torch.allclose(layer.codebook, before * 2, rtol=1e-5)


@pytest.mark.parametrize("quantizer", ["pot", "apot", "codebook"])
def test_straight_through_gradient_reaches_every_weight(quantizer):
    layer = _layer(quantizer, 3)
    layer(torch.randn(2, 4, 6, 6)).sum().backward()
    assert layer.weight.grad is not None and bool((layer.weight.grad != 0).any())
    float_layer = nn.Conv2d(4, 6, 3)
    float_layer.load_state_dict(
        {k: v for k, v in layer.state_dict().items() if k in ("weight", "bias")}
    )
    float_layer(torch.randn(2, 4, 6, 6))


def test_uniform_default_is_unchanged_and_adds_no_state():
    torch.manual_seed(0)
    linear = nn.Linear(5, 3)
    layer = QuantLinear.from_float(linear, w_bits=4, a_bits=8)
    assert layer.w_quantizer == "uniform"
    assert set(layer.state_dict()) == {"weight", "bias", "act_min", "act_max", "act_initialized"}
    assert "w_quantizer" not in repr(layer)


def test_quantize_refuses_unknown_or_too_wide_non_uniform_quantizers():
    model = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(ValueError, match=r"quantizers\['0'\].*one of"):
        quantize_(model, {"0": (4, 8)}, {"0": "log"})
    with pytest.raises(ValueError, match=r"quantizers\['0'\].*2..8-bit"):
        quantize_(model, {"0": (16, 8)}, {"0": "pot"})
    with pytest.raises(ValueError, match="must name layers of 'bits'"):
        quantize_(model, {"0": (4, 8)}, {"1": "pot"})
    assert isinstance(model[0], nn.Linear)  # validated before touching the model
    quantize_(model, {"0": (4, 8)}, {"0": "codebook"})
    assert model[0].w_quantizer == "codebook" and model[0].codebook.shape == (16,)
    quantize_(model, {"0": (3, 8)}, {"0": "pot"})  # an existing quant layer changes quantizer
    assert model[0].w_quantizer == "pot" and "codebook" not in dict(model[0].named_buffers())


def test_candidate_quantizers_reach_the_built_layers_and_their_factors():
    arch = {"channels": [8, 16], "kernels": [3, 3], "strides": [1, 2]}
    shape = {"num_classes": 10, "input_shape": (1, 8, 8)}
    plain = build_compressed(Candidate("small_cnn", arch, {}), **shape)
    names = [n for n, m in plain.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    layers = {n: LayerChoice(w_bits=4, a_bits=8) for n in names}
    layers[names[0]] = LayerChoice(w_bits=4, a_bits=8, quantizer="pot")
    layers[names[-1]] = LayerChoice(w_bits=3, a_bits=8, quantizer="codebook", rank_ratio=0.25)
    model = build_compressed(Candidate("small_cnn", arch, layers), **shape)
    modules = dict(model.named_modules())
    assert modules[names[0]].w_quantizer == "pot"
    assert modules[names[1]].w_quantizer == "uniform"
    factors = [m for n, m in modules.items() if n.startswith(names[-1] + ".")]
    quantized = [m for m in factors if isinstance(m, QuantConv2d | QuantLinear)]
    assert len(quantized) == 2 and all(m.w_quantizer == "codebook" for m in quantized)
