"""Per-layer MACs and bytes of a model at each layer's bit-width.

Only ``nn.Conv1d/2d/3d`` (and transposed), ``nn.Linear`` and their subclasses are costed: they
hold nearly all MACs and weights of the CNNs/MLPs searched here. Element-wise ops, pooling and
normalisation are treated as fused into the neighbouring layer (free), which underestimates
memory-bound element-wise-heavy nets. On request (``layer_costs(..., attention=True)``) each
attention call is costed too, as a row of kind ``"attention"``: its two matmuls (scores and the
weighted sum of values, all heads), in float, plus the projections of an ``nn.MultiheadAttention``,
which never calls them as layers (a ``SplitAttention``'s projections are Linear rows of their own).

Byte conventions (documented assumptions, shared by every profile):

* weights at ``w_bits``, packed (``ceil(numel * w_bits / 8)``), plus one fp32 scale per output
  channel when ``w_bits < 32`` (symmetric per-channel quantization; zero-points not counted).
  Biases are not part of ``weight_bytes`` (they are in :func:`model_size_bytes`).
  Non-uniform weights (``w_quantizer``) are ``w_bits``-bit indices, plus per channel the same
  fp32 scale for ``pot``/``apot`` (their level tables follow from the bits: nothing to store),
  and for ``codebook`` one table of ``2^w_bits`` fp32 values per layer instead of the scales.
* inputs at the layer's ``a_bits``.
* outputs: the next consumer's bits are unknown inside a layer, so a quantized layer
  (``a_bits < 32``) is assumed to requantize its output to int8 (1 byte/element), and a float
  layer writes fp32 (4 bytes/element).
* attention: reads q, k and v (for an ``nn.MultiheadAttention``: its query, key and value
  inputs) and writes its result and the score matrix, all fp32.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from numbers import Integral
from typing import Any, Literal

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd

from ..spaces.attention import SplitAttention
from ..spaces.candidate import FLOAT_BITS, UNIFORM
from ._base import HardwareMetrics

SCALE_BYTES = 4  # one fp32 scale per output channel of a quantized weight
CODEBOOK_VALUE_BYTES = 4  # one fp32 value per codebook entry
_QUANT_OUTPUT_BYTES = 1  # a quantized layer requantizes its output to int8 (see module doc)
_FLOAT_BYTES = 4
# Buffers that ship with a deployed model; everything else (observer act_min/act_max,
# num_batches_tracked, masks, caches) is training or calibration state.
_DEPLOYED_BUFFERS = ("running_mean", "running_var")

# Tracing attaches hooks and flips eval mode on the caller's model; one trace at a time keeps
# concurrent calls (same model, several threads) from seeing each other's hooks or modes.
_TRACE_LOCK = threading.RLock()


@dataclass(frozen=True)
class LayerCost:
    """MACs and bytes of one call of one Conv/Linear layer (or attention) at batch size 1."""

    name: str
    kind: Literal["conv", "linear", "attention"]
    macs: int
    weight_params: int
    w_bits: int
    a_bits: int
    input_elems: int
    output_elems: int
    weight_bytes: int
    input_bytes: int
    output_bytes: int
    quantizer: str = UNIFORM  # the weights' quantizer (see compression.quantization)
    # Fine-grained sparsity of the layer's weight (0.0: dense). ``sparse_weight_bytes``: the
    # weight in its cheapest sparse encoding (what size counts); ``weight_bytes`` stays dense,
    # which latency and energy use unless the device declares a kernel for the pattern.
    # ``sparse_aligned``: an N:M layer whose input width is a multiple of M (what sparse
    # kernels need).
    sparsity: float | str = 0.0
    sparse_weight_bytes: int | None = None
    sparse_aligned: bool = False
    # Channels and groups of a Conv/Linear (features for a Linear); 0 for attention rows.
    in_channels: int = 0
    out_channels: int = 0
    groups: int = 1

    @property
    def total_bytes(self) -> int:
        return self.weight_bytes + self.input_bytes + self.output_bytes

    @property
    def layer_class(self) -> Literal["dense", "depthwise", "grouped"]:
        """``depthwise`` (a conv with groups equal to its input channels), ``grouped`` (another
        conv with groups > 1) or ``dense``."""
        if self.groups <= 1:
            return "dense"
        return "depthwise" if self.groups == self.in_channels else "grouped"


def is_costed_layer(module: nn.Module) -> bool:
    return isinstance(module, _ConvNd | nn.Linear)


def layer_bits(module: nn.Module, *, name: str = "") -> tuple[int, int]:
    """``(w_bits, a_bits)`` of a layer; 32 (float) when the attributes are absent."""
    bits = []
    for attr in ("w_bits", "a_bits"):
        value = getattr(module, attr, FLOAT_BITS)
        if isinstance(value, bool) or not isinstance(value, Integral) or not 1 <= value <= 32:
            raise ValueError(
                f"The '{attr}' attribute of layer {name!r} must be an int in [1, 32]. "
                f"Got {value!r} instead."
            )
        bits.append(int(value))
    return bits[0], bits[1]


def layer_quantizer(module: nn.Module) -> str:
    """The weight quantizer of a layer (``w_quantizer``); uniform when it has none."""
    return getattr(module, "w_quantizer", UNIFORM)


def weight_bytes(*, numel: int, w_bits: int, out_channels: int, quantizer: str = UNIFORM) -> int:
    """Packed weight bytes plus per-channel fp32 scales when quantized (a codebook layer: its
    table of ``2^w_bits`` fp32 values instead of the scales)."""
    packed = math.ceil(numel * w_bits / 8)
    if w_bits >= FLOAT_BITS:
        return packed
    if quantizer == "codebook":
        return packed + CODEBOOK_VALUE_BYTES * 2**w_bits
    return packed + SCALE_BYTES * out_channels


def activation_bytes(*, input_elems: int, output_elems: int, a_bits: int) -> tuple[int, int]:
    """``(input_bytes, output_bytes)`` of a layer: its input at ``a_bits``, its output at int8
    when the layer is quantized (``a_bits < 32``) and fp32 otherwise (see the module doc)."""
    out_bytes_per_elem = _QUANT_OUTPUT_BYTES if a_bits < FLOAT_BITS else _FLOAT_BYTES
    return math.ceil(input_elems * a_bits / 8), int(output_elems * out_bytes_per_elem)


def sparse_weight_bytes(module: nn.Module, *, w_bits: int) -> int | None:
    """Bytes of a sparse layer's weight in its cheapest encoding (see
    ``compression.sparsity.sparse_weight_bits``) plus the per-channel scales when quantized;
    None for a dense layer."""
    mask = getattr(module, "weight_mask", None)
    if mask is None:
        return None
    from ..compression.sparsity import sparse_weight_bits

    bits = sparse_weight_bits(mask=mask, w_bits=w_bits, sparsity=module.sparsity)
    scales = SCALE_BYTES * _out_channels(module) if w_bits < FLOAT_BITS else 0
    return math.ceil(bits / 8) + scales


def _sparse_fields(module: nn.Module, *, w_bits: int) -> dict[str, Any]:
    """The sparsity fields of a layer's LayerCost (none for a dense layer)."""
    size = sparse_weight_bytes(module, w_bits=w_bits)
    if size is None:
        return {}
    from ..compression.sparsity import nm_rows
    from ..spaces.candidate import nm_pattern

    pattern = nm_pattern(module.sparsity)
    aligned = pattern is not None and nm_rows(module.weight_mask).shape[1] % pattern[1] == 0
    return {"sparsity": module.sparsity, "sparse_weight_bytes": size, "sparse_aligned": aligned}


