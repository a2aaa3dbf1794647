"""ONNX export of a compressed model with real integer weights and QDQ activations.

Every fake-quant layer becomes standard ONNX (opset 21) that computes exactly what the
fake-quant computes:

* weights: integer initializers (per output channel, zero point 0) feeding
  ``DequantizeLinear(axis=0)``. The container is the narrowest integer type that onnxruntime
  dequantizes: INT4 for 2..4 bits, INT8 for 5..8, INT16 for 9..16, INT32 for 17..31 (ONNX has
  no 3-, 5-, 6- or 7-bit type; the integers stay inside the layer's own range, so the
  dequantized weights equal the fake-quant weights bit for bit). 32-bit weights stay float.
  Non-uniform weights (pot, apot, codebook) are their level indices in a UINT8 initializer,
  ``Cast`` to INT32 and ``Gather``-ed from the layer's float32 level table, then (pot, apot)
  ``Mul``-tiplied by the per-channel scales: the same float32 lookups and products as the
  fake-quant, so again bit for bit.
* input activations: ``QuantizeLinear -> DequantizeLinear`` with the layer's scale and zero
  point (from ``act_min``/``act_max``, as :func:`activation_qparams` computes them), in UINT8 for
  up to 8 bits and UINT16 for 9..16 bits. Below the container width a ``Clip`` to the layer's
  own levels ``0..2^a_bits - 1`` comes first (QuantizeLinear would saturate at the container's
  range instead). 17..31-bit activations have no QuantizeLinear type and are exported as the
  float ops of the fake-quant (Div, Round, Add, Clip, Sub, Mul). 32-bit inputs stay float.

How: the model is copied, each quant layer is wrapped so that its quantized input and weight
pass through marker ops (``autocompress::QuantizeInput`` / ``QuantizeWeight``), the copy is
exported with torch's TorchScript-based exporter, and the markers are then rewritten into the
nodes and initializers above with ``onnx.helper``. Batch normalisation is NOT folded into a
quantized convolution: the fake-quant model quantizes the convolution's own weights and applies
batch norm afterwards, and the export keeps that order so its numerics match.

onnxruntime (checked with 1.32) runs all of it on CPU and fuses QDQ groups into integer kernels
where its graph optimiser has a pattern for them.
"""

from __future__ import annotations

import copy
import io
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..compression.quantization import (
    FLOAT_BITS,
    UNIFORM,
    QuantConv2d,
    QuantLinear,
    activation_qparams,
    fake_quantize,
    lsq_grid,
    weight_code,
)
from ..hardware_profiles.deployed import module_of_node
from .packing import integer_weight, pack_bits

ONNX_OPSET = 21  # first opset with INT4/UINT4 and 16-bit QuantizeLinear/DequantizeLinear
ONNX_IR_VERSION = 10  # first IR version with INT4; onnxruntime 1.32 reads up to 11
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
_DOMAIN = "autocompress"
_INPUT_MARKER = "QuantizeInput"
_WEIGHT_MARKER = "QuantizeWeight"
NONUNIFORM_INDEX_FORMAT = "uint8"  # non-uniform weights have at most 8 bits: one index a byte


@dataclass(frozen=True)
class LayerStorage:
    """How one Conv/Linear layer is stored in the ONNX file.

    ``weight_format``: ``int4`` | ``int8`` | ``int16`` | ``int32`` | ``float32``.
    ``activation_format``: ``uint8`` | ``uint16`` (QDQ), ``float ops`` (the fake-quant as float
    arithmetic) or ``float32`` (not quantized). ``note`` says why a container is wider than the
    requested bits ("" when it is exactly as requested).
    """

    name: str
    kind: str
    w_bits: int
    weight_format: str
    a_bits: int
    activation_format: str
    note: str = ""
    quantizer: str = UNIFORM  # the weights' quantizer; non-uniform: weight_format holds indices

    @property
    def fallback(self) -> bool:
        """The weight container is wider than the layer's bits (stored bigger than predicted)."""
        return _container_bits(self.weight_format) != self.w_bits

    def to_dict(self) -> dict[str, Any]:
        data = {**asdict(self), "fallback": self.fallback}
        if self.quantizer == UNIFORM:  # reports of uniform runs stay as they were
            del data["quantizer"]
        return data


