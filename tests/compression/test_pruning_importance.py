"""Structured pruning importance: l1 (the default), taylor (scores of the teacher weights,
inherited like the weights), bn_scale (|gamma| of the following BatchNorm, L1 without one)."""

import logging

import pytest
import torch
from torch import nn

from autocompress.compression import build_compressed, prune_
from autocompress.compression.pruning import inherited_scores
from autocompress.spaces import Candidate
from autocompress.spaces.candidate import LayerChoice

EXAMPLE = torch.zeros(1, 3, 8, 8)


def _net(bn: bool = True) -> nn.Sequential:
    torch.manual_seed(0)
    layers = [nn.Conv2d(3, 6, 3, padding=1)]
    if bn:
        layers.append(nn.BatchNorm2d(6))
    layers += [nn.ReLU(), nn.Conv2d(6, 4, 3)]
    net = nn.Sequential(*layers)
    with torch.no_grad():
        # L1 order of the channels: 0 < 1 < ... < 5
        for c in range(6):
            net[0].weight[c].fill_(0.1 * (c + 1))
        if bn:
            net[1].weight.copy_(torch.tensor([5.0, -0.1, 3.0, 0.2, -4.0, 1.0]))
    return net


def _kept_first_weights(net: nn.Sequential) -> list[float]:
    return [round(float(w), 4) for w in net[0].weight.detach()[:, 0, 0, 0]]


def test_l1_removes_the_lowest_norm_channels() -> None:
    net = _net()
    prune_(net, {"0": 0.5}, EXAMPLE)
    assert _kept_first_weights(net) == [0.4, 0.5, 0.6]


def test_bn_scale_removes_the_channels_with_the_smallest_gamma() -> None:
    net = _net()
    prune_(net, {"0": 0.5}, EXAMPLE, importance="bn_scale")
    # |gamma| = 5, .1, 3, .2, 4, 1: channels 1, 3, 5 go
    assert _kept_first_weights(net) == [0.1, 0.3, 0.5]
    assert net[1].weight.tolist() == [5.0, 3.0, -4.0]


def test_bn_scale_without_batchnorm_falls_back_to_l1_with_one_warning(caplog) -> None:
    net = _net(bn=False)
    with caplog.at_level(logging.WARNING):
        prune_(net, {"0": 0.5}, EXAMPLE, importance="bn_scale")
    assert _kept_first_weights(net) == [0.4, 0.5, 0.6]
    warnings = [r for r in caplog.records if "bn_scale" in r.getMessage()]
    assert len(warnings) == 1


def test_taylor_sums_the_scores_of_each_channel() -> None:
    net = _net()
    scores = torch.zeros_like(net[0].weight)
    scores[[0, 2, 5]] = 1.0  # Taylor says 0, 2, 5 matter, whatever their norms
    prune_(net, {"0": 0.5}, EXAMPLE, importance="taylor", scores={"0": scores})
    assert _kept_first_weights(net) == [0.1, 0.3, 0.6]
    with pytest.raises(ValueError, match="Taylor score"):
        prune_(_net(), {"0": 0.5}, EXAMPLE, importance="taylor")
    with pytest.raises(ValueError, match="importance"):
        prune_(_net(), {"0": 0.5}, EXAMPLE, importance="l2")


def test_inherited_scores_follow_the_weights_slicing() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3))
    teacher = {"0.weight": torch.arange(8 * 3 * 5 * 5, dtype=torch.float32).view(8, 3, 5, 5)}
    got = inherited_scores(net, ["0"], teacher)["0"]
    # leading channels, centred kernel (as inherit_weights_)
    assert torch.equal(got, teacher["0.weight"][:4, :, 1:4, 1:4])


def test_compress_with_taylor_scores_of_the_teacher() -> None:
    arch = {"channels": [8, 16], "kernels": [3, 3], "strides": [1, 2]}
    teacher = build_compressed(Candidate("small_cnn", arch), num_classes=10, input_shape=(1, 8, 8))
    state = teacher.state_dict()
    scores = {k: torch.zeros_like(v) for k, v in state.items() if k.endswith("weight")}
    scores["features.0.0.weight"][[1, 3, 5, 7]] = 1.0
    candidate = Candidate("small_cnn", arch, {"features.0.0": LayerChoice(8, 8, 0.5)})
    student = build_compressed(
        candidate,
        num_classes=10,
        input_shape=(1, 8, 8),
        teacher_state=state,
        pruning_importance="taylor",
        pruning_scores=scores,
    )
    kept = student.features[0][0].weight
    assert torch.equal(kept, state["features.0.0.weight"][[1, 3, 5, 7]])
