"""Fine-grained sparsity: the N:M and unstructured masks, the gradual schedule, Taylor
importance, and a sparse candidate through build, QAT steps, quantization, ONNX export, packing
and reload."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from autocompress.compression import build_compressed, quantize_, quantize_weight
from autocompress.compression.serialization import load_model, save_model
from autocompress.compression.sparsity import (
    GradualSparsity,
    nm_rows,
    schedule_level,
    sparse_layers,
    sparsify_,
    sparsity_mask,
    taylor_scores,
)
from autocompress.evaluators.train import train_epochs
from autocompress.export.onnx_export import dequantized_weights, export_onnx
from autocompress.export.packing import packed_state_equal, read_packed, write_packed
from autocompress.export.verify import TOLERANCES, onnx_runner
from autocompress.spaces import Candidate
from autocompress.spaces.candidate import LayerChoice

ARCH = {"channels": [8, 16], "kernels": [3, 5], "strides": [1, 2]}
INPUT_SHAPE = (1, 8, 8)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _nonzeros_per_group(weight: torch.Tensor, m: int = 4) -> torch.Tensor:
    rows = nm_rows(weight)
    assert rows.shape[1] % m == 0
    return (rows.reshape(rows.shape[0], -1, m) != 0).sum(-1)


def test_nm_groups_run_along_the_input_channels_of_each_kernel_position() -> None:
    # scores = input-channel index: in every group of 4 input channels the two highest go.
    scores = torch.arange(8.0).view(1, 8, 1, 1).expand(3, 8, 2, 2).contiguous()
    keep = sparsity_mask(scores, "2:4")
    expected = torch.tensor([False, False, True, True] * 2)
    for o in range(3):
        for i in range(2):
            for j in range(2):
                assert torch.equal(keep[o, :, i, j], expected)
    # Linear: along in_features, per output row
    keep = sparsity_mask(torch.tensor([[4.0, 3, 2, 1, 1, 2, 3, 4]]), "1:4")
    assert keep.tolist() == [[True, False, False, False, False, False, False, True]]


def test_nm_mask_keeps_exactly_n_of_every_m_and_a_short_tail_keeps_min_n() -> None:
    scores = torch.rand(16, 12, 3, 3, generator=_gen())
    keep = sparsity_mask(scores, "2:4")
    assert (_nonzeros_per_group(keep) == 2).all()
    # the kept ones are the two largest of their group
    rows, kept = nm_rows(scores).reshape(-1, 4), nm_rows(keep).reshape(-1, 4)
    assert torch.equal(rows.topk(2, dim=1).indices.sort(1).values, kept.nonzero()[:, 1].view(-1, 2))
    tail = sparsity_mask(torch.rand(2, 6, generator=_gen(1)), "2:4")  # groups of 4 and 2
    assert tail.sum(1).tolist() == [4, 4]
    tail = sparsity_mask(torch.rand(2, 5, generator=_gen(1)), "2:4")  # groups of 4 and 1
    assert tail.sum(1).tolist() == [3, 3]


@pytest.mark.parametrize("fraction", [0.5, 0.75, 0.9])
def test_unstructured_mask_zeroes_exactly_the_fraction_of_lowest_scores(fraction: float) -> None:
    scores = torch.rand(16, 8, 3, 3, generator=_gen())
    keep = sparsity_mask(scores, fraction)
    assert (~keep).sum() == math.floor(fraction * scores.numel())
    assert scores[~keep].max() < scores[keep].min()


def test_partial_levels_prune_part_of_the_target() -> None:
    scores = torch.rand(4, 8, generator=_gen())
    assert sparsity_mask(scores, 0.75, level=0.0).all()
    assert (~sparsity_mask(scores, 0.75, level=0.5)).sum() == math.floor(0.375 * 32)
    assert (nm_rows(sparsity_mask(scores, "2:4", level=0.5)).reshape(-1, 4).sum(1) == 3).all()
    with pytest.raises(ValueError, match="level"):
        sparsity_mask(scores, 0.5, level=1.5)


def test_cubic_schedule_starts_at_zero_ends_at_target_and_rises_monotonically() -> None:
    levels = [schedule_level(t, 30) for t in range(0, 45)]
    assert levels[0] == 0.0 and levels[30] == 1.0 and levels[-1] == 1.0
    assert all(b >= a for a, b in zip(levels, levels[1:], strict=False))
    # Zhu & Gupta: s_t = s_f (1 - (1 - t/T)^3)
    assert levels[10] == pytest.approx(1 - (2 / 3) ** 3)
    assert schedule_level(0, 0) == 1.0  # no steps: one-shot


def _quant_model() -> nn.Module:
    model = nn.Sequential(nn.Conv2d(8, 16, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 16, 10))
    return quantize_(model, {"0": (4, 8), "3": (8, 8)})


def test_masked_weights_are_exact_zeros_after_fake_quant_and_get_no_gradient() -> None:
    model = _quant_model()
    sparsify_(model, {"0": "2:4", "3": 0.75})
    x = torch.randn(4, 8, 6, 6, generator=_gen())
    model(x).sum().backward()
    for layer in (model[0], model[3]):
        quantized = quantize_weight(layer.masked_weight(), layer.w_bits)
        assert (quantized[~layer.weight_mask] == 0).all()
        assert (layer.weight.grad[~layer.weight_mask] == 0).all()
    assert (_nonzeros_per_group(quantize_weight(model[0].masked_weight(), 4)) <= 2).all()
    assert (~model[3].weight_mask).sum() == 0.75 * model[3].weight.numel()


def test_dense_layers_keep_their_state_dict_and_output() -> None:
    model = _quant_model()
    keys = list(model.state_dict())
    assert not any(k.endswith("weight_mask") for k in keys)
    x = torch.randn(2, 8, 6, 6, generator=_gen())
    before = model(x)
    sparsify_(model, {"3": 0.0})
    assert list(model.state_dict()) == keys and torch.equal(model(x), before)


def test_taylor_importance_differs_from_magnitude_where_gradients_disagree() -> None:
    # w = [4, 3, 2, 1]: magnitude drops the last two. The loss only depends on the last two
    # inputs, so |w * g| is zero for the first two, and taylor drops those instead.
    layer = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[4.0, 3.0, 2.0, 1.0]]))
    x = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 2.0, 1.0]])
    model = nn.Sequential(layer)
    scores = taylor_scores(model, [x], lambda m, b: (m(b) - 5).square().mean())
    assert torch.equal(sparsity_mask(layer.weight.abs(), "2:4"), torch.tensor([[1, 1, 0, 0]]) > 0)
    assert torch.equal(sparsity_mask(scores["0"], "2:4"), torch.tensor([[0, 0, 1, 1]]) > 0)
    assert layer.weight.grad is None  # gradients are left as they were


def _candidate(sparsity_a="2:4", sparsity_b=0.75) -> Candidate:
    return Candidate(
        "small_cnn",
        ARCH,
        {
            "features.0.0": LayerChoice(8, 8),
            "features.1.0": LayerChoice(4, 8, 0.5, sparsity=sparsity_a),
            "classifier": LayerChoice(8, 8, sparsity=sparsity_b),
        },
    )


def _batches(n: int = 6):
    return [
        (2 * torch.randn(32, *INPUT_SHAPE, generator=_gen(i)), torch.randint(0, 10, (32,)))
        for i in range(n)
    ]


@pytest.mark.parametrize("importance", ["magnitude", "taylor"])
def test_gradual_pruning_during_qat_ends_at_exactly_the_target(importance: str) -> None:
    model = build_compressed(_candidate(), num_classes=10, input_shape=INPUT_SHAPE)
    conv, fc = model.features[1][0], model.classifier
    # built one-shot at the target; the fine-tune restarts dense and ramps up
    assert (_nonzeros_per_group(conv.weight_mask) == 2).all()
    train_epochs(
        model,
        _batches(),
        epochs=2,
        lr=1e-2,
        weight_decay=1e-4,
        device=torch.device("cpu"),
        sparsity_importance=importance,
    )
    assert (_nonzeros_per_group(conv.weight_mask) == 2).all()
    assert (conv.weight[~conv.weight_mask] == 0).all()  # stored weights hold the zeros
    assert (~fc.weight_mask).sum() == math.floor(0.75 * fc.weight.numel())
    assert (fc.weight[~fc.weight_mask] == 0).all()
    quantized = quantize_weight(conv.masked_weight(), conv.w_bits)
    assert (_nonzeros_per_group(quantized) <= 2).all()


def test_gradual_schedule_ramps_masks_over_two_thirds_of_the_steps() -> None:
    model = build_compressed(_candidate("2:4", 0.5), num_classes=10, input_shape=INPUT_SHAPE)
    gradual = GradualSparsity(model, total_steps=30, importance="magnitude")
    fc = model.classifier
    assert gradual.ramp_steps == 20 and fc.weight_mask.all()  # dense at the start
    zeros = []
    for step in range(1, 31):
        gradual.after_step(step)
        zeros.append(int((~fc.weight_mask).sum()))
    target = math.floor(0.5 * fc.weight.numel())
    assert all(b >= a for a, b in zip(zeros, zeros[1:], strict=False))
    assert 0 < zeros[4] < target and zeros[19] == target and zeros[-1] == target
    gradual.finish()
    assert int((~fc.weight_mask).sum()) == target


def test_no_training_steps_is_one_shot() -> None:
    model = build_compressed(_candidate(), num_classes=10, input_shape=INPUT_SHAPE)
    weights = model.classifier.weight.detach().clone()
    gradual = GradualSparsity(model, total_steps=0)
    gradual.finish()
    fc = model.classifier
    assert torch.equal(fc.weight_mask, sparsity_mask(weights.abs(), 0.75))
    assert (fc.weight[~fc.weight_mask] == 0).all()


def _trained() -> nn.Module:
    model = build_compressed(_candidate(), num_classes=10, input_shape=INPUT_SHAPE)
    train_epochs(
        model, _batches(4), epochs=1, lr=1e-2, weight_decay=0.0, device=torch.device("cpu")
    )
    for seed in range(1, 3):  # settle BN statistics and activation ranges
        model(2 * torch.randn(64, *INPUT_SHAPE, generator=_gen(seed)))
    return model.eval()


def test_sparse_model_exports_onnx_with_the_zeros_and_the_same_outputs(tmp_path) -> None:
    model = _trained()
    path = tmp_path / "m.onnx"
    export_onnx(model, path, input_shape=INPUT_SHAPE)
    weights = dequantized_weights(path)
    for name, layer in sparse_layers(model).items():
        expected = quantize_weight(layer.masked_weight().detach(), layer.w_bits)
        assert torch.equal(weights[name].reshape(expected.shape), expected)
        assert (weights[name].reshape(expected.shape)[~layer.weight_mask] == 0).all()
    conv = weights["features.1.0"].reshape(model.features[1][0].weight.shape)
    assert (_nonzeros_per_group(conv) <= 2).all()
    x = 2 * torch.randn(128, *INPUT_SHAPE, generator=_gen(7))
    expected = model(x).detach().numpy()
    got = onnx_runner(path)(x.numpy())
    tolerance = TOLERANCES["onnx"]
    assert np.abs(got - expected).max() <= tolerance.rel * (expected.max() - expected.min())


def test_sparse_model_packs_only_kept_weights_and_reads_back_exactly(tmp_path) -> None:
    model = _trained()
    write_packed(tmp_path / "packed", model)
    state = read_packed(tmp_path / "packed")
    assert packed_state_equal(model, state)
    assert torch.equal(state["classifier.weight_mask"], model.classifier.weight_mask)
    import json

    index = json.loads((tmp_path / "packed" / "weights.json").read_text())["tensors"]
    entry = index["classifier.weight"]
    assert entry["encoding"] == "packed_sparse"
    kept = int(model.classifier.weight_mask.sum())
    assert entry["nbytes"] == math.ceil(kept * 8 / 8)
    assert index["classifier.weight_mask"]["encoding"] == "bitmask"
    assert index["classifier.weight_mask"]["nbytes"] == math.ceil(
        model.classifier.weight.numel() / 8
    )

    save_model(
        tmp_path / "saved", model, candidate=_candidate(), num_classes=10, input_shape=(1, 8, 8)
    )
    loaded, _ = load_model(tmp_path / "saved")
    x = torch.randn(8, *INPUT_SHAPE, generator=_gen(3))
    assert torch.equal(loaded.eval()(x), model(x))
    assert torch.equal(loaded.classifier.weight_mask, model.classifier.weight_mask)


def test_sparsify_rejects_bad_input() -> None:
    model = _quant_model()
    with pytest.raises(ValueError, match="N:M"):
        sparsify_(model, {"0": "4:2"})
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        sparsify_(model, {"0": 1.0})
    with pytest.raises(ValueError, match="QuantConv2d/QuantLinear"):
        sparsify_(model, {"1": 0.5})
