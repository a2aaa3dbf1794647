"""Knowledge distillation loss (Hinton et al., 2015) for fine-tuning compressed students."""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor


def kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    targets: Tensor,
    *,
    alpha: float,
    temperature: float,
) -> Tensor:
    """``alpha * T^2 * KL(p_teacher || p_student) + (1 - alpha) * CE(student, targets)``.

    Both distributions are softmaxes at temperature ``T``; the KL term is averaged over the batch
    (``batchmean``). The ``T^2`` factor keeps the soft-target gradients on the same scale as the
    hard-label ones when ``T`` changes. The teacher is detached, so only the student gets
    gradients. ``targets`` are class indices (or class probabilities, as ``F.cross_entropy``
    accepts).
    """
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0 <= alpha <= 1:
        raise ValueError(
            f"The 'alpha' parameter of kd_loss must be a number in [0, 1]. Got {alpha!r} instead."
        )
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, int | float)
        or not (temperature > 0 and math.isfinite(temperature))
    ):
        raise ValueError(
            "The 'temperature' parameter of kd_loss must be a finite number > 0. "
            f"Got {temperature!r} instead."
        )
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            "The 'teacher_logits' parameter of kd_loss must have the shape of 'student_logits' "
            f"{tuple(student_logits.shape)}. Got {tuple(teacher_logits.shape)} instead."
        )
    hard = F.cross_entropy(student_logits, targets)
    if alpha == 0:
        return hard
    soft = F.kl_div(
        F.log_softmax(student_logits / temperature, dim=1),
        F.log_softmax(teacher_logits.detach() / temperature, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    return alpha * temperature**2 * soft + (1 - alpha) * hard
