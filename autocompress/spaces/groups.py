"""Channel dependency groups, found with Torch-Pruning's DepGraph: which layers' output channels
can be pruned, and together with which others.

Layers whose channels are tied together (a conv and its BatchNorm, a depthwise conv and the conv
feeding it, convs whose outputs are summed by residual additions) form one dependency group.
A group is addressed by its *leader*, its first Conv2d/Linear in ``model.named_modules()`` order,
so a per-layer pruning ratio keyed by layer name means the same thing for every model built from
the same architecture. The space offers one pruning ratio per leader; ``compression.pruning``
removes the channels.

Attention goes by whole heads: the q projection of a :class:`SplitAttention` leads the group of
its q/k/v output channels and its out projection's input channels, and its ratio removes heads.
Groups that change an attention's embed width, or a parameter of one vector per token outside
any layer (shape ``(1, tokens, width)``: a class token, a position embedding), are never offered:
that width is a transformer's residual stream, which its code also sizes outside any layer (a
ViT reshapes its patches to a stored ``hidden_dim``), so pruning it breaks the network.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch_pruning as tp
from torch import Tensor, nn

from .attention import SplitAttention, query_projections

ExampleInputs = Tensor | Sequence[Tensor]


def prunable_layers(
    model: nn.Module, example_inputs: ExampleInputs, *, ignored: Iterable[str] = ()
) -> list[str]:
    """Names of the group leaders whose output channels can be pruned, in module order: channel
    group leaders, and the q projections of SplitAttention layers with more than one head (their
    channels go by whole heads).

    ``example_inputs`` (a tensor, or a sequence of positional tensors) is run once through the
    model to trace it. ``ignored`` names layers that must keep their output channels (pass the
    final classifier); groups that would change an ignored layer's outputs are skipped. Depthwise
    convs never lead: they follow the group of the layer that feeds them. The model's train/eval
    mode is left unchanged.
    """
    ignored_names = check_ignored(model, ignored, where="prunable_layers")
    graph = build_dependency_graph(model, example_inputs)
    return list(leader_groups(model, graph, ignored_names))


def out_channels(module: nn.Module) -> int:
    return module.out_channels if isinstance(module, nn.Conv2d) else module.out_features


def is_depthwise(module: nn.Module) -> bool:
    # Torch-Pruning's own definition (tp.ops.module2type): one group per output channel
    return isinstance(module, nn.Conv2d) and module.groups == module.out_channels > 1


def check_ignored(model: nn.Module, ignored: Iterable[str], *, where: str) -> set[str]:
    if isinstance(ignored, str):
        raise ValueError(
            f"The 'ignored' parameter of {where} must be an iterable of module names, not a "
            f"single string. Got {ignored!r} instead."
        )
    names = set(ignored)
    check_module_names(model, sorted(names), rule=f"The 'ignored' parameter of {where} must hold")
    return names


def check_module_names(
    model: nn.Module, names: Iterable[str], *, rule: str
) -> dict[str, nn.Module]:
    """``model``'s modules by name, after checking that every one of ``names`` is one; ``rule``
    starts the error, e.g. "The 'ratios' parameter of prune_ must be keyed by"."""
    modules = dict(model.named_modules())
    for name in names:
        if name not in modules:
            raise ValueError(f"{rule} module names of the model. Got {name!r} instead.")
    return modules


@contextmanager
def tracing_state(model: nn.Module) -> Iterator[None]:
    """Enable autograd for tracing and restore train/eval flags and ``requires_grad`` after.

    DepGraph traces through ``grad_fn`` (so it needs grad mode and parameters that require
    grad) and calls ``model.eval()`` without restoring the mode. Flags are restored by name
    because pruning replaces the Parameter objects.
    """
    training = {name: m.training for name, m in model.named_modules()}
    requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
    try:
        for p in model.parameters():
            p.requires_grad_(True)
        with torch.enable_grad():
            yield
    finally:
        for name, m in model.named_modules():
            m.training = training.get(name, m.training)
        for name, p in model.named_parameters():
            p.requires_grad_(requires_grad.get(name, p.requires_grad))


def build_dependency_graph(model: nn.Module, example_inputs: ExampleInputs) -> tp.DependencyGraph:
    def forward(m: nn.Module, inputs: Any) -> Any:
        # Explicit, because DepGraph's default tries ``m(*inputs)`` and silently retries
        # ``m(inputs)`` on any exception, which runs a failing model twice and hides the error.
        return m(inputs) if isinstance(inputs, Tensor) else m(*inputs)

    with tracing_state(model):
        return tp.DependencyGraph().build_dependency(
            model, example_inputs, forward_fn=forward, verbose=False
        )


def leader_groups(
    model: nn.Module, graph: tp.DependencyGraph, ignored: set[str]
) -> dict[str, nn.Module]:
    """``{leader name: leader module}`` of every prunable group, in module order."""
    names = {m: name for name, m in model.named_modules()}
    ignored_modules = {m for m, name in names.items() if name in ignored}
    queries = {a.q_proj: a for a in query_projections(model).values()}
    attention_parts = _attention_modules(model)
    claimed: set[nn.Module] = set()
    leaders: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        if not isinstance(module, nn.Conv2d | nn.Linear) or module not in graph.module2node:
            continue
        if module in claimed or module in ignored_modules or is_depthwise(module):
            continue
        pruner = graph.get_pruner_of_module(module)
        group = graph.get_pruning_group(
            module, pruner.prune_out_channels, list(range(out_channels(module)))
        )
        members = [
            dep.target.module
            for dep, _ in group
            if graph.is_out_channel_pruning_fn(dep.handler)
            and isinstance(dep.target.module, nn.Module)
        ]
        claimed.update(members)
        if any(m in ignored_modules for m in members) or _has_grouped_conv(group):
            continue
        if module in queries:
            heads = queries[module]
            if heads.num_heads > 1 and _is_head_group(graph, group, heads, names):
                leaders[name] = module
        elif not any(_residual_stream(dep.target.module, attention_parts) for dep, _ in group):
            leaders[name] = module
    return leaders


def _residual_stream(target: Any, attention_parts: set[nn.Module]) -> bool:
    """Whether a group member is part of a transformer's residual width (see the module doc)."""
    if isinstance(target, nn.Parameter):  # Torch-Pruning's node for a parameter outside a layer
        return target.dim() == 3 and target.shape[0] == 1
    return target in attention_parts


