import torch
from torch import nn

from autocompress.compression import inherit_weights_


class Net(nn.Module):
    def __init__(self, width: int = 8, kernel: int = 3, blocks: int = 2) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, kernel, padding=kernel // 2)
        self.bn = nn.BatchNorm2d(width)
        self.blocks = nn.Sequential(*(nn.Conv2d(width, width, 3, padding=1) for _ in range(blocks)))
        self.fc = nn.Linear(width, 10)


def _randomised(model: nn.Module, seed: int) -> nn.Module:
    """Random values everywhere, BN running stats included, so copies are detectable."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.randn(tensor.shape, generator=g))
    model.bn.num_batches_tracked.fill_(7)
    return model


def test_width_halved_student_gets_the_leading_channels() -> None:
    teacher = _randomised(Net(width=8), 0)
    student = _randomised(Net(width=4), 1)
    copied = inherit_weights_(student, teacher.state_dict())
    assert copied == list(student.state_dict())
    assert torch.equal(student.stem.weight, teacher.stem.weight[:4])
    assert torch.equal(student.stem.bias, teacher.stem.bias[:4])
    assert torch.equal(student.blocks[1].weight, teacher.blocks[1].weight[:4, :4])
    assert torch.equal(student.fc.weight, teacher.fc.weight[:, :4])
    assert torch.equal(student.fc.bias, teacher.fc.bias)


def test_bn_running_stats_and_counters_are_copied() -> None:
    teacher = _randomised(Net(width=8), 0)
    student = Net(width=6)
    inherit_weights_(student, teacher.state_dict())
    assert torch.equal(student.bn.running_mean, teacher.bn.running_mean[:6])
    assert torch.equal(student.bn.running_var, teacher.bn.running_var[:6])
    assert student.bn.num_batches_tracked.item() == 7


def test_smaller_kernel_takes_the_centre() -> None:
    teacher = _randomised(Net(kernel=5), 0)
    student = Net(kernel=3)
    inherit_weights_(student, teacher.state_dict())
    assert torch.equal(student.stem.weight, teacher.stem.weight[:, :, 1:4, 1:4])


def test_larger_kernel_gets_the_teacher_in_the_centre_and_zeros_around() -> None:
    teacher = _randomised(Net(kernel=3), 0)
    student = Net(kernel=5)
    inherit_weights_(student, teacher.state_dict())
    w = student.stem.weight
    assert torch.equal(w[:, :, 1:4, 1:4], teacher.stem.weight)
    border = torch.ones(5, 5, dtype=torch.bool)
    border[1:4, 1:4] = False
    assert torch.count_nonzero(w[:, :, border]) == 0
    # same output as the teacher: a zero-padded kernel computes the same convolution
    x = torch.randn(1, 3, 6, 6, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(student.stem(x), teacher.stem(x), atol=1e-5)


def test_student_with_fewer_blocks_copies_the_blocks_present() -> None:
    teacher = _randomised(Net(blocks=3), 0)
    student = Net(blocks=2)
    copied = inherit_weights_(student, teacher.state_dict())
    assert not any(key.startswith("blocks.2") for key in copied)
    for i in range(2):
        assert torch.equal(student.blocks[i].weight, teacher.blocks[i].weight)


def test_missing_or_differently_shaped_keys_are_left_untouched() -> None:
    student = _randomised(Net(blocks=3), 1)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    teacher_state = dict(_randomised(Net(blocks=2), 0).state_dict())
    teacher_state["fc.weight"] = torch.zeros(10)  # wrong number of dims
    copied = inherit_weights_(student, teacher_state)
    for key in ("blocks.2.weight", "blocks.2.bias", "fc.weight"):
        assert key not in copied
        assert torch.equal(student.state_dict()[key], before[key])
    assert "fc.bias" in copied


# --- scatter_grads_: the adjoint of the inheritance slicing ------------------------------------


class RunnableNet(Net):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.stem(x)))
        return self.fc(self.blocks(h).mean(dim=(2, 3)))


def _sliced_from(student: nn.Module, teacher: nn.Module) -> dict[str, torch.Tensor]:
    """The student's parameters as differentiable functions of the teacher's: the slices that
    inherit_weights_ copies, with zeros around a widened kernel."""
    from autocompress.compression.inherit import shared_slices

    teacher_params = dict(teacher.named_parameters())
    params = {}
    for name, param in student.named_parameters():
        target_idx, source_idx, _ = shared_slices(param.shape, teacher_params[name].shape)
        value = torch.zeros_like(param)
        value[target_idx] = teacher_params[name][source_idx]
        params[name] = value
    return params


def _weighted_loss(out: torch.Tensor) -> torch.Tensor:
    return (out.square() * torch.linspace(0.5, 2.0, out.shape[1])).sum()


def test_scatter_grads_is_the_exact_adjoint_of_inheriting() -> None:
    from torch.func import functional_call

    from autocompress.compression.inherit import scatter_grads_

    teacher = _randomised(RunnableNet(width=8, kernel=5, blocks=3), 0).train()
    x = torch.randn(4, 3, 6, 6, generator=torch.Generator().manual_seed(3))
    # narrower + smaller kernel + fewer blocks, and narrower + wider kernel
    for student in (RunnableNet(width=4, kernel=3, blocks=2), RunnableNet(width=6, kernel=7)):
        inherit_weights_(student, teacher.state_dict())
        # Autograd through the slicing gives the true gradient w.r.t. the teacher...
        teacher.zero_grad(set_to_none=True)
        _weighted_loss(functional_call(student, _sliced_from(student, teacher), (x,))).backward()
        expected = {n: p.grad.clone() for n, p in teacher.named_parameters() if p.grad is not None}
        # ...which scatter_grads_ must rebuild from the student's own gradients.
        teacher.zero_grad(set_to_none=True)
        student.zero_grad(set_to_none=True)
        _weighted_loss(student(x)).backward()
        updated = scatter_grads_(teacher, student)
        assert sorted(updated) == sorted(expected)
        teacher_params = dict(teacher.named_parameters())
        for name, grad in expected.items():
            assert torch.allclose(teacher_params[name].grad, grad, rtol=1e-5, atol=1e-6), name
        assert teacher.blocks[2].weight.grad is None  # a block the student lacks gets nothing


def test_scatter_grads_satisfies_the_dot_product_identity_and_accumulates() -> None:
    from autocompress.compression.inherit import scatter_grads_

    # <inherit(T), S> == <T, scatter(S)> for random T and S: the definition of an adjoint.
    teacher = _randomised(RunnableNet(width=8, kernel=3), 0)
    student = RunnableNet(width=5, kernel=5)
    inherit_weights_(student, teacher.state_dict())
    g = torch.Generator().manual_seed(4)
    for param in student.parameters():
        param.grad = torch.randn(param.shape, generator=g)
    lhs = sum((p * p.grad).sum() for p in student.parameters())
    scatter_grads_(teacher, student)
    rhs = sum((p * p.grad).sum() for p in teacher.parameters())
    assert torch.allclose(lhs, rhs, rtol=1e-5)
    first = [p.grad.clone() for p in teacher.parameters()]
    scatter_grads_(teacher, student)  # a second sub-network's gradient adds on top
    for param, before in zip(teacher.parameters(), first, strict=True):
        assert torch.allclose(param.grad, 2 * before)
