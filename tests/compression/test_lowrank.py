"""Low-rank factorization: the SVD mathematics, the factorized layers, their cost, and a
factorized candidate through build, one training step, ONNX export, packing and reload."""

import numpy as np
import pytest
import torch
from torch import nn

from autocompress.compression import Factorized, build_compressed, factorize_, truncated_svd
from autocompress.compression.lowrank import factor_names
from autocompress.compression.quantization import QuantConv2d, QuantLinear, quantized_layers
from autocompress.compression.serialization import load_model, save_model
from autocompress.export.onnx_export import export_onnx
from autocompress.export.packing import packed_state_equal, read_packed, write_packed
from autocompress.export.verify import TOLERANCES, onnx_runner
from autocompress.hardware_profiles.graph import layer_costs, model_size_bytes
from autocompress.spaces import Candidate
from autocompress.spaces.candidate import LayerChoice, low_rank, low_rank_pays, spatial_shape

ARCH = {"channels": [8, 16], "kernels": [3, 5], "strides": [1, 2]}
INPUT_SHAPE = (1, 8, 8)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _reconstructed(pair: Factorized) -> torch.Tensor:
    """The rows x cols matrix the two factors multiply out to."""
    second, first = pair[1].weight, pair[0].weight
    return second.reshape(second.shape[0], -1) @ first.reshape(first.shape[0], -1)


# --- the mathematics ------------------------------------------------------------------------


@pytest.mark.parametrize("rank", [1, 3, 7, 12])
def test_truncated_svd_error_is_the_discarded_singular_values_energy(rank: int) -> None:
    weight = torch.randn(12, 20, generator=_gen(), dtype=torch.float64)
    left, right = truncated_svd(weight, rank)
    sigma = torch.linalg.svdvals(weight)
    error = torch.linalg.matrix_norm(weight - left @ right) ** 2
    assert left.shape == (12, rank) and right.shape == (rank, 20)
    assert error.item() == pytest.approx((sigma[rank:] ** 2).sum().item(), rel=1e-9, abs=1e-9)


def test_factorized_linear_error_is_the_discarded_energy() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(40, 24, dtype=torch.float64)
    weight = layer.weight.detach().clone()
    model = nn.Sequential(layer)
    factorize_(model, {"0": 0.25})
    pair = model[0]
    rank = low_rank(0.25, 24, 40)
    assert isinstance(pair, Factorized) and pair.rank == rank == 6
    assert pair[0].bias is None and torch.equal(pair[1].bias, layer.bias)
    sigma = torch.linalg.svdvals(weight)
    error = torch.linalg.matrix_norm(weight - _reconstructed(pair)) ** 2
    assert error.item() == pytest.approx((sigma[rank:] ** 2).sum().item(), rel=1e-9)


def test_factorized_conv_is_a_channel_svd_with_the_discarded_energy_as_error() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 16, 3, stride=2, padding=1, dtype=torch.float64)
    matrix = conv.weight.detach().reshape(16, -1).clone()  # 16 x 54
    model = nn.Sequential(conv)
    factorize_(model, {"0": 0.5})
    first, second = model[0]
    assert (first.in_channels, first.out_channels, first.kernel_size) == (6, 8, (3, 3))
    assert (first.stride, first.padding, first.bias) == ((2, 2), (1, 1), None)
    assert (second.in_channels, second.out_channels, second.kernel_size) == (8, 16, (1, 1))
    sigma = torch.linalg.svdvals(matrix)
    error = torch.linalg.matrix_norm(matrix - _reconstructed(model[0])) ** 2
    assert error.item() == pytest.approx((sigma[8:] ** 2).sum().item(), rel=1e-9)


@pytest.mark.parametrize(
    "layer",
    [
        nn.Linear(10, 7),
        nn.Conv2d(3, 9, 3, padding=1),
        nn.Conv2d(4, 5, (3, 1), stride=(2, 1), dilation=(1, 2), padding=(1, 0), bias=False),
        nn.Conv2d(2, 6, 1),
    ],
)
def test_at_full_rank_the_factorized_layer_computes_the_original(layer: nn.Module) -> None:
    layer = layer.double()
    shape = (5, 10) if isinstance(layer, nn.Linear) else (5, layer.in_channels, 7, 6)
    x = torch.randn(*shape, generator=_gen(1), dtype=torch.float64)
    expected = layer(x)
    model = nn.Sequential(layer)
    factorize_(model, {"0": 0.999})  # rounds to the full rank min(rows, cols)
    assert isinstance(model[0], Factorized)
    assert torch.allclose(model(x), expected, rtol=0, atol=1e-12)


