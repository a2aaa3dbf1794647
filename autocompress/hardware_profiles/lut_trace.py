"""Tracing a model into the layer op groups that a latency LUT is keyed by.

What a *layer* is here (the unit that gets one LUT entry): one Conv/Linear call together with
the BatchNorm that directly consumes its output and the activation that directly consumes that,
because this is the op group a deployed runtime executes as one kernel: the ONNX export folds an
eval-mode BatchNorm into the conv weights and ONNX Runtime fuses Conv/Gemm with a following
Relu/Clip.

:func:`model_layers` runs one batch-1 forward pass and returns each group's :class:`LayerKey` in
execution order, and counts the ops outside any group (residual additions, pooling, flatten, an
activation that does not follow a layer directly): the LUT does not price those, and the learned
predictor corrects for them.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd
from torch.overrides import TorchFunctionMode

from autocompress.hardware_profiles.deployed import FP32, INT8, float_copy, int8_plan
from autocompress.hardware_profiles.device_spec import DeviceSpec
from autocompress.hardware_profiles.graph import (
    check_input_shape,
    is_costed_layer,
    layer_bits,
    layer_quantizer,
)
from autocompress.hardware_profiles.lut_table import (
    DEPLOYED,
    FUSED_ACTIVATIONS,
    HOST_PRECISION,
    LayerKey,
    LayerRecord,
    ModelLayers,
)

__all__ = ["model_layers"]

# Removed by the ONNX export of an eval-mode model, so they are not ops of the deployed graph.
_EXPORT_NO_OPS = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)


def model_layers(
    model: nn.Module,
    *,
    input_shape: tuple[int, ...],
    precision: str | DeviceSpec = HOST_PRECISION,
) -> ModelLayers:
    """Trace one batch-1 forward pass and return the model's layer op groups and other ops.

    ``precision``: a str is the precision of every layer (:data:`HOST_PRECISION` for a host
    that runs float kernels), except :data:`DEPLOYED`, which gives each layer the precision the
    host runtime executes it at (int8 or fp32, by :func:`~.deployed.int8_plan`); a
    :class:`DeviceSpec` gives each layer the precision that device computes its
    ``w_bits``/``a_bits`` at. The model is traced as a deep copy in eval mode with fake
    quantization off, so it comes back unchanged and concurrent calls do not interfere.
    """
    shape = check_input_shape(input_shape, caller="model_layers")
    if not isinstance(precision, str | DeviceSpec):
        raise ValueError(
            "The 'precision' parameter of model_layers must be a str or a DeviceSpec. "
            f"Got {precision!r} instead."
        )
    # The plan is read before the copy switches fake quantization off.
    int8 = int8_plan(model) if precision == DEPLOYED else {}
    traced = float_copy(model)
    names = {module: name for name, module in traced.named_modules()}
    calls: list[tuple[nn.Module, Any, Any]] = []
    counter = _OpCounter()
    owner = threading.get_ident()

    def is_opaque(module: nn.Module) -> bool:
        return is_costed_layer(module) or next(module.children(), None) is None

    def pre_hook(module: nn.Module, args: tuple) -> None:
        if threading.get_ident() == owner and is_opaque(module):
            counter.depth += 1

    def hook(module: nn.Module, args: tuple, output: Any) -> None:
        if threading.get_ident() != owner or not is_opaque(module):
            return
        counter.depth -= 1
        if counter.depth == 0:  # calls nested in an opaque module are part of it
            calls.append((module, args[0] if args else None, output))

    handles = []
    for module in traced.modules():
        handles.append(module.register_forward_pre_hook(pre_hook))
        handles.append(module.register_forward_hook(hook))
    try:
        tensors = list(traced.parameters()) + list(traced.buffers())
        dtype = next((t.dtype for t in tensors if t.is_floating_point()), torch.float32)
        device = tensors[0].device if tensors else torch.device("cpu")
        x = torch.zeros((1, *shape), dtype=dtype, device=device)
        with torch.no_grad(), counter:
            traced(x)
    finally:
        for handle in handles:
            handle.remove()
    return _group(
        calls,
        names,
        precision=precision,
        int8=int8,
        functional_ops=counter.count,
        functional_elems=counter.elems,
    )


class _OpCounter(TorchFunctionMode):
    """Counts tensor-valued torch calls made outside any opaque module (depth 0)."""

    def __init__(self) -> None:
        super().__init__()
        self.depth = 0
        self.count = 0
        self.elems = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if self.depth == 0 and isinstance(out, torch.Tensor):
            self.count += 1
            self.elems += _largest(out, *args, *(kwargs or {}).values())
        return out


def _largest(*values: Any) -> int:
    return max((v.numel() for v in values if isinstance(v, torch.Tensor)), default=0)


def _group(
    calls: list[tuple[nn.Module, Any, Any]],
    names: Mapping[nn.Module, str],
    *,
    precision: str | DeviceSpec,
    int8: Mapping[str, bool],
    functional_ops: int,
    functional_elems: int,
) -> ModelLayers:
    layers: list[LayerRecord] = []
    uncosted, uncosted_elems = functional_ops, functional_elems
    i = 0
    while i < len(calls):
        module, x, y = calls[i]
        i += 1
        if not is_costed_layer(module):
            if not isinstance(module, _EXPORT_NO_OPS):
                uncosted += 1
                uncosted_elems += _largest(x, y)
            continue
        bn = False
        act = "none"
        # Fold only what consumes this layer's output tensor itself, as the runtime would.
        if i < len(calls) and _consumes(calls[i], y) and isinstance(calls[i][0], _BatchNorm):
            bn = calls[i][0].num_features == _out_channels(module)
            if bn:
                y = calls[i][2]
                i += 1
        if i < len(calls) and _consumes(calls[i], y) and type(calls[i][0]) in FUSED_ACTIVATIONS:
            act = FUSED_ACTIVATIONS[type(calls[i][0])]
            i += 1
        name = names.get(module, "")
        layers.append(LayerRecord(name, _key(module, x, name, bn, act, precision, int8)))
    return ModelLayers(layers=layers, uncosted_ops=uncosted, uncosted_elems=uncosted_elems)


def _consumes(call: tuple[nn.Module, Any, Any], tensor: Any) -> bool:
    return call[1] is tensor


def _key(
    module: nn.Module,
    x: Any,
    name: str,
    bn: bool,
    act: str,
    precision: str | DeviceSpec,
    int8: Mapping[str, bool],
) -> LayerKey | None:
    if isinstance(precision, DeviceSpec):
        w_bits, a_bits = layer_bits(module, name=name)
        w_bits = precision.weight_compute_bits(w_bits, layer_quantizer(module))
        label = precision.mac_cost(w_bits=w_bits, a_bits=a_bits).precision
    elif precision == DEPLOYED:
        label = INT8 if int8.get(name) else FP32
    else:
        label = precision
    if not isinstance(x, torch.Tensor):
        return None  # called with keyword arguments only: the input shape is unknown
    if isinstance(module, nn.Linear):
        return LayerKey(
            kind="linear",
            in_channels=module.in_features,
            out_channels=module.out_features,
            kernel=(),
            stride=(),
            padding=(),
            dilation=(),
            groups=1,
            input_size=tuple(int(d) for d in x.shape[1:-1]),
            bn=bn,
            act=act,
            precision=label,
        )
    if module.transposed or isinstance(module.padding, str) or module.padding_mode != "zeros":
        return None  # no isolated builder for these: always a LUT miss
    return LayerKey(
        kind="conv",
        in_channels=module.in_channels,
        out_channels=module.out_channels,
        kernel=tuple(module.kernel_size),
        stride=tuple(module.stride),
        padding=tuple(module.padding),
        dilation=tuple(module.dilation),
        groups=module.groups,
        input_size=tuple(int(d) for d in x.shape[2:]),
        bn=bn,
        act=act,
        precision=label,
    )


def _out_channels(module: nn.Module) -> int:
    return module.out_channels if isinstance(module, _ConvNd) else module.out_features
