import optuna
import pytest
import torch
from pydantic import ValidationError

from autocompress.compression.apply import build_compressed
from autocompress.spaces import (
    JointSearchSpace,
    SpaceConfig,
    build_model,
    create_family,
    list_families,
)

SHAPES = {
    "mlp": (1, 8, 8),
    "small_cnn": (1, 8, 8),
    "mobilenetv2": (3, 16, 16),
    "model": (3, 32, 32),
}
# Families whose space.arch has no defaults: a user's network needs its factory.
ARCHS = {
    "model": {
        "factory": "torchvision.models:mobilenet_v3_small",
        "kwargs": {"num_classes": 10},
        "droppable_blocks": "auto",
    }
}


def suggest(space, seed):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    return space.suggest(study.ask())


@pytest.mark.parametrize("family", list_families())
def test_every_family_builds_suggests_and_compresses(family):
    shape = SHAPES[family]
    space = JointSearchSpace(
        SpaceConfig(family=family, arch=ARCHS.get(family, {}), prune_ratios=[0.0, 0.5]),
        num_classes=10,
        input_shape=shape,
    )
    teacher = build_model(space.teacher(), num_classes=10, input_shape=shape)
    teacher_params = sum(p.numel() for p in teacher.parameters())
    for seed in range(4):
        cand = suggest(space, seed)
        assert cand.family == family
        model = build_compressed(
            cand, num_classes=10, input_shape=shape, teacher_state=teacher.state_dict()
        )
        assert model(torch.randn(2, *shape)).shape == (2, 10)
        # Every point of the space is a sub-network of the teacher.
        assert sum(p.numel() for p in model.parameters()) <= teacher_params
        # Every Conv2d/Linear got bits; quant layers carry them.
        for name, choice in cand.layers.items():
            layer = model.get_submodule(name)
            assert (layer.w_bits, layer.a_bits) == (choice.w_bits, choice.a_bits)


def test_layer_dimensions_are_conditional_on_the_architecture():
    space = JointSearchSpace(
        SpaceConfig(family="small_cnn", arch={"depths": [1, 3]}),
        num_classes=10,
        input_shape=(1, 8, 8),
    )
    seen = set()
    for seed in range(12):
        cand = suggest(space, seed)
        depth = len(cand.arch["channels"])
        assert len(cand.layers) == depth + 1  # convs + classifier
        assert ("features.2.0" in cand.layers) == (depth == 3)
        seen.add(depth)
    assert seen == {1, 3}


def test_layer_dimensions_are_traced_once_per_architecture(monkeypatch):
    from autocompress.spaces import groups

    traced = []
    real = groups.build_dependency_graph
    monkeypatch.setattr(
        groups, "build_dependency_graph", lambda *a, **k: traced.append(1) or real(*a, **k)
    )
    space = JointSearchSpace(
        SpaceConfig(family="small_cnn", arch={"depths": [1, 3]}),
        num_classes=10,
        input_shape=(1, 8, 8),
    )
    archs = set()
    for seed in range(12):
        candidate = suggest(space, seed)
        archs.add(repr(sorted(candidate.arch.items())))
        # The cached dimensions are what a fresh trace finds, and callers get their own lists.
        layers, prunable = space.layer_dimensions(candidate.arch)
        assert layers == list(candidate.layers)
        layers.append("mutated")
    assert len(traced) == len(archs) < 12


def test_classifier_and_depthwise_layers_are_never_pruning_dimensions():
    space = JointSearchSpace(
        SpaceConfig(family="mobilenetv2", prune_ratios=[0.25, 0.5]),
        num_classes=10,
        input_shape=(3, 16, 16),
    )
    cand = suggest(space, 0)
    assert cand.layers["classifier"].prune_ratio == 0.0
    depthwise = [n for n in cand.layers if n.endswith("conv.1.0")]
    assert depthwise and all(cand.layers[n].prune_ratio == 0.0 for n in depthwise)
    assert any(c.prune_ratio > 0 for c in cand.layers.values())


def test_pruning_really_shrinks_the_candidate():
    space = JointSearchSpace(
        SpaceConfig(family="small_cnn", prune_ratios=[0.0]), num_classes=10, input_shape=(1, 8, 8)
    )
    cand = suggest(space, 1)
    pruned = type(cand)(
        cand.family,
        cand.arch,
        {
            n: type(c)(c.w_bits, c.a_bits, 0.5 if n == "features.0.0" else 0.0)
            for n, c in cand.layers.items()
        },
    )
    full = build_compressed(cand, num_classes=10, input_shape=(1, 8, 8))
    half = build_compressed(pruned, num_classes=10, input_shape=(1, 8, 8))
    c0 = cand.arch["channels"][0]
    assert half.get_submodule("features.0.0").out_channels == c0 - c0 // 2
    assert half.get_submodule("features.1.0").in_channels == c0 - c0 // 2
    assert sum(p.numel() for p in half.parameters()) < sum(p.numel() for p in full.parameters())


def test_teacher_is_the_largest_architecture():
    fam = create_family("mobilenetv2", {"width_mults": [0.5, 1.0], "kernel_sizes": [3, 7]})
    arch = fam.largest_arch()
    assert arch["width_mult"] == 1.0
    assert {s["k"] for s in arch["stages"]} == {7}


def test_space_config_errors_name_the_field():
    with pytest.raises(ValidationError, match="w_bits"):
        SpaceConfig(w_bits=[1, 4])
    with pytest.raises(ValidationError, match="prune_ratios"):
        SpaceConfig(prune_ratios=[1.0])
    with pytest.raises(ValidationError, match="family"):
        SpaceConfig(family="resnet9000")
    with pytest.raises(ValidationError, match="strides"):
        create_family("small_cnn", {"depths": [4], "strides": [1, 2]})