def check_input_shape(input_shape: Any, *, caller: str) -> tuple[int, ...]:
    """Validate a per-sample shape (no batch dim) and return it as a tuple of ints."""
    ok = (
        isinstance(input_shape, Sequence)
        and not isinstance(input_shape, str)
        and len(input_shape) > 0
        and all(isinstance(d, Integral) and not isinstance(d, bool) and d > 0 for d in input_shape)
    )
    if not ok:
        raise ValueError(
            f"The 'input_shape' parameter of {caller} must be a non-empty tuple of positive "
            f"ints without the batch dimension, e.g. (3, 32, 32). Got {input_shape!r} instead."
        )
    return tuple(int(d) for d in input_shape)


def is_attention(module: nn.Module) -> bool:
    return isinstance(module, SplitAttention | nn.MultiheadAttention)


def layer_costs(
    model: nn.Module, *, input_shape: tuple[int, ...], attention: bool = False
) -> list[LayerCost]:
    """Trace one batch-1 forward pass and cost every Conv/Linear call, in execution order, and
    with ``attention`` every attention call too (kind ``"attention"``, after its projections).

    The dummy input is zeros of shape ``(1, *input_shape)`` on the model's device and float
    dtype, run in eval mode under ``torch.no_grad``. The training mode of every module and all
    buffers are restored afterwards, so the model comes back unchanged. A layer called twice
    (weight sharing) yields two rows with the same name. Layers whose weights are used without
    calling their ``forward`` (e.g. ``nn.MultiheadAttention.out_proj``) are not seen.
    """
    shape = check_input_shape(input_shape, caller="layer_costs")
    names = {module: name for name, module in model.named_modules()}
    records: list[LayerCost] = []
    owner = threading.get_ident()

    def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        # Hooks live on the caller's model: a copy made by another thread (e.g. a deepcopy
        # in MeasuredProfile) would carry them along, so only record our own forward pass.
        if threading.get_ident() != owner:
            return
        name = names.get(module, "")
        if is_attention(module):
            records.append(_attention_cost(module, name, args, kwargs, output[0]))
            return
        x = args[0] if args else next(iter(kwargs.values()))
        y = output[0] if isinstance(output, tuple | list) else output
        records.append(_cost(module, name, x, y))

    with _TRACE_LOCK:
        modes = [(m, m.training) for m in model.modules()]
        saved_buffers = [(b, b.detach().clone()) for b in model.buffers()]
        handles = [
            m.register_forward_hook(hook, with_kwargs=True)
            for m in model.modules()
            if is_costed_layer(m) or (attention and is_attention(m))
        ]
        try:
            model.eval()
            device, dtype = _device_and_dtype(model)
            with torch.no_grad():
                model(torch.zeros((1, *shape), device=device, dtype=dtype))
        finally:
            for handle in handles:
                handle.remove()
            for module, training in modes:
                module.training = training
            # Eval-mode forward should not touch buffers, but an observer that updates in
            # eval would silently shift calibration: restore them to be sure.
            with torch.no_grad():
                for buffer, saved in saved_buffers:
                    buffer.copy_(saved)
    return records