@dataclass(frozen=True)
class OnnxExport:
    path: Path
    opset: int
    layers: tuple[LayerStorage, ...]


def weight_format(w_bits: int) -> str:
    """The ONNX container of a ``w_bits``-bit weight (see the module doc)."""
    if w_bits >= FLOAT_BITS:
        return "float32"
    for container in (4, 8, 16, 32):
        if w_bits <= container:
            return f"int{container}"
    raise AssertionError("unreachable")  # w_bits < 32 always fits int32


def activation_format(a_bits: int) -> str:
    """The ONNX representation of a layer's ``a_bits``-bit input (see the module doc)."""
    if a_bits >= FLOAT_BITS:
        return "float32"
    if a_bits <= 8:
        return "uint8"
    if a_bits <= 16:
        return "uint16"
    return "float ops"


def _container_bits(fmt: str) -> int:
    return int(fmt.removeprefix("uint").removeprefix("int").removeprefix("float"))


def _note(w_bits: int, a_bits: int, w_fmt: str, a_fmt: str) -> str:
    notes = []
    if w_fmt != "float32" and _container_bits(w_fmt) != w_bits:
        qmax = 2 ** (w_bits - 1) - 1
        notes.append(
            f"no int{w_bits} type in ONNX: {w_bits}-bit weights stored in {w_fmt} "
            f"(values within [-{qmax}, {qmax}])"
        )
    if a_fmt in ("uint8", "uint16") and _container_bits(a_fmt) != a_bits:
        notes.append(
            f"{a_bits}-bit input carried in {a_fmt} QDQ with a Clip to levels 0..{2**a_bits - 1}"
        )
    if a_fmt == "float ops":
        notes.append(f"no {a_bits}-bit QuantizeLinear type: input fake-quant exported as float ops")
    return "; ".join(notes)


# --- export -------------------------------------------------------------------------------------


