"""Feature distillation (FitNets, Romero et al., 2015): the student matches the teacher's
intermediate outputs, not only its logits.

Forward hooks capture the outputs of the matched layers in both networks; a pruned student has
fewer channels than its teacher, so each layer gets an adapter (a 1x1 convolution, or a linear
map over the last dim) from the student's channels to the teacher's, trained with the student.
"""

from __future__ import annotations

import fnmatch
import threading
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def match_layers(
    model: nn.Module, patterns: Sequence[str], *, field: str = "train.feature_kd.layers"
) -> list[str]:
    """Names of the modules of ``model`` (as in ``named_modules()``, the root excluded) that
    match any of the glob ``patterns`` (``fnmatch``, case-sensitive), in module order. A pattern
    that matches nothing is an error naming ``field``."""
    names = [name for name, _ in model.named_modules() if name]
    unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(n, p) for n in names)]
    if unmatched:
        shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
        raise ValueError(
            f"The {field!r} field must hold globs that match layers of the network ({shown}). "
            f"Got {unmatched!r}, which match none."
        )
    return [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]


class FeatureAdapter(nn.Module):
    """A learned map from ``in_channels`` student channels to ``out_channels`` teacher
    channels: a 1x1 convolution on ``(N, C, H, W)`` features, a linear map over the last dim
    otherwise. It starts as the identity on the first ``min(in, out)`` channels (so a student
    equal to its teacher starts at loss 0), without drawing random numbers (the fine-tune's
    random stream stays as it is without feature distillation)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.eye(out_channels, in_channels))
        self.bias = nn.Parameter(torch.zeros(out_channels))

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 4:
            return F.conv2d(x, self.weight[:, :, None, None], self.bias)
        return F.linear(x, self.weight, self.bias)


def _channels(feature: Tensor) -> int:
    return feature.shape[1] if feature.dim() == 4 else feature.shape[-1]


class FeatureDistiller(nn.Module):
    """``weight`` x the mean over ``layers`` of ``MSE(adapter(student feature), teacher
    feature)``, for the student's last forward and the teacher's last forward on the same
    batch (:meth:`loss`).

    Use it as a context manager: the hooks are registered on entry and removed on exit.
    ``layers``: module names present in both networks; ``example``: an input of the networks,
    run once in eval mode without gradients to size the adapters (which live on its device).
    The teacher's hooks record only the forwards of the thread that created the distiller, so
    concurrent fine-tunes may share one teacher. Its parameters (the adapters) train with the
    student's.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        layers: Sequence[str],
        *,
        weight: float,
        example: Tensor,
    ) -> None:
        super().__init__()
        self.student, self.teacher = [student], [teacher]  # a list: not submodules of self
        self.layers = list(layers)
        self.weight = weight
        self._thread = threading.get_ident()
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self.student_features: dict[str, Tensor] = {}
        self.teacher_features: dict[str, Tensor] = {}
        with self, torch.no_grad():
            was_training = student.training
            student.eval()
            try:
                student(example)
                teacher(example)
            finally:
                student.train(was_training)
        self.adapters = nn.ModuleDict()
        self._device = example.device
        for name in self.layers:
            ours, theirs = self.student_features[name], self.teacher_features[name]
            if not isinstance(ours, Tensor) or not isinstance(theirs, Tensor):
                raise ValueError(
                    f"Layer {name!r} must return a tensor for feature distillation. Got "
                    f"{type(ours).__name__} instead."
                )
            if ours.dim() != theirs.dim() or _spatial(ours) != _spatial(theirs):
                raise ValueError(
                    f"Layer {name!r} of the student gives features of shape "
                    f"{tuple(ours.shape)} and the teacher's {tuple(theirs.shape)}: feature "
                    "distillation needs the same shape apart from the channels."
                )
            adapter = FeatureAdapter(_channels(ours), _channels(theirs)).to(example.device)
            self.adapters[name.replace(".", "/")] = adapter  # ModuleDict keys may not hold "."
        self.student_features.clear()
        self.teacher_features.clear()

    def __enter__(self) -> FeatureDistiller:
        modules = [dict(net[0].named_modules()) for net in (self.student, self.teacher)]
        for name in self.layers:
            for store, named in zip(
                (self.student_features, self.teacher_features), modules, strict=True
            ):
                self._handles.append(named[name].register_forward_hook(self._recorder(store, name)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _recorder(self, store: dict[str, Tensor], name: str):
        def record(module: nn.Module, args: tuple, output: Tensor) -> None:
            if threading.get_ident() == self._thread:
                store[name] = output

        return record

    def loss(self) -> Tensor:
        """The weighted mean feature MSE of the last student and teacher forwards (0 when no
        layer is matched: a smaller student may lack all of them)."""
        if not self.layers:
            return torch.zeros((), device=self._device)
        terms = [
            F.mse_loss(
                self.adapters[name.replace(".", "/")](self.student_features[name]),
                self.teacher_features[name].detach(),
            )
            for name in self.layers
        ]
        return self.weight * torch.stack(terms).mean()


def _spatial(feature: Tensor) -> tuple[int, ...]:
    shape = tuple(feature.shape)
    return shape[2:] if feature.dim() == 4 else shape[:-1]


def feature_distiller(
    student: nn.Module,
    teacher: nn.Module,
    patterns: Sequence[str],
    *,
    weight: float,
    example: Tensor,
    field: str = "train.feature_kd.layers",
) -> FeatureDistiller:
    """A :class:`FeatureDistiller` for the layers of ``student`` that the globs ``patterns``
    match in ``teacher`` (a glob that matches no teacher layer is an error naming ``field``;
    one whose layers a smaller student lacks, e.g. a dropped block, is skipped)."""
    wanted = match_layers(teacher, patterns, field=field)
    present = {name for name, _ in student.named_modules()}
    layers = [name for name in wanted if name in present]
    return FeatureDistiller(student, teacher, layers, weight=weight, example=example)