def model_size_bytes(model: nn.Module) -> int:
    """Deployed size: what must be stored on the target to run the model.

    Conv/Linear weights at ``w_bits`` (+ fp32 per-channel scales when quantized); every other
    parameter (biases, norm affine) at 32 bits; normalisation running mean/var at 32 bits.
    A sparse layer's weight counts in its cheapest sparse encoding (its mask is part of it).
    Observer buffers (``act_min``/``act_max``), ``num_batches_tracked`` and other buffers are
    excluded. Shared parameters count once. A ``torch.nn.utils.prune`` reparametrised weight
    (``weight_orig``) counts as the layer's weight; its mask is excluded.
    """
    counted: set[int] = set()
    total = 0
    for name, module in model.named_modules():
        if not is_costed_layer(module):
            continue
        weight = _stored_weight(module)
        if weight is None or id(weight) in counted:
            continue
        counted.add(id(weight))
        w_bits, _ = layer_bits(module, name=name)
        sparse = sparse_weight_bytes(module, w_bits=w_bits)
        total += (
            sparse
            if sparse is not None
            else weight_bytes(
                numel=weight.numel(),
                w_bits=w_bits,
                out_channels=_out_channels(module),
                quantizer=layer_quantizer(module),
            )
        )
    for param in model.parameters():
        if id(param) not in counted:
            counted.add(id(param))
            total += param.numel() * _FLOAT_BYTES
    for name, buffer in model.named_buffers():
        if name.rsplit(".", 1)[-1] in _DEPLOYED_BUFFERS:
            total += buffer.numel() * _FLOAT_BYTES
    return total


def peak_activation_bytes(costs: Sequence[LayerCost]) -> int:
    """Peak activation memory, assuming layers run one after another.

    While a layer runs only its input and output are live, so the peak is the largest
    ``input_bytes + output_bytes``. Tensors kept alive across layers (residual branches,
    concatenations) are not counted, so this underestimates nets with long skip connections.
    """
    return max((c.input_bytes + c.output_bytes for c in costs), default=0)


def metrics_with_memory(
    model: nn.Module,
    costs: Sequence[LayerCost],
    *,
    latency_ms: float,
    energy_mj: float,
    details: Mapping[str, Any],
) -> HardwareMetrics:
    """A profile's :class:`HardwareMetrics`: its own latency, energy and details, with size and
    peak memory computed from the model's bits (``costs`` from :func:`layer_costs`) the same way
    for every profile, so that profiles differ only where they measure or estimate."""
    size_bytes, peak_mem_bytes = model_size_bytes(model), peak_activation_bytes(costs)
    return HardwareMetrics(latency_ms, energy_mj, size_bytes, peak_mem_bytes, details)


