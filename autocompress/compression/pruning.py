"""Physical structured pruning of Conv2d/Linear output channels with Torch-Pruning's DepGraph.

Ratios are keyed by the leaders of channel dependency groups (see ``spaces.groups``): removing a
leader's channels removes the matching channels of every layer coupled to it. The q projection of
a ``SplitAttention`` leads its heads: its ratio removes whole heads.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch_pruning as tp
from torch import Tensor, nn

from ..spaces.attention import SplitAttention, query_projections
from ..spaces.groups import (
    ExampleInputs,
    build_dependency_graph,
    check_ignored,
    check_module_names,
    is_depthwise,
    leader_groups,
    out_channels,
    prunable_layers,
    tracing_state,
)

__all__ = [
    "PRUNING_IMPORTANCES",
    "ChannelMasks",
    "count_parameters",
    "inherited_scores",
    "prunable_layers",
    "prune_",
    "zeroed_columns",
]

logger = logging.getLogger(__name__)
PRUNING_IMPORTANCES = ("l1", "taylor", "bn_scale")

# floor(C * ratio) in floating point turns 100 * 0.29 into 28.999999999999996; this slack keeps
# ratios that are "exactly" k/C in decimal from losing a channel.
_FLOOR_SLACK = 1e-9


def count_parameters(model: nn.Module) -> int:
    """Number of scalar parameters of ``model`` (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters())


def prune_(
    model: nn.Module,
    ratios: Mapping[str, float],
    example_inputs: ExampleInputs,
    *,
    ignored: Iterable[str] = (),
    importance: str = "l1",
    scores: Mapping[str, Tensor] | None = None,
) -> nn.Module:
    """Remove output channels of the named group leaders (and all coupled layers), in place.

    For each leader with ``C`` output channels, ``floor(C * ratio)`` channels are removed (at
    least one is kept): those of lowest importance, ties broken by lower index. ``importance``:

    * ``l1`` (default): the L1 norm of the channel's leader weights;
    * ``taylor``: the sum over the channel of ``scores[leader]`` (first-order Taylor
      ``|w * g|`` per weight, of the leader weight's shape; see ``inherited_scores``);
    * ``bn_scale``: ``|gamma|`` of the first BatchNorm in the leader's channel group (the one
      after it; Network Slimming). A leader with no BatchNorm in its group falls back to L1,
      with one warning per call.

    An attention's q projection with ``H`` heads loses ``floor(H * ratio)`` whole heads
    (at least one is kept), those whose q/k/v/out weights have the lowest L1 norm. The number
    removed depends only on shapes and ratios, so an architecture plus ratios always gives the
    same pruned shapes. Parameters are replaced by new tensors: build optimizers
    after pruning. Returns ``model``.
    """
    ignored_names = check_ignored(model, ignored, where="prune_")
    check_module_names(model, ratios, rule="The 'ratios' parameter of prune_ must be keyed by")
    for name, ratio in ratios.items():
        if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0 <= ratio < 1:
            raise ValueError(
                f"The 'ratios[{name!r}]' parameter of prune_ must be a number in [0, 1). "
                f"Got {ratio!r} instead."
            )
    if importance not in PRUNING_IMPORTANCES:
        raise ValueError(
            f"The 'importance' parameter of prune_ must be one of {PRUNING_IMPORTANCES}. "
            f"Got {importance!r} instead."
        )
    if importance == "taylor":
        missing = [n for n in ratios if scores is None or n not in scores]
        if missing:
            raise ValueError(
                "The 'scores' parameter of prune_ must hold a Taylor score tensor for every "
                f"leader pruned with importance='taylor'. Got none for {missing}."
            )

    without_bn: list[str] = []
    with tracing_state(model):
        graph = build_dependency_graph(model, example_inputs)
        leaders = leader_groups(model, graph, ignored_names)
        for name in ratios:
            if name not in leaders:
                raise ValueError(
                    "The 'ratios' parameter of prune_ must be keyed by prunable group leaders "
                    f"(see prunable_layers: {list(leaders)}). Got {name!r} instead."
                )
        heads = query_projections(model)
        for name, ratio in ratios.items():
            leader = leaders[name]
            if name in heads:
                idxs = _lowest_l1_heads(heads[name], _removed(heads[name].num_heads, ratio))
            else:
                channel_scores = _channel_importance(
                    graph, leader, importance, None if scores is None else scores.get(name)
                )
                if channel_scores is None:
                    without_bn.append(name)
                    channel_scores = _l1(leader.weight)
                idxs = _lowest(channel_scores, _removed(out_channels(leader), ratio))
            if not idxs:
                continue
            pruner = graph.get_pruner_of_module(leader)
            graph.get_pruning_group(leader, pruner.prune_out_channels, idxs).prune()
            if name in heads:
                heads[name].num_heads -= len(idxs) // heads[name].head_dim
    if without_bn:
        logger.warning(
            "pruning importance bn_scale: %s have no BatchNorm after them; their channels are "
            "ranked by L1 norm instead.",
            without_bn,
        )
    return model


