import copy
import threading

import pytest
import torch
from torch import nn

from autocompress.compression import build_compressed
from autocompress.compression.feature_distillation import (
    FeatureAdapter,
    feature_distiller,
    match_layers,
)
from autocompress.spaces import Candidate, LayerChoice

SHAPES = {"num_classes": 10, "input_shape": (1, 8, 8)}
ARCH = {"channels": [16, 16], "kernels": [3, 3], "strides": [1, 2]}


def network(prune: float = 0.0) -> nn.Module:
    layers = {"features.0.0": LayerChoice(8, 8, prune)} if prune else {}
    with torch.random.fork_rng():
        torch.manual_seed(0)
        teacher = build_compressed(Candidate("small_cnn", ARCH, {}), **SHAPES)
        return build_compressed(
            Candidate("small_cnn", ARCH, layers), teacher_state=teacher.state_dict(), **SHAPES
        )


def example() -> torch.Tensor:
    return torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(1))


def test_the_loss_is_zero_when_the_student_is_its_teacher():
    teacher = network().eval()
    student = copy.deepcopy(teacher)
    globs = ["features.*.2", "pool"]  # 4D features (1x1 conv adapters) and 2D (linear)
    with feature_distiller(student, teacher, globs, weight=3.0, example=example()) as distiller:
        assert distiller.layers == ["features.0.2", "features.1.2", "pool"]
        student(example())
        teacher(example())
        assert float(distiller.loss().detach()) == 0.0


def test_a_pruned_student_gets_adapters_to_the_teacher_channels_and_a_gradient():
    teacher, student = network().eval(), network(prune=0.5).train()
    x = example()
    with feature_distiller(student, teacher, ["features.0.*"], weight=1.0, example=x) as distiller:
        adapter = distiller.adapters["features/0/0"]
        assert tuple(adapter.weight.shape) == (16, 8)
        student(x)
        with torch.no_grad():
            teacher(x)
        loss = distiller.loss()
        assert float(loss.detach()) > 0
        loss.backward()
    assert adapter.weight.grad is not None and adapter.weight.grad.abs().sum() > 0
    assert student.get_submodule("features.0.0").weight.grad is not None
    # The hooks are gone after the block: the networks run as before.
    distiller.student_features.clear()
    student(x)
    assert distiller.student_features == {}


def test_adapters_start_as_the_identity_without_random_numbers():
    state = torch.random.get_rng_state()
    adapter = FeatureAdapter(4, 4)
    assert torch.equal(torch.random.get_rng_state(), state)
    x = torch.randn(2, 4, 3, 3)
    assert torch.equal(adapter(x), x)
    assert torch.equal(FeatureAdapter(4, 4)(x[:, :, 0, 0]), x[:, :, 0, 0])


def test_a_glob_that_matches_no_layer_names_the_field():
    with pytest.raises(ValueError, match=r"'train.feature_kd.layers'.*\['blocks\.\*'\]"):
        match_layers(network(), ["features.0.0", "blocks.*"])
    with pytest.raises(ValueError, match="'train.feature_kd.layers'"):
        feature_distiller(network(), network(), ["nope"], weight=1.0, example=example())


def test_the_teacher_records_only_the_forwards_of_its_own_thread():
    teacher, student = network().eval(), network()
    with feature_distiller(student, teacher, ["pool"], weight=1.0, example=example()) as d:
        other = threading.Thread(target=lambda: teacher(example()))
        other.start()
        other.join()
        assert d.teacher_features == {}
