import math

import pytest
import torch
import torch.nn.functional as F

from autocompress.compression import kd_loss


def _logits(seed: int, shape: tuple[int, int] = (6, 5)) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


TARGETS = torch.tensor([0, 4, 2, 1, 3, 0])


def test_alpha_zero_is_plain_cross_entropy() -> None:
    student, teacher = _logits(0), _logits(1)
    loss = kd_loss(student, teacher, TARGETS, alpha=0.0, temperature=4.0)
    assert torch.equal(loss, F.cross_entropy(student, TARGETS))


def test_identical_logits_have_no_distillation_term() -> None:
    logits = _logits(0)
    loss = kd_loss(logits, logits.clone(), TARGETS, alpha=1.0, temperature=3.0)
    assert loss.item() == pytest.approx(0.0, abs=1e-12)


def test_value_matches_a_hand_computation() -> None:
    student = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]], dtype=torch.float64)
    teacher = torch.tensor([[1.0, 1.0, 0.0], [-2.0, 0.5, 2.5]], dtype=torch.float64)
    targets = torch.tensor([0, 2])
    alpha, t = 0.7, 2.0

    def softmax(row: list[float]) -> list[float]:
        z = sum(math.exp(v) for v in row)
        return [math.exp(v) / z for v in row]

    kl = ce = 0.0
    for s_row, t_row, y in zip(student.tolist(), teacher.tolist(), targets.tolist(), strict=True):
        p_t = softmax([v / t for v in t_row])
        p_s = softmax([v / t for v in s_row])
        kl += sum(pt * math.log(pt / ps) for pt, ps in zip(p_t, p_s, strict=True))
        ce -= math.log(softmax(s_row)[y])
    expected = alpha * t**2 * kl / 2 + (1 - alpha) * ce / 2

    loss = kd_loss(student, teacher, targets, alpha=alpha, temperature=t)
    assert loss.item() == pytest.approx(expected, rel=1e-12)


def test_gradient_reaches_the_student_only() -> None:
    student = _logits(0).requires_grad_(True)
    teacher = _logits(1).requires_grad_(True)
    kd_loss(student, teacher, TARGETS, alpha=0.5, temperature=2.0).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"alpha": -0.1, "temperature": 1.0}, "alpha"),
        ({"alpha": 1.5, "temperature": 1.0}, "alpha"),
        ({"alpha": 0.5, "temperature": 0.0}, "temperature"),
        ({"alpha": 0.5, "temperature": -2.0}, "temperature"),
        ({"alpha": 0.5, "temperature": float("inf")}, "temperature"),
    ],
)
def test_bad_parameters_raise(kwargs: dict, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        kd_loss(_logits(0), _logits(1), TARGETS, **kwargs)


def test_mismatched_logit_shapes_raise() -> None:
    with pytest.raises(ValueError, match="teacher_logits"):
        kd_loss(_logits(0), _logits(1, (6, 4)), TARGETS, alpha=0.5, temperature=1.0)
