"""ChannelMasks: zeroed input columns stand in for prune_ exactly, or not at all."""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import nn

from autocompress.compression.pruning import ChannelMasks, prune_, zeroed_columns
from autocompress.compression.sensitivity import flat_output
from autocompress.spaces.groups import output_layer


def _responsive(model: nn.Module, size: int) -> nn.Module:
    """An eval-mode model with BatchNorm statistics from its own inputs (at random init, a
    deep network's output barely depends on them) and random BatchNorm shifts: a removed
    channel's BatchNorm output is then far from zero, so a mask that only zeroed the leader's
    weights would show."""
    torch.manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = None  # a plain average over the batches below
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, 3, size, size))
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.bias.data.uniform_(-1, 1)
    return model.eval()


class Fire(nn.Module):
    """SqueezeNet's fire module: two branches concatenated along channels."""

    def __init__(self) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(3, 6, 1)
        self.left, self.right = nn.Conv2d(6, 5, 1), nn.Conv2d(6, 7, 3, padding=1)
        self.mix = nn.Conv2d(12, 8, 1)
        self.head = nn.Linear(8 * 8 * 8, 4)

    def forward(self, x):
        x = torch.relu(self.squeeze(x))
        x = torch.cat([torch.relu(self.left(x)), torch.relu(self.right(x))], dim=1)
        return self.head(torch.flatten(torch.relu(self.mix(x)), 1))


MODELS = {
    "mobilenet_v3_small": (lambda: torchvision.models.mobilenet_v3_small(num_classes=10), 32),
    "resnet18": (lambda: torchvision.models.resnet18(num_classes=10), 32),
    "fire": (Fire, 8),
}


@pytest.mark.parametrize("name", MODELS)
def test_zeroed_columns_give_the_pruned_networks_outputs(name):
    factory, size = MODELS[name]
    model = _responsive(factory(), size)
    x = torch.randn(4, 3, size, size)
    ignored = [output_layer(model, x[:1])]
    masks = ChannelMasks(model, x[:1], ignored=ignored)
    before = copy.deepcopy(model.state_dict())
    with torch.no_grad():
        reference = flat_output(model(x))
        scale = float(reference.norm())
        leaders, moved = list(masks._leaders), 0
        assert leaders
        for leader in leaders:
            for ratio in (0.25, 0.5):
                columns = masks.columns(leader, ratio)
                assert columns is not None, leader  # every group here keeps channels apart
                pruned = prune_(copy.deepcopy(model), {leader: ratio}, x[:1], ignored=ignored)
                with zeroed_columns(columns):
                    masked = flat_output(model(x))
                expected = flat_output(pruned(x))
                change = float((expected - reference).norm())
                moved += change > 1e-3 * scale
                # float rounding apart, the same outputs: far closer than pruning moved them
                gap = float((masked - expected).norm())
                assert gap <= 1e-3 * change + 1e-5 * scale, (leader, ratio)
    assert moved >= len(leaders)  # most removals matter (a few take only dead channels)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


class ChannelMean(nn.Module):
    """Scales features by their mean over channels: removing a channel changes that mean."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        x = x * x.mean(dim=1, keepdim=True)
        return self.fc(torch.relu(self.conv2(x)).mean(dim=(2, 3)))


class ChannelNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.norm = nn.GroupNorm(1, 8)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        x = self.norm(self.conv1(x))
        return self.fc(torch.relu(self.conv2(x)).mean(dim=(2, 3)))


@pytest.mark.parametrize("model", [ChannelMean(), ChannelNorm()], ids=["mean", "groupnorm"])
def test_a_group_that_mixes_channels_has_no_mask(model):
    x = torch.randn(2, 3, 8, 8)
    masks = ChannelMasks(model.eval(), x[:1], ignored=["fc"])
    assert masks.columns("conv1", 0.5) is None
    assert masks.columns("conv2", 0.5) is not None  # a spatial mean feeds fc: channels apart


def test_attention_heads_have_no_mask():
    vit = torchvision.models.VisionTransformer(16, 4, 2, 2, 32, 64, num_classes=3).eval()
    x = torch.randn(1, 3, 16, 16)
    masks = ChannelMasks(vit, x, ignored=[output_layer(vit, x)])
    assert masks._leaders
    # torchvision's attention runs its own matmuls on the MLP's output width
    assert all(masks.columns(leader, 0.5) is None for leader in masks._leaders)


def test_a_ratio_that_removes_nothing_has_no_columns():
    model = ChannelMean().eval()
    masks = ChannelMasks(model, torch.randn(1, 3, 8, 8), ignored=["fc"])
    assert masks.columns("conv2", 0.1) == []
