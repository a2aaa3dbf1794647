"""Fine-grained weight sparsity of Conv2d/Linear layers: unstructured and N:M masks, gradual
magnitude pruning (Zhu & Gupta 2017) and the sparse storage encodings that size prices.

A layer's ``sparsity`` is either a float fraction of zero weights in [0, 1) (unstructured: the
lowest-importance fraction of the layer's weights, ``floor(fraction * numel)`` of them, ties
broken by lower flat index) or an ``"N:M"`` string with ``0 < N < M`` (semi-structured).

N:M groups run along the input dimension: the weight is viewed as rows of input weights, one row
per output channel (and, for a Conv2d, per kernel position ``(kh, kw)``), i.e. as
``[out, kh, kw, in]`` for a conv and ``[out, in]`` for a Linear, and each row is cut into
consecutive groups of ``M`` from input index 0. Every group keeps its ``N`` most important
weights; a trailing group shorter than ``M`` (the input width is not a multiple of ``M``, as in
a first conv on RGB) keeps ``min(N, its length)``. This is the order of the reduction dimension of
an NHWC implicit GEMM, the layout that sparse tensor cores (e.g. Ampere 2:4) prune along.

Masks live on the fake-quant layers (``QuantConv2d``/``QuantLinear``: the ``weight_mask`` buffer,
the ``sparsity`` attribute), which multiply their weight by the mask before quantizing it; a zero
quantizes to exactly zero at every bit-width, so a masked weight stays zero in the fake-quant
weight, the state dict and the exports. Dense layers have no buffer, so their state dict is
unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..spaces.candidate import DENSE, Sparsity, nm_pattern
from .quantization import QuantConv2d, QuantLinear

__all__ = [
    "IMPORTANCES",
    "GradualSparsity",
    "apply_masks_",
    "nm_rows",
    "schedule_level",
    "sparse_layers",
    "sparse_weight_bits",
    "sparsify_",
    "sparsity_mask",
    "taylor_scores",
]

IMPORTANCES = ("magnitude", "taylor")
# floor(numel * fraction) in floating point can fall one short of an exact k / numel.
_FLOOR_SLACK = 1e-9
RAMP_FRACTION = 2 / 3  # gradual pruning reaches the target after this share of the steps
MASK_UPDATES = 10  # mask recomputations during the ramp (Zhu & Gupta's pruning frequency)
SCALE_BITS = 32  # one fp32 scale per output channel, as in the dense weight bytes


def nm_rows(weight: Tensor) -> Tensor:
    """``weight`` viewed as rows along its input dimension: ``[out * kh * kw, in]`` for a 4-D conv
    weight (``[out, in, kh, kw]`` permuted to ``[out, kh, kw, in]``), ``[out, in]`` for a Linear."""
    if weight.dim() == 4:
        return weight.permute(0, 2, 3, 1).reshape(-1, weight.shape[1])
    return weight.reshape(weight.shape[0], -1)


def _from_rows(rows: Tensor, shape: torch.Size) -> Tensor:
    if len(shape) == 4:
        out, cin, kh, kw = shape
        return rows.reshape(out, kh, kw, cin).permute(0, 3, 1, 2).contiguous()
    return rows.reshape(shape)


def sparsity_mask(scores: Tensor, sparsity: Sparsity, *, level: float = 1.0) -> Tensor:
    """The boolean keep-mask (``True`` = kept) of a weight whose importance is ``scores``.

    ``level`` in [0, 1] is the share of the target reached (gradual pruning): an unstructured
    layer zeroes ``floor(level * fraction * numel)`` weights, an N:M layer zeroes
    ``round(level * (M - N))`` weights of each group of ``M`` (``level=1``: exactly the target).
    The lowest scores go first, ties broken by lower index."""
    if not 0.0 <= level <= 1.0:
        raise ValueError(f"The 'level' parameter of sparsity_mask must lie in [0, 1]. Got {level}.")
    pattern = nm_pattern(sparsity)
    flat = scores.detach().reshape(-1).float()
    if pattern is None:
        fraction = float(sparsity) * level
        zeros = min(math.floor(flat.numel() * fraction + _FLOOR_SLACK), flat.numel())
        keep = torch.ones_like(flat, dtype=torch.bool)
        keep[torch.argsort(flat, stable=True)[:zeros]] = False
        return keep.reshape(scores.shape)
    n, m = pattern
    pruned = round(level * (m - n))
    rows = nm_rows(scores.detach().float())
    width = rows.shape[1]
    groups = math.ceil(width / m)
    # A short trailing group is padded with -inf scores: the padding ranks last, so the group
    # keeps min(m - pruned, its length) real weights once the padding is dropped.
    padded = torch.full((rows.shape[0], groups * m), -math.inf, device=rows.device)
    padded[:, :width] = rows
    grouped = padded.reshape(rows.shape[0], groups, m)
    # descending stable sort: of equal scores the lower index is kept
    order = torch.argsort(grouped, dim=2, descending=True, stable=True)
    keep = torch.zeros_like(grouped, dtype=torch.bool)
    keep.scatter_(2, order[:, :, : m - pruned], True)
    keep = keep.reshape(rows.shape[0], groups * m)[:, :width]
    return _from_rows(keep, scores.shape)


def sparse_layers(model: nn.Module) -> dict[str, QuantConv2d | QuantLinear]:
    """``{name: layer}`` of the fake-quant layers of ``model`` with a non-zero sparsity."""
    return {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, QuantConv2d | QuantLinear) and m.sparsity != DENSE
    }


def apply_masks_(model: nn.Module) -> None:
    """Zero the stored weights that the masks of ``model``'s sparse layers drop, in place (the
    forward already ignores them; this makes the state dict and every export hold the zeros)."""
    _zero_masked(sparse_layers(model).values())


@torch.no_grad()
def _zero_masked(layers: Iterable[QuantConv2d | QuantLinear]) -> None:
    for layer in layers:
        layer.weight.masked_fill_(~layer.weight_mask, 0.0)


@torch.no_grad()
def sparsify_(
    model: nn.Module,
    sparsities: Mapping[str, Sparsity],
    *,
    scores: Mapping[str, Tensor] | None = None,
    level: float = 1.0,
    zero: bool = False,
) -> nn.Module:
    """Give the named fake-quant layers of ``model`` their sparsity and a mask, in place.

    ``sparsities`` maps layer names to a fraction or an ``"N:M"`` string (0 leaves a layer
    dense); ``scores`` (default ``|weight|``, magnitude importance) maps names to importance
    tensors of the weight's shape; ``level``: see :func:`sparsity_mask`. ``zero=False`` keeps the
    masked weights' values behind the mask (gradual pruning may still revive them), ``True``
    zeroes them. Run it after ``quantize_``. Returns ``model``."""
    modules = dict(model.named_modules())
    for name, value in sparsities.items():
        module = modules.get(name)
        if not isinstance(module, QuantConv2d | QuantLinear):
            raise ValueError(
                "The 'sparsities' parameter of sparsify_ must name QuantConv2d/QuantLinear layers "
                f"(run quantize_ first). Got {name!r} ({type(module).__name__}) instead."
            )
        nm_pattern(value)  # validates
    for name, value in sparsities.items():
        module = modules[name]
        if value == DENSE:
            module.sparsity, module.weight_mask = DENSE, None
            continue
        score = module.weight.abs() if scores is None or name not in scores else scores[name]
        if score.shape != module.weight.shape:
            raise ValueError(
                f"The 'scores[{name!r}]' parameter of sparsify_ must have the weight's shape "
                f"{tuple(module.weight.shape)}. Got {tuple(score.shape)} instead."
            )
        module.sparsity = value
        module.weight_mask = sparsity_mask(score.to(module.weight.device), value, level=level)
        if zero:
            module.weight.masked_fill_(~module.weight_mask, 0.0)
    return model


def taylor_scores(
    model: nn.Module,
    batches: Iterable[Any],
    loss: Callable[[nn.Module, Any], Tensor],
    *,
    names: Iterable[str] | None = None,
) -> dict[str, Tensor]:
    """First-order Taylor importance ``mean_b |w * dL_b/dw|`` of each weight (Molchanov et al.
    2019) of the named Conv2d/Linear layers (default: all), over ``batches``, where
    ``loss(model, batch)`` is the loss of one batch. The model's gradients are left as they
    were; parameters are not changed."""
    modules = dict(model.named_modules())
    wanted = (
        list(names)
        if names is not None
        else [n for n, m in modules.items() if isinstance(m, nn.Conv2d | nn.Linear)]
    )
    weights = {n: modules[n].weight for n in wanted}
    saved = {id(p): p.grad for p in model.parameters()}
    flags = {id(p): p.requires_grad for p in model.parameters()}
    totals = {n: torch.zeros_like(w) for n, w in weights.items()}
    count = 0
    try:
        for p in model.parameters():
            p.requires_grad_(True)
        for batch in batches:
            grads = torch.autograd.grad(
                loss(model, batch), list(weights.values()), allow_unused=True
            )
            for (n, w), g in zip(weights.items(), grads, strict=True):
                if g is not None:
                    totals[n] += (w.detach() * g).abs()
            count += 1
    finally:
        for p in model.parameters():
            p.grad = saved[id(p)]
            p.requires_grad_(flags[id(p)])
    if count == 0:
        raise ValueError("The 'batches' parameter of taylor_scores must hold at least one batch.")
    return {n: t / count for n, t in totals.items()}


def schedule_level(step: int, ramp_steps: int) -> float:
    """Zhu & Gupta's cubic schedule as a share of the target: ``1 - (1 - t / T)^3`` at step
    ``t`` of a ramp of ``T`` steps (0 at the start, 1 from step ``T`` on, rising fastest early
    while the network has redundant weights to lose)."""
    if ramp_steps <= 0:
        return 1.0
    progress = min(max(step / ramp_steps, 0.0), 1.0)
    return 1.0 - (1.0 - progress) ** 3


class GradualSparsity:
    """Gradual pruning of a model's sparse layers over a fine-tune of ``total_steps`` optimizer
    steps: the masks start dense (every weight the compression inherited is back), reach the
    target after ``ceil(RAMP_FRACTION * total_steps)`` steps along :func:`schedule_level`, being
    recomputed ``MASK_UPDATES`` times on the way, and stay at the target for the rest, so the
    layer learns around its final mask. A pruned weight is zeroed after every step (AdamW's
    moments would move it otherwise) and so stays pruned.

    ``importance``: ``magnitude`` ranks weights by ``|w|``; ``taylor`` by ``|w * g|`` summed over
    the steps since the previous update (``g``: the gradient of the candidate's training loss
    that the step used; it falls back to magnitude for an update with no step before it).

    Call :meth:`after_step` after each optimizer step and :meth:`finish` at the end (also with
    no steps at all: it leaves every layer at exactly its target, one-shot).
    """

    def __init__(self, model: nn.Module, *, total_steps: int, importance: str = "magnitude"):
        if importance not in IMPORTANCES:
            raise ValueError(
                f"The 'importance' parameter of GradualSparsity must be one of {IMPORTANCES}. "
                f"Got {importance!r} instead."
            )
        self.model = model
        self.layers = sparse_layers(model)
        self.targets = {name: layer.sparsity for name, layer in self.layers.items()}
        self.importance = importance
        self.ramp_steps = math.ceil(RAMP_FRACTION * max(total_steps, 0))
        self.every = max(1, math.ceil(self.ramp_steps / MASK_UPDATES))
        self._taylor: dict[str, Tensor] = {}
        self._level: float | None = None  # None: masks not set by this schedule yet
        if self.layers and total_steps > 0:
            self._remask(0.0)

    @property
    def level(self) -> float | None:
        """The share of the targets the masks are at now (None before the first update)."""
        return self._level

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        """Bookkeeping after optimizer step number ``step`` (1-based)."""
        if not self.layers:
            return
        if self.importance == "taylor":
            for name, layer in self.layers.items():
                if layer.weight.grad is not None:
                    term = (layer.weight * layer.weight.grad).abs()
                    self._taylor[name] = self._taylor[name] + term if name in self._taylor else term
        level = schedule_level(step, self.ramp_steps)
        due = step % self.every == 0 or step >= self.ramp_steps
        if due and level > (self._level or 0.0):
            self._remask(level)
        else:
            _zero_masked(self.layers.values())

    def finish(self) -> None:
        """Masks at exactly the targets, masked weights zeroed."""
        if self.layers and self._level != 1.0:
            self._remask(1.0)

    def _remask(self, level: float) -> None:
        scores = None
        if self.importance == "taylor" and set(self._taylor) == set(self.layers):
            scores = self._taylor
        sparsify_(self.model, self.targets, scores=scores, level=level, zero=True)
        self._taylor = {}
        self._level = level


def sparse_weight_bits(*, mask: Tensor, w_bits: int, sparsity: Sparsity) -> int:
    """Bits of a sparse weight's cheapest storage, never more than dense (scales not included):

    * dense: ``numel * b``;
    * bitmask: one bit per weight + the non-zeros at ``b`` bits;
    * index: the non-zeros at ``b`` bits plus an index each: ``ceil(log2 M)`` bits (position in
      its group) for N:M; for unstructured, CSR per row of the weight (one row per output
      channel): a column index of ``ceil(log2 row_length)`` bits per non-zero and a row pointer
      of ``ceil(log2(numel + 1))`` bits per row plus one.
    """
    numel = mask.numel()
    nnz = int(mask.sum())
    dense = numel * w_bits
    bitmask = numel + nnz * w_bits
    pattern = nm_pattern(sparsity)
    if pattern is not None:
        index = nnz * (w_bits + max(1, math.ceil(math.log2(pattern[1]))))
    else:
        rows = mask.shape[0]
        row_length = numel // rows
        column_bits = max(1, math.ceil(math.log2(row_length)))
        pointer_bits = max(1, math.ceil(math.log2(numel + 1)))
        index = nnz * (w_bits + column_bits) + (rows + 1) * pointer_bits
    return min(dense, bitmask, index)