class _MarkInput(torch.autograd.Function):
    """Forward: the layer's input fake-quant. Export: a marker node rewritten afterwards."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: Tensor, zero_point: Tensor, qmax: int, layer: str):
        return fake_quantize(x, scale, zero_point, 0, qmax)

    @staticmethod
    def symbolic(g, x, scale, zero_point, qmax, layer):
        out = g.op(f"{_DOMAIN}::{_INPUT_MARKER}", x, layer_s=layer)
        out.setType(x.type())
        return out


class _MarkWeight(torch.autograd.Function):
    """Forward: the (already fake-quantized) weight. Export: a marker node rewritten afterwards."""

    @staticmethod
    def forward(ctx, weight: Tensor, layer: str):
        return weight.clone()

    @staticmethod
    def symbolic(g, weight, layer):
        out = g.op(f"{_DOMAIN}::{_WEIGHT_MARKER}", weight, layer_s=layer)
        out.setType(weight.type())
        return out


@dataclass(frozen=True)
class _LayerPlan:
    storage: LayerStorage
    integers: Tensor | None  # int32 weights, None when the weight stays float
    weight_scale: Tensor | None
    act_scale: Tensor | None  # float32 scalar
    act_zero_point: Tensor | None  # float32 scalar holding an integer
    levels: Tensor | None = None  # float32 level table of a non-uniform weight (integers index it)


class _ExportLayer(nn.Module):
    """A quant layer for export: same math, quantized tensors routed through the markers."""

    def __init__(self, layer: QuantConv2d | QuantLinear, plan: _LayerPlan) -> None:
        super().__init__()
        # Not a submodule: its float weight and observer buffers must not become initializers.
        object.__setattr__(self, "_layer", layer)
        self.name = plan.storage.name
        self.a_bits = plan.storage.a_bits
        self.quant_weight = plan.integers is not None
        self.quant_input = plan.act_scale is not None
        weight = layer.masked_weight().detach()
        if self.quant_weight:
            weight = layer.quantized_weight().detach()
        self.register_buffer("weight", weight)
        self.register_buffer("bias", None if layer.bias is None else layer.bias.detach())
        if self.quant_input:
            self.register_buffer("act_scale", plan.act_scale)
            self.register_buffer("act_zero_point", plan.act_zero_point)

    def forward(self, x: Tensor) -> Tensor:
        if self.quant_input:
            qmax = 2**self.a_bits - 1
            x = _MarkInput.apply(x, self.act_scale, self.act_zero_point, qmax, self.name)
        weight = _MarkWeight.apply(self.weight, self.name) if self.quant_weight else self.weight
        if isinstance(self._layer, QuantConv2d):
            return nn.Conv2d._conv_forward(self._layer, x, weight, self.bias)
        return F.linear(x, weight, self.bias)


def _plan(name: str, module: QuantConv2d | QuantLinear) -> _LayerPlan:
    kind = "conv" if isinstance(module, QuantConv2d) else "linear"
    enabled = module.quant_enabled
    w_bits = module.w_bits if enabled else FLOAT_BITS
    a_bits = module.a_bits if enabled else FLOAT_BITS
    w_fmt, a_fmt = weight_format(w_bits), activation_format(a_bits)
    note = _note(w_bits, a_bits, w_fmt, a_fmt)
    if not enabled:
        note = "quantization disabled on this layer: exported in float"
    quantizer = module.w_quantizer if w_bits < FLOAT_BITS else UNIFORM
    integers = scale = levels = act_scale = act_zero_point = None
    if quantizer != UNIFORM:
        w_fmt = NONUNIFORM_INDEX_FORMAT
        indices, levels, scale = weight_code(
            module.masked_weight(), w_bits, quantizer, getattr(module, "codebook", None)
        )
        integers, levels = indices.to(torch.int32).cpu(), levels.float().cpu()
        scale = None if scale is None else scale.float().cpu()
        layout = f"{quantizer}: {w_bits}-bit indices stored in {w_fmt}, Gather from a "
        layout += f"{levels.numel()}-entry float32 level table"
        layout += "" if scale is None else " x per-channel scale"
        note = "; ".join(n for n in (layout, _note(FLOAT_BITS, a_bits, "float32", a_fmt)) if n)
    elif w_fmt != "float32" and getattr(module, "w_step", None) is not None:
        integers, scale = lsq_grid(module.masked_weight(), w_bits, module.w_step)
        integers, scale = integers.cpu(), scale.cpu()
    elif w_fmt != "float32":
        integers, scale = integer_weight(module.masked_weight(), bits=w_bits)
    storage = LayerStorage(
        name, kind, module.w_bits, w_fmt, module.a_bits, a_fmt, note, quantizer=quantizer
    )
    if a_fmt != "float32":
        if not bool(module.act_initialized):
            raise ValueError(
                f"Layer {name!r} has no calibrated activation range (act_initialized is False): "
                "its fake-quant would use each batch's own range, which no static graph can "
                "reproduce. Run at least one training batch through the model first."
            )
        act_scale, act_zero_point = activation_qparams(
            module.act_min.detach().float(), module.act_max.detach().float(), a_bits
        )
    return _LayerPlan(storage, integers, scale, act_scale, act_zero_point, levels)


def export_onnx(
    model: nn.Module,
    path: Path,
    *,
    input_shape: tuple[int, ...],
    opset: int = ONNX_OPSET,
    metadata: Mapping[str, str] | None = None,
) -> OnnxExport:
    """Write ``model`` (eval mode, fake-quant as trained) to ``path`` as QDQ ONNX.

    The input is named ``input`` with shape ``(batch, *input_shape)`` (dynamic batch), the
    output ``logits``. ``metadata`` becomes the model's ``metadata_props`` (string keys and
    values, e.g. :func:`autocompress.export.metadata.onnx_metadata`). ``model`` itself is not
    modified. Returns the per-layer storage report.
    """
    import onnx  # optional dependency: only the ONNX export needs it

    if opset < ONNX_OPSET:
        raise ValueError(
            f"The 'opset' parameter of export_onnx must be >= {ONNX_OPSET} (INT4 and 16-bit "
            f"QuantizeLinear/DequantizeLinear). Got {opset!r} instead."
        )
    metadata = dict(metadata or {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise ValueError(
            "The 'metadata' parameter of export_onnx must map str keys to str values (ONNX "
            f"metadata_props hold strings only). Got {metadata!r} instead."
        )
    work = copy.deepcopy(model).cpu().eval()
    plans: dict[str, _LayerPlan] = {}
    for name, module in list(work.named_modules()):
        if isinstance(module, QuantConv2d | QuantLinear):
            plans[name] = _plan(name, module)
            wrapper = _ExportLayer(module, plans[name])
            if not name:
                work = wrapper
            else:
                parent, _, child = name.rpartition(".")
                setattr(work.get_submodule(parent), child, wrapper)

    example = torch.zeros(1, *input_shape)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        # torch >= 2.9 calls the TorchScript exporter legacy; it is the one that turns an
        # autograd.Function's ``symbolic`` into custom nodes, which the rewrite below needs.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            work,
            (example,),
            buffer,
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            # Declared only when markers exist: torch warns about an unused custom domain.
            custom_opsets={_DOMAIN: 1} if plans else None,
        )
    proto = onnx.load_from_string(buffer.getvalue())
    _rewrite_markers(proto, plans)
    _shorten_names(proto)
    proto.ir_version = ONNX_IR_VERSION
    proto.producer_name = "autocompress"
    if metadata:
        onnx.helper.set_model_props(proto, metadata)
    onnx.checker.check_model(proto, full_check=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(path))
    return OnnxExport(path=path, opset=opset, layers=tuple(p.storage for p in plans.values()))


def _rewrite_markers(proto: Any, plans: dict[str, _LayerPlan]) -> None:
    """Replace the marker nodes by QDQ nodes and integer initializers, in place."""
    from onnx import helper, numpy_helper

    graph = proto.graph
    nodes = []
    renamed: dict[str, str] = {}
    for node in graph.node:
        if node.domain != _DOMAIN:
            nodes.append(node)
            continue
        layer = next(a.s.decode() for a in node.attribute if a.name == "layer")
        plan = plans[layer]
        x = node.input[0]
        # Readable tensor names: "<layer>/input_dequantized" instead of the tracer's scope path.
        role = "weight" if node.op_type == _WEIGHT_MARKER else "input"
        out = renamed[node.output[0]] = f"{layer}/{role}_dequantized"
        if node.op_type == _WEIGHT_MARKER and plan.levels is not None:
            nodes.extend(_lookup_nodes(graph, layer, plan, out))
            continue
        if node.op_type == _WEIGHT_MARKER:
            q_name, s_name = f"{layer}.weight_quantized", f"{layer}.weight_scale"
            graph.initializer.append(_integer_tensor(q_name, plan))
            graph.initializer.append(numpy_helper.from_array(plan.weight_scale.numpy(), s_name))
            nodes.append(
                helper.make_node(
                    "DequantizeLinear", [q_name, s_name], [out], name=f"{layer}/weight_dq", axis=0
                )
            )
            continue
        nodes.extend(_input_nodes(graph, layer, plan, x, out))
    for node in nodes:
        for i, name in enumerate(node.input):
            node.input[i] = renamed.get(name, name)
    del graph.node[:]
    graph.node.extend(nodes)
    # The float weights the markers read are now unused; so are value_infos of marker outputs.
    used = {name for node in graph.node for name in node.input}
    kept = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    del graph.value_info[:]
    kept_opsets = [o for o in proto.opset_import if o.domain != _DOMAIN]
    del proto.opset_import[:]
    proto.opset_import.extend(kept_opsets)


def _shorten_names(proto: Any) -> None:
    """Tracer names repeat the module path at every level ("/layer1/layer1.0/conv1/Conv",
    "/features/features.0/features.0.1/Relu_output_0"); "<module name>/<last part>"
    ("layer1.0.conv1/Conv", "features.0.1/Relu_output_0") says the same, so the file is smaller
    and easier to read. Left unchanged should two names still collide."""
    graph = proto.graph
    names = {n for node in graph.node for n in [*node.input, *node.output, node.name]}
    keep = {i.name for i in [*graph.input, *graph.output, *graph.initializer]}
    mapping = {n: _short_name(n) for n in names if n.startswith("/") and n not in keep}
    unchanged = names - set(mapping)
    if len(set(mapping.values())) != len(mapping) or set(mapping.values()) & unchanged:
        return
    for node in graph.node:
        node.name = mapping.get(node.name, node.name)
        for field in (node.input, node.output):
            for i, name in enumerate(field):
                field[i] = mapping.get(name, name)


def _short_name(name: str) -> str:
    module, last = module_of_node(name), name.rsplit("/", 1)[-1]
    return f"{module}/{last}" if module else last


def _integer_tensor(name: str, plan: _LayerPlan) -> Any:
    """The weight integers as a raw (byte-packed) initializer of the planned container."""
    from onnx import TensorProto, helper

    fmt, ints = plan.storage.weight_format, plan.integers
    if fmt == "int4":
        # ONNX packs INT4 two per byte, element 0 in the low nibble: the little-endian bit order
        # of pack_bits with 4-bit fields.
        data = pack_bits(ints, bits=4).numpy().tobytes()
    else:
        data = ints.numpy().astype(f"<i{_container_bits(fmt) // 8}").tobytes()
    dtype = getattr(TensorProto, fmt.upper())
    return helper.make_tensor(name, dtype, list(ints.shape), data, raw=True)


def _lookup_nodes(graph: Any, layer: str, plan: _LayerPlan, out: str) -> list:
    """A non-uniform weight: Cast(indices) -> Gather(levels) [-> Mul(per-channel scale)]."""
    from onnx import TensorProto, helper, numpy_helper

    indices, levels = plan.integers, plan.levels
    i_name, l_name = f"{layer}.weight_indices", f"{layer}.weight_levels"
    data = indices.numpy().astype("<u1").tobytes()
    shape = list(indices.shape)
    graph.initializer.append(helper.make_tensor(i_name, TensorProto.UINT8, shape, data, raw=True))
    graph.initializer.append(numpy_helper.from_array(levels.numpy(), l_name))
    one = f"{layer}.weight_index_step"
    graph.initializer.append(numpy_helper.from_array(np.ones((), dtype=np.float32), one))
    as_float = f"{layer}/weight_indices_float"
    wide, gathered = f"{layer}/weight_indices_int32", f"{layer}/weight_levels_gathered"
    last = out if plan.weight_scale is None else gathered
    nodes = [
        # DequantizeLinear with step 1 (exact for 0..255) instead of a bare Cast: onnxruntime
        # does not constant-fold DequantizeLinear, so the weights are not folded into a float
        # initializer, which its optimiser would then rewrite (fold batch norm into them, fuse
        # the conv) with different float rounding than the fake-quant.
        helper.make_node("DequantizeLinear", [i_name, one], [as_float], name=f"{layer}/weight_dq"),
        helper.make_node(
            "Cast", [as_float], [wide], name=f"{layer}/weight_cast", to=TensorProto.INT32
        ),
        helper.make_node("Gather", [l_name, wide], [last], name=f"{layer}/weight_gather", axis=0),
    ]
    if plan.weight_scale is not None:
        s_name = f"{layer}.weight_scale"
        scale = plan.weight_scale.reshape(-1, *([1] * (indices.dim() - 1)))
        graph.initializer.append(numpy_helper.from_array(scale.numpy(), s_name))
        nodes.append(helper.make_node("Mul", [gathered, s_name], [out], name=f"{layer}/weight_mul"))
    return nodes


def _input_nodes(graph: Any, layer: str, plan: _LayerPlan, x: str, out: str) -> list:
    from onnx import TensorProto, helper, numpy_helper

    a_bits, fmt = plan.storage.a_bits, plan.storage.activation_format
    qmax = 2**a_bits - 1
    scale, zero_point = plan.act_scale.float(), plan.act_zero_point.float()

    def const(suffix: str, value: Tensor) -> str:
        name = f"{layer}.{suffix}"
        graph.initializer.append(numpy_helper.from_array(value.reshape(()).numpy(), name))
        return name

    s_name = const("input_scale", scale)
    if fmt == "float ops":
        # The fake-quant itself, op by op: round(x / s) + z, clamped to [0, qmax], minus z, * s.
        z_name = const("input_zero_point", zero_point)
        lo, hi = (
            const("input_qmin", torch.tensor(0.0)),
            const("input_qmax", torch.tensor(float(qmax))),
        )
        fq = [f"{layer}/input_fq_{i}" for i in range(5)] + [out]
        ops = [
            ("Div", [x, s_name]),
            ("Round", [fq[0]]),
            ("Add", [fq[1], z_name]),
            ("Clip", [fq[2], lo, hi]),
            ("Sub", [fq[3], z_name]),
            ("Mul", [fq[4], s_name]),
        ]
        nodes = [
            helper.make_node(op, inputs, [fq[i]], name=f"{layer}/input_{op.lower()}")
            for i, (op, inputs) in enumerate(ops)
        ]
        return nodes

    z_name = f"{layer}.input_zero_point"
    z_type = TensorProto.UINT8 if fmt == "uint8" else TensorProto.UINT16
    graph.initializer.append(helper.make_tensor(z_name, z_type, [], [int(zero_point.item())]))
    nodes = []
    source = x
    if a_bits != _container_bits(fmt):
        # QuantizeLinear saturates at the container's range; the fake-quant at 2^a_bits - 1.
        lo = const("input_min", (0.0 - zero_point) * scale)
        hi = const("input_max", (qmax - zero_point) * scale)
        source = f"{layer}/input_clipped"
        nodes.append(helper.make_node("Clip", [x, lo, hi], [source], name=f"{layer}/input_clip"))
    q = f"{layer}/input_quantized"
    nodes.append(
        helper.make_node("QuantizeLinear", [source, s_name, z_name], [q], name=f"{layer}/input_q")
    )
    nodes.append(
        helper.make_node("DequantizeLinear", [q, s_name, z_name], [out], name=f"{layer}/input_dq")
    )
    return nodes


def dequantized_weights(path: Path) -> dict[str, Tensor]:
    """``{layer: weights}`` as onnxruntime dequantizes them from the integer initializers of an
    exported file (graph optimisations off), for comparison with the fake-quant weights."""
    import onnx

    from .verify import onnx_session

    proto = onnx.load(str(path))
    suffix = "/weight_dequantized"
    names = [n.output[0] for n in proto.graph.node if n.output[0].endswith(suffix)]
    if not names:
        return {}
    # Expose the DequantizeLinear outputs as graph outputs of an in-memory copy.
    proto.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in names)
    session = onnx_session(proto.SerializeToString(), optimize=False)
    shape = [d if isinstance(d, int) else 1 for d in session.get_inputs()[0].shape]
    values = session.run(names, {INPUT_NAME: torch.zeros(shape).numpy()})
    return {n.removesuffix(suffix): torch.from_numpy(v) for n, v in zip(names, values, strict=True)}


__all__ = [
    "INPUT_NAME",
    "ONNX_OPSET",
    "OUTPUT_NAME",
    "LayerStorage",
    "OnnxExport",
    "activation_format",
    "dequantized_weights",
    "export_onnx",
    "weight_format",
]
