"""Physical structured pruning of Conv2d/Linear output channels with Torch-Pruning's DepGraph.

Ratios are keyed by the leaders of channel dependency groups (see ``spaces.groups``): removing a
leader's channels removes the matching channels of every layer coupled to it. The q projection of
a ``SplitAttention`` leads its heads: its ratio removes whole heads.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch
from torch import Tensor, nn

from ..spaces.attention import SplitAttention, query_projections
from ..spaces.groups import (
    ExampleInputs,
    build_dependency_graph,
    check_ignored,
    check_module_names,
    leader_groups,
    out_channels,
    prunable_layers,
    tracing_state,
)

__all__ = ["count_parameters", "prunable_layers", "prune_"]

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
) -> nn.Module:
    """Remove output channels of the named group leaders (and all coupled layers), in place.

    For each leader with ``C`` output channels, ``floor(C * ratio)`` channels are removed (at
    least one is kept): those whose leader weights have the lowest L1 norm, ties broken by lower
    index. An attention's q projection with ``H`` heads loses ``floor(H * ratio)`` whole heads
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
                idxs = _lowest_l1_channels(leader.weight, _removed(out_channels(leader), ratio))
            if not idxs:
                continue
            pruner = graph.get_pruner_of_module(leader)
            graph.get_pruning_group(leader, pruner.prune_out_channels, idxs).prune()
            if name in heads:
                heads[name].num_heads -= len(idxs) // heads[name].head_dim
    return model


def _removed(count: int, ratio: float) -> int:
    """How many of ``count`` channels or heads a ratio removes; at least one stays."""
    return max(min(math.floor(count * ratio + _FLOOR_SLACK), count - 1), 0)


def _lowest_l1_channels(weight: Tensor, n: int) -> list[int]:
    if n == 0:
        return []
    importance = weight.detach().abs().flatten(1).sum(dim=1)
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
