"""Weight inheritance: start a smaller network of a family from a trained bigger one.

A student that is narrower (fewer channels), shallower (fewer blocks) or uses smaller kernels
than the teacher takes the overlapping part of each teacher tensor, which is a much better
starting point for fine-tuning than a random init (the once-for-all / slimmable-network trick).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn


def inherit_weights_(student: nn.Module, teacher_state: Mapping[str, Tensor]) -> list[str]:
    """Copy the overlap of ``teacher_state`` into ``student``'s parameters and buffers, in place.

    For each key of ``student.state_dict()`` also in ``teacher_state`` with the same number of
    dims: every dim takes the leading slice ``[:n]`` (``n`` = the smaller size), except the two
    kernel dims of a 4-D conv weight, which are aligned on their centres: a smaller student
    kernel takes the teacher kernel's centre crop, a larger one gets the teacher kernel in its
    centre and zeros around it. Scalars (e.g. ``num_batches_tracked``) are copied as is.
    Returns the copied keys in ``state_dict`` order; other student tensors are left untouched.
    """
    copied = []
    with torch.no_grad():
        for key, target in student.state_dict().items():
            source = teacher_state.get(key)
            if source is None or source.dim() != target.dim():
                continue
            if target.dim() == 0:
                target.copy_(source)
                copied.append(key)
                continue
            target_idx, source_idx, widened = shared_slices(target.shape, source.shape)
            if any(s.stop - s.start <= 0 for s in target_idx):
                continue
            if widened:
                # A larger student kernel: the teacher kernel goes in the centre, the border
                # of the inherited channels starts at zero so it does not change the output.
                target[target_idx[:2]].zero_()
            target[target_idx].copy_(source[source_idx])
            copied.append(key)
    return copied


def scatter_grads_(teacher: nn.Module, student: nn.Module) -> list[str]:
    """Add each student parameter's ``.grad`` into the slice of the teacher's that it came from.

    The adjoint of :func:`inherit_weights_`'s slicing (for the weight-sharing supernet): where
    ``inherit_weights_`` copied ``teacher[source] -> student[target]``, this does
    ``teacher.grad[source] += student.grad[target]``, so leading channels and kernel centres get
    the gradient, and the zero border of a widened student kernel maps to nothing. It
    accumulates, so the gradients of several sub-networks sum before one optimizer step; a
    teacher parameter without a ``.grad`` starts from zeros. Only parameters move (buffers have
    no gradient); a student parameter without a gradient or without a same-dims teacher
    parameter of the same name is skipped. Valid for students that were not pruned after
    inheriting (pruning keeps channels by norm, not leading ones). Returns the updated names.
    """
    teacher_params = dict(teacher.named_parameters())
    updated = []
    with torch.no_grad():
        for name, param in student.named_parameters():
            target = teacher_params.get(name)
            if param.grad is None or target is None or target.dim() != param.dim():
                continue
            student_idx, teacher_idx, _ = shared_slices(param.shape, target.shape)
            if any(s.stop - s.start <= 0 for s in student_idx):
                continue
            if target.grad is None:
                target.grad = torch.zeros_like(target)
            # Basic slicing gives a view, so add_ lands in the teacher's gradient.
            target.grad[teacher_idx].add_(param.grad[student_idx].to(target.grad))
            updated.append(name)
    return updated


def shared_slices(
    target_shape: torch.Size, source_shape: torch.Size
) -> tuple[tuple[slice, ...], tuple[slice, ...], bool]:
    """The slices of a target and a source tensor that inheritance matches (leading channels,
    centred kernels), and whether a kernel dim of the target is the larger."""
    target_idx, source_idx = [], []
    widened = False
    for dim, (t, s) in enumerate(zip(target_shape, source_shape, strict=True)):
        n = min(t, s)
        if len(target_shape) == 4 and dim >= 2:
            # Centre alignment; with an even size difference this is the exact centre.
            target_start, source_start = (t - n) // 2, (s - n) // 2
            widened = widened or t > s
        else:
            target_start = source_start = 0
        target_idx.append(slice(target_start, target_start + n))
        source_idx.append(slice(source_start, source_start + n))
    return tuple(target_idx), tuple(source_idx), widened
