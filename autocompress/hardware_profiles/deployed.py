"""The ONNX model a host runtime deploys, for timing: integer kernels where the bits allow.

A fake-quant model is not what a user deploys, and its float twin ignores the bit-widths. What
onnxruntime runs fast is its own QDQ format: ``QuantizeLinear -> DequantizeLinear`` around a
Conv/Gemm/MatMul, which its graph optimiser fuses into integer kernels (``QLinearConv``,
``QLinearMatMul``, ...). :func:`deployed_onnx` exports the float copy of a model and hands it to
``onnxruntime.quantization.quantize_static`` (QDQ, per-channel int8 weights, uint8
activations), listing as nodes to quantize exactly the layers whose weights and inputs have at
most 8 bits. Every such layer runs at int8 (onnxruntime has no narrower CPU kernels, so a 3- or
4-bit layer executes as int8); every other layer runs at fp32.

The quantization ranges come from two seeded random inputs: they decide the values, not the
kernels, and timing does not depend on them. The graph is for timing only; the verified deploy
artefact is :mod:`autocompress.export.onnx_export`.

:func:`executed_precisions` reads an optimised graph and says which precision each layer really
ran at, so a layer the optimiser left in float (no fused kernel for its pattern) is reported
as such rather than assumed.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import re
import tempfile
import threading
import warnings
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autocompress.hardware_profiles.graph import is_costed_layer, layer_bits

__all__ = [
    "FP32",
    "INT8",
    "INTEGER_KERNELS",
    "ConversionReuse",
    "DeployedOnnx",
    "deployed_onnx",
    "deployed_precision",
    "executed_precisions",
    "float_copy",
    "int8_plan",
    "module_of_node",
    "precision_summary",
    "runs_int8",
]

INT8 = "int8"
FP32 = "fp32"
#: The widest weights and activations onnxruntime's integer CPU kernels take.
INT8_MAX_BITS = 8
_INPUT_SEED = 0
_CALIBRATION_INPUTS = 2
# Ops whose weights the QDQ format quantizes: a layer's Conv/Linear exports as one of them.
_LAYER_OPS = ("Conv", "Gemm", "MatMul")
#: onnxruntime's integer kernels, as its QDQ fusions produce them in an optimised graph.
INTEGER_KERNELS = (
    "QLinearConv",
    "QLinearMatMul",
    "QGemm",
    "ConvInteger",
    "MatMulInteger",
    "MatMulIntegerToFloat",
    "DynamicQuantizeMatMul",
)
# The optimiser names a fused node after the node it replaced, plus "_token_<n>".
_FUSED_SUFFIX = re.compile(r"_token_\d+$")
# torch.onnx.export keeps exporter state in module globals: one export at a time.
_EXPORT_LOCK = threading.Lock()


def deployed_precision(w_bits: int, a_bits: int) -> str:
    """The precision a host runtime computes a layer with these bits at: int8 when both fit in
    8 bits, fp32 otherwise (a weight-only or 16-bit layer has no integer CPU kernel)."""
    return INT8 if max(w_bits, a_bits) <= INT8_MAX_BITS else FP32


def runs_int8(module: nn.Module, *, name: str = "") -> bool:
    """Whether a deployed runtime (onnxruntime, ExecuTorch, LiteRT) runs this layer with int8
    kernels: its bits fit (:func:`deployed_precision`) and its fake-quant is on (a layer with
    no fake-quant switch is judged by its bits alone)."""
    enabled = bool(getattr(module, "quant_enabled", True))
    return enabled and deployed_precision(*layer_bits(module, name=name)) == INT8


def int8_plan(model: nn.Module) -> dict[str, bool]:
    """``{layer: runs int8}`` for every Conv/Linear layer of ``model`` (a bare layer is ``""``),
    in module order, by :func:`runs_int8`: the one plan that every runtime's export, the LUT's
    layer keys and the reports follow."""
    return {
        name: runs_int8(module, name=name)
        for name, module in model.named_modules()
        if is_costed_layer(module)
    }


@dataclass(frozen=True)
class DeployedOnnx:
    """ONNX bytes for timing, and per Conv/Linear layer (by module name) its requested
    ``(w_bits, a_bits)`` and the precision the graph asks the runtime to run it at."""

    model_bytes: bytes
    requested: dict[str, tuple[int, int]] = field(default_factory=dict)
    planned: dict[str, str] = field(default_factory=dict)


class ConversionReuse:
    """For profiles that convert a model before timing it: :meth:`_converted` makes what a
    runtime runs (ONNX, ``.pte``, ``.tflite``), and :meth:`reusing_conversions` keeps each
    conversion for the next time the same model is timed."""

    _conversions: weakref.WeakKeyDictionary | None = None

    @contextlib.contextmanager
    def reusing_conversions(self) -> Iterator[None]:
        """Within it, each model object is converted once per input shape, and later
        ``profile`` calls of the same model time that conversion again: for callers that time
        unchanged models several times (LUT rounds), where converting takes seconds and timing
        milliseconds. The models must not change meanwhile. Conversions are dropped on exit,
        or with their model."""
        self._conversions = weakref.WeakKeyDictionary()
        try:
            yield
        finally:
            self._conversions = None

    def _converted(
        self, model: nn.Module, shape: tuple[int, ...], *, runtime: str, quantized: bool
    ) -> Any:
        """What ``runtime`` runs for ``model`` at input ``shape``, converted here: a
        :class:`DeployedOnnx` (onnxruntime), an ExecuTorch ``LoweredProgram`` or LiteRT's
        ``timing_conversion`` ``(bytes, details)``; kept for ``(model, shape)`` while
        :meth:`reusing_conversions`."""
        kept = None if self._conversions is None else self._conversions.setdefault(model, {})
        if kept is not None and shape in kept:
            return kept[shape]
        if runtime == "litert":
            from autocompress.hardware_profiles.litert import timing_conversion

            converted = timing_conversion(model, seeded_input(shape))
        elif runtime == "executorch":
            from autocompress.hardware_profiles import executorch_backend as et

            converted = et.lower_to_executorch(model, input_shape=shape, seed=0)
        else:
            converted = deployed_onnx(model, input_shape=shape, quantized=quantized)
        if kept is not None:
            kept[shape] = converted
        return converted


def float_copy(model: nn.Module) -> nn.Module:
    """Deep copy in eval mode with fake quantization switched off."""
    host_model = copy.deepcopy(model)
    for module in host_model.modules():
        if hasattr(module, "quant_enabled"):
            module.quant_enabled = False
    return host_model.eval()


def seeded_input(shape: tuple[int, ...], *, seed: int = _INPUT_SEED) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((1, *shape), generator=generator)


def export_onnx(model: nn.Module, x: torch.Tensor) -> bytes:
    """ONNX bytes of ``model`` traced on ``x`` (CPU), exported in memory."""
    model = model.to("cpu")
    buffer = io.BytesIO()
    with _EXPORT_LOCK, warnings.catch_warnings():
        # torch >= 2.9 warns that the TorchScript exporter is legacy; it is still the one that
        # exports plain nn.Modules without extra dependencies, so prefer it while it exists.
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(model, (x,), buffer, dynamo=False)
        except TypeError:  # torch without the dynamo switch: legacy exporter is the default
            buffer = io.BytesIO()
            torch.onnx.export(model, (x,), buffer)
        except RuntimeError:  # legacy exporter gone or failed: try the torch.export one
            buffer = io.BytesIO()
            torch.onnx.export(model, (x,), buffer, dynamo=True)
    return buffer.getvalue()


def deployed_onnx(
    model: nn.Module, *, input_shape: tuple[int, ...], quantized: bool = True
) -> DeployedOnnx:
    """The graph a host runtime deploys for ``model`` (see the module doc); with
    ``quantized=False`` the float twin (every layer fp32). ``model`` is not modified."""
    requested = {
        name: layer_bits(module, name=name)
        for name, module in model.named_modules()
        if is_costed_layer(module)
    }
    planned = {
        name: INT8 if int8 and quantized else FP32 for name, int8 in int8_plan(model).items()
    }
    float_bytes = export_onnx(float_copy(model), seeded_input(input_shape))
    int8_layers = {name for name, precision in planned.items() if precision == INT8}
    if not int8_layers:
        return DeployedOnnx(float_bytes, requested, planned)
    return DeployedOnnx(_quantize(float_bytes, int8_layers, input_shape), requested, planned)


def _quantize(float_bytes: bytes, layers: set[str], input_shape: tuple[int, ...]) -> bytes:
    try:
        import onnx
        from onnxruntime.quantization import (
            CalibrationDataReader,
            QuantFormat,
            QuantType,
            quantize_static,
        )
    except ImportError as err:
        raise ImportError(
            "Timing int8 layers needs onnx and onnxruntime: pip install 'autocompress[onnx]'."
        ) from err

    proto = onnx.load_from_string(float_bytes)
    _unshare_initializers(proto)
    nodes = [n.name for n in proto.graph.node if n.op_type in _LAYER_OPS and module_of_node(n.name)]
    nodes = [n for n in nodes if module_of_node(n) in layers]
    input_name = proto.graph.input[0].name
    feeds = [
        {input_name: seeded_input(input_shape, seed=_INPUT_SEED + i).numpy()}
        for i in range(_CALIBRATION_INPUTS)
    ]

    class Feeds(CalibrationDataReader):
        def __init__(self) -> None:
            self._feeds = iter(feeds)

        def get_next(self) -> dict[str, Any] | None:
            return next(self._feeds, None)

    root = logging.getLogger()
    with tempfile.TemporaryDirectory(prefix="autocompress-int8-") as folder:
        source, target = Path(folder) / "float.onnx", Path(folder) / "int8.onnx"
        onnx.save(proto, str(source))
        root.addFilter(_quantizer_chatter)
        try:
            quantize_static(
                str(source),
                str(target),
                Feeds(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                nodes_to_quantize=nodes,
            )
        finally:
            root.removeFilter(_quantizer_chatter)
        return target.read_bytes()


def _unshare_initializers(proto: Any) -> None:
    """Give every node input its own initializer, in place.

    The exporter keeps one copy of equal parameters (the zero biases that folding an untrained
    BatchNorm gives every conv, tied weights), reached directly or through ``Identity`` nodes.
    A bias shared by convs with different input scales cannot become each one's int32 bias, so
    onnxruntime fuses no integer kernel for them and runs them fp32: a timing artefact that a
    trained model, whose parameters differ, does not have.
    """
    import onnx

    graph = proto.graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    outputs = {value.name for value in graph.output}

    def own_copy(source: str, name: str) -> None:
        copy = onnx.TensorProto()
        copy.CopyFrom(initializers[source])
        copy.name = name
        graph.initializer.append(copy)
        initializers[name] = copy

    kept, copied = [], set()
    for node in graph.node:
        reads_initializer = node.op_type == "Identity" and node.input[0] in initializers
        if reads_initializer and node.output[0] not in outputs:
            copied.add(node.input[0])
            own_copy(node.input[0], node.output[0])
        else:
            kept.append(node)
    used: set[str] = set()
    for node in kept:
        for index, name in enumerate(node.input):
            if name in used:
                node.input[index] = f"{name}_unshared_{len(initializers)}"
                own_copy(name, node.input[index])
            if name in initializers:
                used.add(node.input[index])
    del graph.node[:]
    graph.node.extend(kept)
    # Only the sources of the removed Identity nodes can have lost their last reader.
    inputs = {value.name for value in graph.input}
    unused = [t for t in graph.initializer if t.name in copied - used - outputs - inputs]
    for tensor in unused:
        graph.initializer.remove(tensor)


def _quantizer_chatter(record: logging.LogRecord) -> bool:
    # quantize_static warns on the root logger at every call (advice to pre-process, biases it
    # leaves in float): facts about the graph's values, not about which kernels a timing runs.
    quantizer = "onnxruntime" in record.pathname and "quantization" in record.pathname
    return not (quantizer and record.levelno < logging.ERROR)


def module_of_node(node_name: str) -> str:
    """The module name in a TorchScript-exported node name; "" when the node is not inside a
    named module.

    The exporter names each scope on the path by the module's last attribute name plus any
    numeric atoms before it (``/layer1/layer1.0/conv1/Conv`` is ``layer1.0.conv1``,
    ``/features/features.0/Conv`` is ``features.0``), so the full name is rebuilt from the last
    atom of every scope.
    """
    parts = _FUSED_SUFFIX.sub("", node_name).split("/")
    return ".".join(scope.rsplit(".", 1)[-1] for scope in parts[1:-1] if scope)


def executed_precisions(optimized: Any, layers: Mapping[str, str]) -> dict[str, str]:
    """Per layer of ``layers`` (module name -> planned precision), the precision it ran at in
    ``optimized`` (an ``onnx.ModelProto`` onnxruntime wrote after optimising): int8 when one of
    its nodes is an integer kernel, fp32 otherwise."""
    integer = {module_of_node(n.name) for n in optimized.graph.node if n.op_type in INTEGER_KERNELS}
    return {name: INT8 if name in integer else FP32 for name in layers}


def precision_summary(
    requested: Mapping[str, tuple[int, int]],
    executed: Mapping[str, str],
    planned: Mapping[str, str],
) -> str:
    """One sentence: how many layers ran at each precision, which asked for other bits, and
    which were planned int8 (:func:`int8_plan`) but ran fp32."""
    if not executed:
        return "No Conv/Linear layer."
    counts = {p: sum(1 for v in executed.values() if v == p) for p in (INT8, FP32)}
    parts = [f"{counts[INT8]} layer(s) ran int8 kernels, {counts[FP32]} ran fp32"]
    narrower = sorted(
        {
            f"w{w}/a{a}"
            for name, (w, a) in requested.items()
            if executed.get(name) == INT8 and (w, a) != (8, 8)
        }
    )
    if narrower:
        parts.append(f"{', '.join(narrower)} executed as int8 (no narrower CPU kernel)")
    unfused = sorted(
        name for name in requested if planned.get(name) == INT8 and executed.get(name) == FP32
    )
    if unfused:
        shown = ", ".join(unfused[:3]) + (", ..." if len(unfused) > 3 else "")
        parts.append(
            f"{len(unfused)} layer(s) quantized to <= 8 bits ran fp32 because the runtime "
            f"fused no integer kernel for them ({shown})"
        )
    return "; ".join(parts) + "."