class ChannelMasks:
    """What ``prune_(model, {leader: ratio})`` takes away, without copying or changing the model.

    :meth:`columns` names, for a leader and a ratio, the input columns of every Conv2d/Linear
    that reads the channels ``prune_`` would remove (the same ones: lowest L1 norm). With those
    columns zeroed (:func:`zeroed_columns`) the network computes exactly what the pruned one
    does, provided nothing between the removed channels and those layers mixes channels: their
    other members must be BatchNorms, depthwise convolutions, element-wise operations, pooling
    over space, concatenations and reshapes. For any other group (a norm over channels, an
    attention's heads, channels that reach the model's output) it returns None, and only
    ``prune_`` on a copy measures it. One dependency graph serves every leader; ``prune_``
    traces the network on each call. ``ignored`` as in ``prune_``."""

    def __init__(
        self, model: nn.Module, example_inputs: ExampleInputs, *, ignored: Iterable[str] = ()
    ) -> None:
        ignored_names = check_ignored(model, ignored, where="ChannelMasks")
        self._graph = build_dependency_graph(model, example_inputs)
        self._leaders = leader_groups(model, self._graph, ignored_names)
        self._heads = query_projections(model)

    def columns(self, leader: str, ratio: float) -> list[tuple[Tensor, list[int]]] | None:
        """(weight, input columns) pairs standing in for pruning ``leader`` at ``ratio``, or
        None when zeroing columns would not give the pruned network's outputs."""
        module = self._leaders[leader]
        if leader in self._heads:
            return None
        idxs = _lowest(_l1(module.weight), _removed(out_channels(module), ratio))
        if not idxs:
            return []
        graph = self._graph
        group = graph.get_pruning_group(
            module, graph.get_pruner_of_module(module).prune_out_channels, idxs
        )
        found = []
        for dep, dep_idxs in group:
            target = dep.target.module
            reads = not graph.is_out_channel_pruning_fn(dep.handler)
            # (leader_groups offers no group holding a grouped, non-depthwise conv)
            if reads and isinstance(target, nn.Linear | nn.Conv2d) and not is_depthwise(target):
                found.append((target.weight, sorted(set(_plain_indices(dep_idxs)))))
            elif not _channelwise(target, dep.target.grad_fn):
                return None
        return found


# Autograd nodes that act on each channel on its own (T: a Linear's weight transposed for its
# matmul, whose node is the Linear's own).
_CHANNELWISE_OPS = re.compile(
    r"(T|Relu|Hardtanh|Hardswish|Hardsigmoid|Sigmoid|Silu|Gelu|Tanh|LeakyRelu|Elu|Mish|Add|Sub|Mul"
    r"|Div|Neg|Clone|MaxPool2DWithIndices|AvgPool2D|AdaptiveAvgPool2D|AdaptiveMaxPool2D"
    r"|Permute|View|Reshape|Flatten)Backward\d*"
)


def _channelwise(target: Any, node: Any) -> bool:
    """Whether a channel group member keeps channels apart (see :class:`ChannelMasks`)."""
    if isinstance(target, nn.Conv2d | nn.Linear | nn.modules.batchnorm._BatchNorm):
        return True  # writes the channels (a leader, a residual partner) or, depthwise, both
    if isinstance(target, tp.ops._ReshapeOp | tp.ops._ConcatOp | tp.ops._SplitOp):
        return True  # Torch-Pruning maps the channel indices through them
    if not isinstance(target, tp.ops._ElementWiseOp):
        return False
    name = node.name() if node is not None else ""
    if name.startswith("MeanBackward"):  # a mean over space (global pooling), not channels
        rank = len(node._saved_self_sym_sizes)
        dims = [int(d) - 2**64 if int(d) >= 2**63 else int(d) for d in node._saved_dim]
        return rank > 2 and all(d % rank != 1 for d in dims)
    return _CHANNELWISE_OPS.fullmatch(name) is not None