def _attention_modules(model: nn.Module) -> set[nn.Module]:
    """What a channel group must not reach: the projections of every SplitAttention (their
    channels go by heads, or are the embed width) and every unsplit nn.MultiheadAttention."""
    found: set[nn.Module] = set()
    for module in model.modules():
        if isinstance(module, SplitAttention):
            found.update((module.q_proj, module.k_proj, module.v_proj, module.out_proj))
        elif isinstance(module, nn.MultiheadAttention):
            found.add(module)
    return found


def _is_head_group(
    graph: tp.DependencyGraph, group: Any, attention: SplitAttention, layers: Mapping[Any, str]
) -> bool:
    # DepGraph follows the q projection's channels through the attention's matmuls to k, v and
    # out; removing whole heads there is right only if those are all the layers it reaches.
    reached = {
        (dep.target.module, graph.is_out_channel_pruning_fn(dep.handler))
        for dep, _ in group
        if dep.target.module in layers
    }
    expected = {(attention.q_proj, True), (attention.k_proj, True), (attention.v_proj, True)}
    return reached == expected | {(attention.out_proj, False)}


def _has_grouped_conv(group: Any) -> bool:
    # Torch-Pruning cannot keep a grouped (non-depthwise) conv's per-group channel structure
    # consistent, so such groups are never offered for pruning.
    return any(
        isinstance(m, nn.Conv2d) and m.groups > 1 and not is_depthwise(m)
        for m in (dep.target.module for dep, _ in group)
    )


def output_layer(model: nn.Module, example_inputs: ExampleInputs) -> str:
    """The name of the Conv/Linear layer that runs last when ``model`` runs on
    ``example_inputs``: the layer producing the model's output (its classifier or head), found
    by running it, not by where the layer is declared. The model's train/eval mode is kept."""
    order: list[str] = []
    hooks = [
        module.register_forward_hook(lambda *_, name=name: order.append(name))
        for name, module in model.named_modules()
        if isinstance(module, nn.Conv2d | nn.Linear)
    ]
    training = model.training
    try:
        with torch.no_grad():
            model.eval()
            model(example_inputs) if isinstance(example_inputs, Tensor) else model(*example_inputs)
    finally:
        model.train(training)
        for hook in hooks:
            hook.remove()
    if not order:
        raise ValueError(
            "The 'model' parameter of output_layer must run at least one Conv2d or Linear layer. "
            f"Got a {type(model).__name__} that ran none."
        )
    return order[-1]