def _cost(module: nn.Module, name: str, x: torch.Tensor, y: torch.Tensor) -> LayerCost:
    w_bits, a_bits = layer_bits(module, name=name)
    in_elems, out_elems = x.numel(), y.numel()
    weight_numel = module.weight.numel()
    if isinstance(module, _ConvNd):
        kind = "conv"
        kernel = math.prod(module.kernel_size)
        if module.transposed:
            # Each input element is scattered into out_channels/groups * kernel outputs.
            macs = in_elems * (module.out_channels // module.groups) * kernel
        else:
            macs = out_elems * (module.in_channels // module.groups) * kernel
    else:
        kind = "linear"
        macs = out_elems * module.in_features  # out_features * in_features * leading dims
    input_bytes, output_bytes = activation_bytes(
        input_elems=in_elems, output_elems=out_elems, a_bits=a_bits
    )
    return LayerCost(
        name=name,
        kind=kind,
        macs=int(macs),
        weight_params=int(weight_numel),
        w_bits=w_bits,
        a_bits=a_bits,
        input_elems=int(in_elems),
        output_elems=int(out_elems),
        weight_bytes=weight_bytes(
            numel=weight_numel,
            w_bits=w_bits,
            out_channels=_out_channels(module),
            quantizer=layer_quantizer(module),
        ),
        input_bytes=input_bytes,
        output_bytes=output_bytes,
        quantizer=layer_quantizer(module) if w_bits < FLOAT_BITS else UNIFORM,
        **_sparse_fields(module, w_bits=w_bits),
        in_channels=_in_channels(module),
        out_channels=_out_channels(module),
        groups=module.groups if isinstance(module, _ConvNd) else 1,
    )


def _attention_cost(
    module: nn.Module, name: str, args: tuple, kwargs: dict, output: torch.Tensor
) -> LayerCost:
    inputs = dict(zip(("query", "key", "value"), args, strict=False)) | kwargs
    query, key, value = inputs["query"], inputs["key"], inputs["value"]
    batch = 1 if query.dim() == 2 else query.shape[0 if module.batch_first else 1]
    length = query.numel() // query.shape[-1] // batch  # query tokens
    source = key.numel() // key.shape[-1] // batch  # key and value tokens
    inner = module.num_heads * module.head_dim  # the heads' width, less after pruning heads
    macs = 2 * batch * length * source * inner  # scores q.k and the weighted sum of v
    scores = batch * module.num_heads * length * source
    weight_params = 0
    if isinstance(module, SplitAttention):  # its projections are Linear rows of their own
        input_elems, output_elems = batch * (length + 2 * source) * inner, batch * length * inner
    else:  # nn.MultiheadAttention: its projections run inside this call
        e, kdim, vdim = module.embed_dim, module.kdim, module.vdim
        macs += batch * (length * e * e + source * (kdim + vdim) * e + length * e * e)
        weight_params = (2 * e + kdim + vdim) * e
        input_elems, output_elems = query.numel() + key.numel() + value.numel(), output.numel()
    return LayerCost(
        name=name,
        kind="attention",
        macs=int(macs),
        weight_params=int(weight_params),
        w_bits=FLOAT_BITS,
        a_bits=FLOAT_BITS,
        input_elems=int(input_elems),
        output_elems=int(output_elems + scores),
        weight_bytes=weight_params * _FLOAT_BYTES,
        input_bytes=int(input_elems * _FLOAT_BYTES),
        output_bytes=int((output_elems + scores) * _FLOAT_BYTES),
    )


def _out_channels(module: nn.Module) -> int:
    return module.out_channels if isinstance(module, _ConvNd) else module.out_features


def _in_channels(module: nn.Module) -> int:
    return module.in_channels if isinstance(module, _ConvNd) else module.in_features


def _stored_weight(module: nn.Module) -> torch.Tensor | None:
    orig = getattr(module, "weight_orig", None)
    if isinstance(orig, nn.Parameter):
        return orig
    return getattr(module, "weight", None)


def _device_and_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    tensors = list(model.parameters()) + list(model.buffers())
    device = tensors[0].device if tensors else torch.device("cpu")
    dtype = next((t.dtype for t in tensors if t.is_floating_point()), torch.float32)
    return device, dtype