@contextmanager
def zeroed_columns(columns: Sequence[tuple[Tensor, list[int]]]) -> Iterator[None]:
    """Zero the given input columns of each weight (as :meth:`ChannelMasks.columns` names
    them) for the duration of the block, then put them back."""
    saved = []
    with torch.no_grad():
        for weight, idxs in columns:
            index = torch.tensor(idxs, device=weight.device)
            saved.append((weight, index, weight.index_select(1, index).clone()))
            weight.index_fill_(1, index, 0.0)
    try:
        yield
    finally:
        with torch.no_grad():
            for weight, index, values in reversed(saved):
                weight.index_copy_(1, index, values)


def inherited_scores(
    model: nn.Module, names: Iterable[str], score_state: Mapping[str, Tensor]
) -> dict[str, Tensor]:
    """Per-weight scores of the named layers of ``model`` taken from ``score_state`` (keyed like
    a teacher's state dict, e.g. Taylor scores of the teacher's weights) with the slicing that
    ``inherit_weights_`` gave those layers their weights: the score of each inherited weight is
    the score of the teacher weight it came from, zero where a widened kernel has no teacher
    weight. A layer without a score of matching dims gets none."""
    from .inherit import shared_slices

    modules = dict(model.named_modules())
    out = {}
    for name in names:
        weight = modules[name].weight
        source = score_state.get(f"{name}.weight" if name else "weight")
        if source is None or source.dim() != weight.dim():
            continue
        target_idx, source_idx, _ = shared_slices(weight.shape, source.shape)
        score = torch.zeros_like(weight, dtype=torch.float32)
        score[target_idx] = source[source_idx].to(score)
        out[name] = score
    return out


def _l1(weight: Tensor) -> Tensor:
    return weight.detach().abs().flatten(1).sum(dim=1)


def _channel_importance(
    graph: object, leader: nn.Module, importance: str, score: Tensor | None
) -> Tensor | None:
    """One importance per output channel of ``leader``; None for bn_scale without a BN."""
    if importance == "l1":
        return _l1(leader.weight)
    if importance == "taylor":
        return score.detach().abs().flatten(1).sum(dim=1).to(leader.weight.device)
    channels = out_channels(leader)
    pruner = graph.get_pruner_of_module(leader)
    group = graph.get_pruning_group(leader, pruner.prune_out_channels, list(range(channels)))
    for dep, idxs in group:
        module = dep.target.module
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine:
            if len(idxs) != channels:
                continue
            index = torch.tensor(_plain_indices(idxs))
            return module.weight.detach().abs()[index.to(module.weight.device)].to(leader.weight)
    return None


def _plain_indices(idxs: Iterable[Any]) -> list[int]:
    """Channel indices of a Torch-Pruning group member (its ``_HybridIndex`` objects or ints)."""
    return [int(getattr(i, "idx", i)) for i in idxs]


def _removed(count: int, ratio: float) -> int:
    """How many of ``count`` channels or heads a ratio removes; at least one stays."""
    return max(min(math.floor(count * ratio + _FLOOR_SLACK), count - 1), 0)


def _lowest(importance: Tensor, n: int) -> list[int]:
    """The ``n`` channels of lowest ``importance``, in index order."""
    if n == 0:
        return []
    # stable sort: equal norms (e.g. zero-initialised channels) resolve by index, not by chance
    order = torch.argsort(importance, stable=True)
    return sorted(order[:n].tolist())


def _lowest_l1_heads(attention: SplitAttention, n: int) -> list[int]:
    """The q/k/v output channels of the ``n`` heads whose weights (q, k and v rows, out
    columns) have the lowest L1 norm, ties broken by lower index."""
    heads, width = attention.num_heads, attention.head_dim
    importance = attention.out_proj.weight.detach().abs().unflatten(1, (heads, width)).sum((0, 2))
    for projection in (attention.q_proj, attention.k_proj, attention.v_proj):
        importance += projection.weight.detach().abs().unflatten(0, (heads, width)).sum((1, 2))
    removed = torch.argsort(importance, stable=True)[:n].tolist()
    return sorted(head * width + i for head in removed for i in range(width))
