"""Physical structured pruning of Conv2d/Linear output channels with Torch-Pruning's DepGraph.

Ratios are keyed by the leaders of channel dependency groups (see ``spaces.groups``): removing a
leader's channels removes the matching channels of every layer coupled to it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch
from torch import Tensor, nn

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
    index. The number removed depends only on shapes and ratios, so an architecture plus ratios
    always gives the same pruned shapes. Parameters are replaced by new tensors: build optimizers
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
        for name, ratio in ratios.items():
            leader = leaders[name]
            channels = out_channels(leader)
            n_remove = min(math.floor(channels * ratio + _FLOOR_SLACK), channels - 1)
            if n_remove <= 0:
                continue
            idxs = _lowest_l1_channels(leader.weight, n_remove)
            pruner = graph.get_pruner_of_module(leader)
            graph.get_pruning_group(leader, pruner.prune_out_channels, idxs).prune()
    return model


def _lowest_l1_channels(weight: Tensor, n: int) -> list[int]:
    importance = weight.detach().abs().flatten(1).sum(dim=1)
    # stable sort: equal norms (e.g. zero-initialised channels) resolve by index, not by chance
    order = torch.argsort(importance, stable=True)
    return sorted(order[:n].tolist())