def test_spatial_factorization_is_an_svd_of_the_rearranged_kernel() -> None:
    """kh x 1 then 1 x kw: the composed kernel W'[o, i, y, x] = sum_r first[r, i, y] *
    second[o, r, x] misses W by exactly the discarded singular values' energy of the
    (in * kh) x (out * kw) rearrangement."""
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 16, (3, 5), stride=(2, 1), padding=(1, 2), dtype=torch.float64)
    weight = conv.weight.detach().clone()
    matrix = weight.permute(1, 2, 0, 3).reshape(6 * 3, 16 * 5)  # 18 x 80
    model = nn.Sequential(conv)
    factorize_(model, {"0": 0.5}, {"0": "spatial"})
    first, second = model[0]
    assert (first.kernel_size, first.stride, first.padding) == ((3, 1), (2, 1), (1, 0))
    assert (second.kernel_size, second.stride, second.padding) == ((1, 5), (1, 1), (0, 2))
    assert first.out_channels == second.in_channels == 9 and first.bias is None
    composed = torch.einsum("riy,orx->oiyx", first.weight[..., 0], second.weight[:, :, 0])
    sigma = torch.linalg.svdvals(matrix)
    error = ((weight - composed) ** 2).sum()
    assert error.item() == pytest.approx((sigma[9:] ** 2).sum().item(), rel=1e-9)


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv2d(3, 9, 3, padding=1),
        nn.Conv2d(4, 5, (3, 5), stride=(2, 3), dilation=(2, 1), padding=(2, 1)),
    ],
)
def test_at_full_rank_a_spatial_split_computes_the_original(conv: nn.Conv2d) -> None:
    conv = conv.double()
    x = torch.randn(2, conv.in_channels, 11, 13, generator=_gen(2), dtype=torch.float64)
    expected = conv(x)
    model = nn.Sequential(conv)
    factorize_(model, {"0": 0.999}, {"0": "spatial"})
    assert torch.allclose(model(x), expected, rtol=0, atol=1e-12)


def test_only_full_kernels_with_zero_padding_split_spatially() -> None:
    for layer in (
        nn.Linear(4, 4),
        nn.Conv2d(4, 4, 1),
        nn.Conv2d(4, 4, (3, 1)),
        nn.Conv2d(4, 4, 3, groups=2),
        nn.Conv2d(4, 4, 3, padding="same"),
        nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"),
    ):
        assert spatial_shape(layer) is None
        with pytest.raises(ValueError, match="one-group"):
            factorize_(nn.Sequential(layer), {"0": 0.5}, {"0": "spatial"})
    assert spatial_shape(nn.Conv2d(4, 6, (3, 5))) == (12, 30)


def test_rank_rounds_half_up_and_pays_only_when_the_factors_are_smaller() -> None:
    assert low_rank(0.5, 9, 16) == 5  # 4.5 rounds up
    assert low_rank(0.01, 9, 16) == 1  # never below one
    assert low_rank(0.999, 9, 16) == 9
    # Square 48 x 48: rank 24 gives 24 * 96 = 48 * 48 weights, which does not pay.
    assert not low_rank_pays(0.5, 48, 48)
    assert low_rank_pays(0.25, 48, 48)  # 12 * 96 < 2304
    assert not low_rank_pays(1.0, 48, 48)
    assert low_rank_pays(0.75, 10, 1000)  # very thin: even 3/4 of the rank pays


def test_factorized_layers_are_priced_as_two_layers_with_the_layer_bits() -> None:
    model = nn.Sequential(nn.Conv2d(4, 32, 3, padding=1), nn.Flatten(), nn.Linear(32 * 36, 10))
    before = {c.name: c for c in layer_costs(model, input_shape=(4, 6, 6))}
    factorize_(model, {"0": 0.25, "2": 0.5})
    from autocompress.compression.quantization import quantize_

    quantize_(model, factor_names({"0": (4, 8), "2": (8, 6)}, {"0": 0.25, "2": 0.5}))
    costs = {c.name: c for c in layer_costs(model, input_shape=(4, 6, 6))}
    assert list(costs) == ["0.0", "0.1", "2.0", "2.1"]
    conv_rank, linear_rank = low_rank(0.25, 32, 36), low_rank(0.5, 10, 32 * 36)
    assert (conv_rank, linear_rank) == (8, 5)
    # MACs: r * (rows + cols) per output position, against rows * cols before.
    assert costs["0.0"].macs == 36 * conv_rank * 36 and costs["0.1"].macs == 36 * conv_rank * 32
    assert costs["0.0"].macs + costs["0.1"].macs < before["0"].macs
    assert costs["2.0"].macs + costs["2.1"].macs == linear_rank * (10 + 32 * 36)
    assert [(c.w_bits, c.a_bits) for c in costs.values()] == [(4, 8), (4, 8), (8, 6), (8, 6)]
    params = sum(p.numel() for p in model.parameters())
    assert params == conv_rank * (36 + 32) + 32 + linear_rank * (10 + 32 * 36) + 10
    assert model_size_bytes(model) < model_size_bytes(
        nn.Sequential(nn.Conv2d(4, 32, 3), nn.Flatten(), nn.Linear(32 * 36, 10))
    )


