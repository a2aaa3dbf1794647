import pytest
import torch
import torch.nn.functional as F
from torch import nn

from autocompress.compression import (
    count_parameters,
    prunable_layers,
    prune_,
    quantize_,
    quantized_layers,
)


class SmallCNN(nn.Module):
    def __init__(self, c1: int = 8, c2: int = 16) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, c1, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c2)
        self.fc = nn.Linear(c2, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(torch.flatten(x.mean(dim=(2, 3)), 1))


def cnn_params(c1: int, c2: int) -> int:
    return 3 * c1 * 9 + 2 * c1 + c1 * c2 * 9 + 2 * c2 + c2 * 10 + 10


class MLP(nn.Module):
    def __init__(self, h1: int = 32, h2: int = 16) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(20, h1), nn.Linear(h1, h2), nn.Linear(h2, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def mlp_params(h1: int, h2: int) -> int:
    return 20 * h1 + h1 + h1 * h2 + h2 + h2 * 5 + 5


class InvertedResidual(nn.Module):
    def __init__(self, c: int, hidden: int) -> None:
        super().__init__()
        self.expand = nn.Conv2d(c, hidden, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.dw = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False)
        self.bn2 = nn.BatchNorm2d(hidden)
        self.project = nn.Conv2d(hidden, c, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self.bn1(self.expand(x)))
        y = F.relu6(self.bn2(self.dw(y)))
        return x + self.bn3(self.project(y))


class TinyMobileNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.blocks = nn.Sequential(InvertedResidual(8, 16), InvertedResidual(8, 24))
        self.head = nn.Conv2d(8, 16, 1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(F.relu6(self.bn(self.stem(x))))
        return self.fc(F.relu6(self.head(x)).mean(dim=(2, 3)))


def mobilenet_params(s: int, e1: int, e2: int, h: int) -> int:
    def block(e: int) -> int:
        return s * e + 2 * e + e * 9 + 2 * e + e * s + 2 * s

    return 3 * s * 9 + 2 * s + block(e1) + block(e2) + s * h + h + h * 10 + 10


IMG = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
VEC = torch.randn(4, 20, generator=torch.Generator().manual_seed(0))


def test_count_parameters_matches_hand_formulas() -> None:
    assert count_parameters(SmallCNN()) == cnn_params(8, 16)
    assert count_parameters(MLP()) == mlp_params(32, 16)
    assert count_parameters(TinyMobileNet()) == mobilenet_params(8, 16, 24, 16)


def test_prunable_layers_lists_group_leaders_in_module_order() -> None:
    assert prunable_layers(SmallCNN(), IMG, ignored=["fc"]) == ["conv1", "conv2"]
    assert prunable_layers(MLP(), VEC, ignored=["fc3"]) == ["fc1", "fc2"]
    # stem + both projects are coupled through the residual adds: one group led by "stem";
    # depthwise convs follow their expand conv and never lead.
    mobilenet = prunable_layers(TinyMobileNet(), IMG, ignored=["fc"])
    assert mobilenet == ["stem", "blocks.0.expand", "blocks.1.expand", "head"]


def test_layers_feeding_an_ignored_output_are_skipped() -> None:
    # ignoring a residual member removes the whole residual group
    names = prunable_layers(TinyMobileNet(), IMG, ignored=["fc", "blocks.1.project"])
    assert names == ["blocks.0.expand", "blocks.1.expand", "head"]
    assert prunable_layers(MLP(), VEC, ignored=["fc2", "fc3"]) == ["fc1"]


def test_prune_cnn_gives_exact_shapes_and_parameter_count() -> None:
    model = SmallCNN()
    assert prune_(model, {"conv1": 0.5, "conv2": 0.3}, IMG, ignored=["fc"]) is model
    c1, c2 = 8 - 4, 16 - 4  # floor(8 * 0.5), floor(16 * 0.3)
    assert model.conv1.weight.shape == (c1, 3, 3, 3)
    assert model.bn1.running_mean.shape == (c1,)
    assert model.conv2.weight.shape == (c2, c1, 3, 3)
    assert model.fc.weight.shape == (10, c2)
    assert count_parameters(model) == cnn_params(c1, c2)
    assert model(IMG).shape == (2, 10)


def test_prune_mlp_gives_exact_parameter_count() -> None:
    model = MLP()
    prune_(model, {"fc1": 0.25, "fc2": 0.9}, VEC, ignored=["fc3"])
    h1, h2 = 32 - 8, 16 - 14
    assert model.fc2.weight.shape == (h2, h1)
    assert count_parameters(model) == mlp_params(h1, h2)
    assert model(VEC).shape == (4, 5)


def test_prune_mobilenet_shrinks_residual_and_depthwise_partners_together() -> None:
    model = TinyMobileNet()
    ratios = {"stem": 0.5, "blocks.0.expand": 0.5, "blocks.1.expand": 0.25, "head": 0.3}
    prune_(model, ratios, IMG, ignored=["fc"])
    s, e1, e2, h = 4, 8, 18, 12
    for block in model.blocks:
        assert block.project.out_channels == s and block.expand.in_channels == s
        assert block.dw.groups == block.dw.out_channels == block.expand.out_channels
    assert model.blocks[1].dw.weight.shape == (e2, 1, 3, 3)
    assert count_parameters(model) == mobilenet_params(s, e1, e2, h)
    assert model(IMG).shape == (2, 10)


def test_kept_channels_are_the_highest_l1_ones() -> None:
    model = SmallCNN()
    with torch.no_grad():
        # channel c gets L1 norm proportional to factor[c]: a known, shuffled ranking
        factor = torch.tensor([5.0, 1.0, 7.0, 3.0, 8.0, 2.0, 6.0, 4.0])
        model.conv1.weight.copy_(torch.ones_like(model.conv1.weight) * factor.view(-1, 1, 1, 1))
        model.bn1.weight.copy_(torch.arange(8.0))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    prune_(model, {"conv1": 0.5}, IMG, ignored=["fc"])
    kept = [0, 2, 4, 6]  # factors 5, 7, 8, 6: the four largest, in original order
    assert torch.equal(model.conv1.weight, before["conv1.weight"][kept])
    assert torch.equal(model.bn1.weight, before["bn1.weight"][kept])
    assert torch.equal(model.bn1.running_var, before["bn1.running_var"][kept])
    assert torch.equal(model.conv2.weight, before["conv2.weight"][:, kept])


def test_pruned_shapes_depend_only_on_architecture_and_ratios() -> None:
    ratios = {"stem": 0.4, "blocks.0.expand": 0.6, "head": 0.5}
    shapes = []
    for seed in range(2):
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = TinyMobileNet()
        assert prunable_layers(model, IMG, ignored=["fc"]) == [
            "stem",
            "blocks.0.expand",
            "blocks.1.expand",
            "head",
        ]
        prune_(model, ratios, IMG, ignored=["fc"])
        shapes.append({k: tuple(v.shape) for k, v in model.state_dict().items()})
    assert shapes[0] == shapes[1]


def test_floor_is_robust_to_float_rounding() -> None:
    model = nn.Sequential(nn.Linear(4, 100), nn.ReLU(), nn.Linear(100, 3))
    prune_(model, {"0": 0.29}, torch.randn(2, 4), ignored=["2"])
    assert model[0].out_features == 100 - 29  # 100 * 0.29 == 28.999999999999996 in floats


@pytest.mark.parametrize("train", [True, False])
def test_mode_and_frozen_flags_are_left_unchanged(train: bool) -> None:
    model = SmallCNN().train(train)
    model.bn2.eval()  # a mixed state must survive too
    model.conv2.weight.requires_grad_(False)
    running_mean = model.bn1.running_mean.clone()
    prunable_layers(model, IMG, ignored=["fc"])
    assert torch.equal(model.bn1.running_mean, running_mean)  # tracing must not update stats
    prune_(model, {"conv2": 0.5}, IMG, ignored=["fc"])
    assert model.training is train and model.bn1.training is train and not model.bn2.training
    assert not model.conv2.weight.requires_grad and model.conv1.weight.requires_grad


def test_zero_ratio_changes_nothing_and_tuple_inputs_work() -> None:
    model = SmallCNN()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    prune_(model, {"conv1": 0.0}, (IMG,), ignored=["fc"])
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_prune_then_quantize_and_quantize_then_prune() -> None:
    model = TinyMobileNet()
    prune_(model, {"blocks.0.expand": 0.5}, IMG, ignored=["fc"])
    quantize_(model, {"blocks.0.dw": (4, 8), "stem": (8, 8)})
    assert model(IMG).shape == (2, 10)
    prune_(model, {"stem": 0.5}, IMG, ignored=["fc"])
    assert model.stem.out_channels == 4 and quantized_layers(model)["stem"] == (8, 8)
    assert model(IMG).shape == (2, 10)


@pytest.mark.parametrize(
    ("ratios", "ignored", "needle"),
    [
        ({"nope": 0.5}, ["fc"], "nope"),
        ({"bn1": 0.5}, ["fc"], "bn1"),
        ({"fc": 0.5}, ["fc"], "'fc'"),
        ({"conv1": 1.0}, ["fc"], "conv1"),
        ({"conv1": -0.1}, ["fc"], "conv1"),
        ({"conv1": "0.5"}, ["fc"], "conv1"),
        ({"conv1": True}, ["fc"], "conv1"),
        ({"conv1": 0.5}, ["missing"], "missing"),
        ({"conv1": 0.5}, "fc", "ignored"),
    ],
)
def test_prune_rejects_bad_input_without_touching_the_model(ratios, ignored, needle: str) -> None:
    model = SmallCNN()
    with pytest.raises(ValueError, match=needle):
        prune_(model, {"conv2": 0.5, **ratios}, IMG, ignored=ignored)
    assert count_parameters(model) == cnn_params(8, 16)


def test_non_leader_members_are_rejected() -> None:
    model = TinyMobileNet()
    for name in ("blocks.0.project", "blocks.0.dw"):
        with pytest.raises(ValueError, match=name):
            prune_(model, {name: 0.5}, IMG, ignored=["fc"])