def test_factorize_rejects_what_it_cannot_split_before_touching_the_model() -> None:
    model = nn.Sequential(nn.Conv2d(8, 8, 3, groups=8), nn.Linear(4, 4))
    with pytest.raises(ValueError, match="one-group nn.Conv2d"):
        factorize_(model, {"1": 0.5, "0": 0.5})
    assert isinstance(model[1], nn.Linear)
    with pytest.raises(ValueError, match=r"ratios\['1'\].*\(0, 1\]"):
        factorize_(model, {"1": 0.0})
    with pytest.raises(ValueError, match="module names"):
        factorize_(model, {"nope": 0.5})
    assert factorize_(model, {"1": 1.0})[1].__class__ is nn.Linear  # 1.0 leaves it whole


# --- a factorized candidate, end to end without a search ------------------------------------


def _candidate() -> Candidate:
    return Candidate(
        "small_cnn",
        ARCH,
        {
            "features.0.0": LayerChoice(8, 8, 0.0, 0.5),
            "features.1.0": LayerChoice(4, 8, 0.5, 0.25),
            "classifier": LayerChoice(8, 8, 0.0, 0.5),
        },
    )


def _trained(candidate: Candidate) -> nn.Module:
    model = build_compressed(candidate, num_classes=10, input_shape=INPUT_SHAPE)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    model.train()
    x = 2 * torch.randn(64, *INPUT_SHAPE, generator=_gen())
    y = torch.randint(0, 10, (64,), generator=_gen())
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    for seed in range(1, 3):  # settle BN statistics and activation ranges
        model(2 * torch.randn(64, *INPUT_SHAPE, generator=_gen(seed)))
    return model.eval()


def test_candidate_with_rank_ratios_builds_trains_and_exports_two_qdq_nodes(tmp_path) -> None:
    candidate = _candidate()
    model = _trained(candidate)
    bits = quantized_layers(model)
    # features.1.0 is pruned to 8 channels first, then factorized: 8 x 16*25 at 1/4 -> rank 2.
    assert model.features[1][0][0].out_channels == low_rank(0.25, 8, 16 * 25) == 2
    assert list(bits) == [
        "features.0.0.0",
        "features.0.0.1",
        "features.1.0.0",
        "features.1.0.1",
        "classifier.0",
        "classifier.1",
    ]
    assert bits["features.1.0.0"] == bits["features.1.0.1"] == (4, 8)
    assert all(isinstance(m, QuantConv2d | QuantLinear) for m in model.features[1][0])

    path = tmp_path / "m.onnx"
    exported = export_onnx(model, path, input_shape=INPUT_SHAPE)
    assert [layer.name for layer in exported.layers] == list(bits)
    import onnx

    ops = [node.op_type for node in onnx.load(str(path)).graph.node]
    assert ops.count("Conv") == 4 and ops.count("Gemm") + ops.count("MatMul") == 2
    x = 2 * torch.randn(256, *INPUT_SHAPE, generator=_gen(7))
    expected = model(x).detach().numpy()
    got = onnx_runner(path)(x.numpy())
    tolerance = TOLERANCES["onnx"]
    assert np.abs(got - expected).max() <= tolerance.rel * (expected.max() - expected.min())
    assert (got.argmax(1) == expected.argmax(1)).mean() >= tolerance.min_argmax_agreement


def test_factorized_model_packs_saves_and_reloads_exactly(tmp_path) -> None:
    candidate = _candidate()
    model = _trained(candidate)
    write_packed(tmp_path / "packed", model)
    assert packed_state_equal(model, read_packed(tmp_path / "packed"))
    save_model(
        tmp_path / "saved", model, candidate=candidate, num_classes=10, input_shape=(1, 8, 8)
    )
    loaded, spec = load_model(tmp_path / "saved")
    assert Candidate.from_dict(spec["candidate"]) == candidate
    x = torch.randn(8, *INPUT_SHAPE, generator=_gen(3))
    assert torch.equal(loaded.eval()(x), model(x))


def test_factorization_starts_from_the_svd_of_the_inherited_weights() -> None:
    teacher = build_compressed(Candidate("small_cnn", ARCH), num_classes=10, input_shape=(1, 8, 8))
    state = teacher.state_dict()
    candidate = Candidate("small_cnn", ARCH, {"classifier": LayerChoice(rank_ratio=0.999)})
    student = build_compressed(
        candidate, num_classes=10, input_shape=(1, 8, 8), teacher_state=state
    )
    x = torch.randn(4, *INPUT_SHAPE, generator=_gen(5))
    # Float bits and full rank: the student is the teacher, up to float32 rounding.
    assert torch.allclose(student.eval()(x), teacher.eval()(x), atol=1e-5)
