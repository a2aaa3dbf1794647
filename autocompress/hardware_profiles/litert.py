"""A candidate as a LiteRT (formerly TensorFlow Lite) model: int8 where the search chose <= 8
bits, float32 elsewhere. Shared by ``autocompress export --format litert`` and
``MeasuredProfile(backend="litert")``.

How a candidate becomes a ``.tflite`` (:func:`convert_litert`):

1. A float copy of the candidate: fake-quant off, each quantized layer's weight replaced by the
   weight it computes with (:meth:`QuantConv2d.quantized_weight`, sparsity mask applied). Those
   are the weights the search scored; an int8 per-channel grid holds a 2-bit grid exactly and
   a 3..7-bit one to within half an int8 step.
2. ``litert_torch.convert`` turns the copy into a float ``.tflite``. The input keeps PyTorch's
   layout (batch 1, NCHW for images): litert-torch adds the transposes to its NHWC kernels
   inside the model, so a deployer feeds what PyTorch is fed
   (:attr:`LiteRTConversion.input_layout`).
3. ai-edge-quantizer quantizes it statically, calibrated on the given inputs: int8 activations
   (per tensor) and int8 weights (symmetric, per output channel). A layer runs int8 when its
   ``w_bits`` and ``a_bits`` are both <= 8 and float32 otherwise. Ops that are not layers
   (pooling, reshapes, padding, additions) follow the nearest layer upstream, else downstream,
   so a float layer is not fed through an extra 8-bit rounding. Model inputs and outputs stay
   float32; the quantizer inserts the QUANTIZE / DEQUANTIZE ops.

litert-torch's own PT2E quantizer is not used: the LiteRT converter quantizes any op that sits
between a DEQUANTIZE and a QUANTIZE, float weights included, so it cannot keep a float layer
between int8 ones; ai-edge-quantizer takes a per-op recipe.

The precision each layer RAN in is read back from the quantized flatbuffer (the dtypes of its
compute op's activation and weight inputs), not assumed from the recipe. LiteRT has no kernels
below 8 bits: a 2..7-bit layer executes as int8, and its record says so.

litert-torch names every op's output tensor after the PyTorch modules it comes from
(``<module>.<Class>_<attribute>`` per level, joined by ``/``); that is how ops are matched to
layers, except the op that writes the model's output, which is named after the output and is
matched by its weight's shape. A layer left unmatched raises an error rather than being
reported wrongly.
Imports of litert-torch, ai-edge-quantizer and ai-edge-litert (the ``litert`` extra) are deferred
to the first conversion.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import re
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from autocompress.compression.quantization import QuantConv2d, QuantLinear
from autocompress.core.validation import check_int
from autocompress.hardware_profiles.deployed import INT8, INT8_MAX_BITS, int8_plan
from autocompress.hardware_profiles.graph import is_costed_layer, layer_bits, layer_quantizer

__all__ = [
    "LayerPrecision",
    "LiteRTConversion",
    "convert_litert",
    "deployable_copy",
    "litert_interpreter",
    "litert_runner",
    "litert_timed_run",
    "litert_versions",
    "timing_conversion",
]

FLOAT32 = "float32"
# Ops that do a layer's multiply-accumulates: their inputs' dtypes say what precision it ran in.
_COMPUTE_OPS = frozenset(
    {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "BATCH_MATMUL", "TRANSPOSE_CONV"}
)
_EXTRA = "pip install 'autocompress[litert]'"
# torch.export and the converter keep global state: one conversion at a time.
_CONVERT_LOCK = threading.Lock()
# ai-edge-quantizer's static int8 recipe: asymmetric int8 activations per tensor, symmetric int8
# weights per output channel (its default_a8w8 recipe).
_INT8_RECIPE = {
    "regex": ".*",
    "operation": "*",
    "algorithm_key": "min_max_uniform_quantize",
    "op_config": {
        "activation_tensor_config": {
            "num_bits": 8,
            "symmetric": False,
            "granularity": "TENSORWISE",
            "dtype": "INT",
        },
        "weight_tensor_config": {
            "num_bits": 8,
            "symmetric": True,
            "granularity": "CHANNELWISE",
            "dtype": "INT",
        },
        "compute_precision": "INTEGER",
        "explicit_dequantize": False,
    },
}


@dataclass(frozen=True)
class LayerPrecision:
    """What one Conv2d/Linear layer asked for and what ran: ``precision`` is ``"int8"``,
    ``"float32"`` or ``"weights W, activations A"`` as read from the converted model; ``ops``:
    the LiteRT ops that compute it; ``note``: where the bits asked for and the precision that
    ran differ."""

    name: str
    w_bits: int
    a_bits: int
    quantizer: str
    requested: str  # "int8" when w_bits and a_bits are <= 8, else "float32"
    precision: str
    weight_format: str  # the dtype of its weights in the model (as every export's layer list)
    activation_format: str  # the dtype of its input activations
    ops: list[str] = field(default_factory=list)
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LiteRTConversion:
    """A converted candidate: the ``.tflite`` bytes, each layer's precision, and the input the
    model expects (``input_shape`` with the batch of 1, ``input_layout`` e.g. ``"NCHW"``)."""

    content: bytes
    layers: list[LayerPrecision]
    input_shape: tuple[int, ...]
    input_layout: str
    calibration_samples: int

    def precision_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for layer in self.layers:
            counts[layer.precision] = counts.get(layer.precision, 0) + 1
        return counts


def convert_litert(
    model: nn.Module,
    *,
    input_shape: tuple[int, ...],
    calibration: Iterable[np.ndarray],
    max_calibration_samples: int = 256,
) -> LiteRTConversion:
    """Convert ``model`` (a candidate with fake-quant layers) to a batch-1 LiteRT model, int8
    where :func:`~.deployed.int8_plan` says so (see the module doc). ``calibration``: batches
    of inputs (``(n, *input_shape)`` arrays) whose activation ranges set the int8 scales; at
    most ``max_calibration_samples`` samples are used. ``model`` is not modified."""
    litert_torch, _ = _modules()
    limit = check_int(
        max_calibration_samples, name="max_calibration_samples", where="convert_litert", minimum=1
    )
    if is_costed_layer(model):  # litert-torch names ops after submodules: give it one
        model = nn.Sequential(model)
    plan = int8_plan(model)
    inputs = []
    if any(plan.values()):  # read first: bad calibration data fails before the slow conversion
        inputs = list(_samples(calibration, tuple(input_shape), limit=limit))
        if not inputs:
            raise ValueError(
                "The 'calibration' parameter of convert_litert must hold at least one input "
                f"of shape {tuple(input_shape)}. Got none."
            )
    host = deployable_copy(model)
    example = torch.zeros((1, *input_shape))
    with _CONVERT_LOCK, _quiet():
        try:
            content = bytes(litert_torch.convert(host, (example,)).model_content())
        except Exception as err:  # the converter raises many exception types
            raise RuntimeError(
                f"litert-torch could not convert the candidate ({type(err).__name__}: {err})."
            ) from err
    graph = _Graph(content)
    owners = graph.owners(host, list(plan))
    if inputs:
        with _CONVERT_LOCK, _quiet():
            content = _quantize(content, _recipe(graph, owners, plan), inputs)
    ran = _Graph(content)
    ran_owners = ran.owners(host, list(plan))
    layers = [
        _layer_precision(name, module, requested=plan[name], ops=ran.compute_ops(ran_owners, name))
        for name, module in host.named_modules()
        if name in plan
    ]
    shape = tuple(int(d) for d in litert_interpreter(content).get_input_details()[0]["shape"])
    return LiteRTConversion(
        content=content,
        layers=layers,
        input_shape=shape,
        input_layout=_layout(shape, tuple(input_shape)),
        calibration_samples=len(inputs),
    )


def litert_interpreter(content: bytes, *, threads: int | None = None) -> Any:
    """An allocated ``ai_edge_litert`` Interpreter of ``content`` with ``threads`` threads
    (None: LiteRT's default). It applies LiteRT's default XNNPACK delegate on CPU."""
    _, interpreter_module = _modules()
    interpreter = interpreter_module.Interpreter(model_content=content, num_threads=threads)
    interpreter.allocate_tensors()
    return interpreter


def litert_runner(content: bytes, *, threads: int | None = None) -> Callable:
    """``run(x) -> logits`` for a batch ``x`` (numpy, PyTorch's layout): the batch-1 model is
    invoked once per sample."""
    interpreter = litert_interpreter(content, threads=threads)
    source = interpreter.get_input_details()[0]["index"]
    target = interpreter.get_output_details()[0]["index"]

    def run(x: np.ndarray) -> np.ndarray:
        outputs = []
        for sample in np.asarray(x, dtype=np.float32):
            interpreter.set_tensor(source, np.ascontiguousarray(sample[None]))
            interpreter.invoke()
            outputs.append(interpreter.get_tensor(target)[0])  # get_tensor copies
        return np.stack(outputs)

    return run


def timing_conversion(model: nn.Module, x: torch.Tensor) -> tuple[bytes, dict[str, Any]]:
    """``model`` converted for timing (calibrated on ``x`` alone: activation ranges change the
    results, not the kernels' speed), and the details that say what runs: shared by
    :class:`~.measured.MeasuredProfile` and :class:`~.remote.RemoteProfile`."""
    converted = convert_litert(model, input_shape=tuple(x.shape[1:]), calibration=[x.numpy()])
    counts = ", ".join(f"{n} {p}" for p, n in sorted(converted.precision_counts().items()))
    return converted.content, {
        "note": (
            "Measured with the LiteRT interpreter (XNNPACK, CPU) on the candidate converted by "
            f"litert-torch: int8 kernels where w_bits and a_bits are <= {INT8_MAX_BITS}, "
            f"float32 elsewhere ({counts} layers; see layer_precision). Latency reflects "
            "architecture, pruning and that split, not bits below 8."
        ),
        "layer_precision": {layer.name: layer.precision for layer in converted.layers},
        "litert_input_layout": converted.input_layout,
        "litert_versions": litert_versions(),
        "litert_bytes": len(converted.content),
    }


def litert_timed_run(
    converted: tuple[bytes, dict[str, Any]], x: torch.Tensor, *, threads: int | None
) -> Callable[[], Any]:
    """For :class:`~.measured.MeasuredProfile`: a no-argument call that runs the model that
    :func:`timing_conversion` ``converted`` once on ``x``."""
    content, _ = converted
    interpreter = litert_interpreter(content, threads=threads)
    source = interpreter.get_input_details()[0]["index"]
    target = interpreter.get_output_details()[0]["index"]
    sample = np.ascontiguousarray(x.numpy(), dtype=np.float32)

    def run() -> np.ndarray:
        interpreter.set_tensor(source, sample)
        interpreter.invoke()
        return interpreter.get_tensor(target)

    return run


def litert_versions() -> str:
    """The versions of the three packages that convert and run the model."""
    from importlib.metadata import version

    _modules()
    names = ("litert-torch", "ai-edge-quantizer", "ai-edge-litert")
    return ", ".join(f"{name} {version(name)}" for name in names)


def _modules() -> tuple[Any, Any]:
    try:
        import ai_edge_quantizer  # noqa: F401  (imported here for the error message only)
        import litert_torch  # heavy, optional: only when a LiteRT model is made
        from ai_edge_litert import interpreter
    except ImportError as err:
        raise ImportError(
            f"LiteRT conversion needs litert-torch, ai-edge-quantizer and ai-edge-litert ({err}): "
            f"{_EXTRA}."
        ) from err
    return litert_torch, interpreter


class _LibraryInfo(logging.Filter):
    """Drops the INFO lines litert-torch and ai-edge-quantizer log on the root logger (one per
    lowered op, per inserted tensor...), which the CLI's INFO logging would print."""

    def filter(self, record: logging.LogRecord) -> bool:
        path = record.pathname.replace(os.sep, "/")
        return record.levelno > logging.INFO or not any(f"/{p}/" in path for p in _CHATTY)


_CHATTY = ("litert_torch", "ai_edge_quantizer")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Without litert-torch's progress lines (printed unless this variable says no) and
    :class:`_LibraryInfo`'s log lines."""
    name = "LITERT_TORCH_SHOW_PROGRESS"
    previous = os.environ.get(name)
    os.environ[name] = "n"
    chatty = _LibraryInfo()
    logging.getLogger().addFilter(chatty)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(chatty)
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


def deployable_copy(model: nn.Module) -> nn.Module:
    """The float model that is converted: a copy of ``model`` in eval mode with fake-quant off
    and each quantized layer's weight replaced by its fake-quant weight (module doc)."""
    host = copy.deepcopy(model).cpu().eval()
    with torch.no_grad():
        for module in host.modules():
            if isinstance(module, QuantConv2d | QuantLinear):
                module.weight.copy_(module.quantized_weight())  # mask applied
                module.weight_mask = None
            if hasattr(module, "quant_enabled"):  # any fake-quant module, as MeasuredProfile
                module.quant_enabled = False
    return host


def _samples(
    batches: Iterable[np.ndarray], input_shape: tuple[int, ...], *, limit: int
) -> Iterator[np.ndarray]:
    """Batch-1 float32 arrays from ``batches``, at most ``limit``."""
    count = 0
    for batch in batches:
        array = np.asarray(batch, dtype=np.float32)
        if array.shape[1:] != tuple(input_shape):
            raise ValueError(
                "The 'calibration' parameter of convert_litert must hold batches of shape "
                f"(n, {', '.join(map(str, input_shape))}). Got a batch of shape {array.shape}."
            )
        for sample in array:
            if count >= limit:
                return
            yield np.ascontiguousarray(sample[None])
            count += 1


def _module_path(model: nn.Module, name: str) -> str:
    """How litert-torch names the module ``name`` of ``model`` in its ops' locations, without
    the root: ``<module>.<Class>_<attribute>`` per level, joined by ``/``."""
    parts, module = [], model
    for attribute in name.split("."):
        module = getattr(module, attribute)
        kind = type(module)
        parts.append(f"{kind.__module__}.{kind.__qualname__}_{attribute}")
    return "/".join(parts)


class _Graph:
    """The ops of a ``.tflite`` (its first subgraph): type, tensors and scope, the name
    ai-edge-quantizer matches its recipe against (output tensor names joined by ``;``, plus a
    trailing ``;``)."""

    def __init__(self, content: bytes) -> None:
        from ai_edge_litert.tools import flatbuffer_utils

        model = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
        graph = model.subgraphs[0]
        self.tensors = graph.tensors
        self.ops: list[tuple[str, list[int], list[int], str]] = []
        for op in graph.operators:
            kind = flatbuffer_utils.opcode_to_name(model, op.opcodeIndex) or "?"
            inputs, outputs = [int(i) for i in op.inputs], [int(i) for i in op.outputs]
            names = [self._name(i) for i in outputs if i >= 0]
            scope = ";".join(n for n in names if n)
            self.ops.append((kind, inputs, outputs, f"{scope};" if scope else ""))

    def _name(self, tensor: int) -> str:
        name = self.tensors[tensor].name
        return name.decode() if isinstance(name, bytes) else str(name or "")

    def dtype(self, tensor: int) -> str:
        from ai_edge_litert.tools import flatbuffer_utils

        return flatbuffer_utils.type_to_name(self.tensors[tensor].type).lower()

    def owners(self, model: nn.Module, layers: list[str]) -> list[set[str]]:
        """Per op, the layers it computes or belongs to. By name first; the op that writes the
        model's output is named after the output instead, so a layer that no compute op is
        named after gets the one unnamed compute op whose weight has its shape. Raises when a
        layer is left without a compute op."""
        patterns = {name: _layer_pattern(model, name) for name in layers}
        owners = [{n for n, p in patterns.items() if p.search(op[3])} for op in self.ops]
        compute = [i for i, op in enumerate(self.ops) if op[0] in _COMPUTE_OPS]
        missing = [name for name in layers if not any(name in owners[i] for i in compute)]
        free = [i for i in compute if not owners[i]]
        for name in list(missing):
            weight = model.get_submodule(name).weight
            fits = [i for i in free if self._fits(i, weight)]
            if len(fits) == 1:
                owners[fits[0]].add(name)
                free.remove(fits[0])
                missing.remove(name)
        if missing:
            raise RuntimeError(
                f"No LiteRT op of the converted model could be matched to the layer(s) "
                f"{missing}, so their precision cannot be set or read back. litert-torch names "
                "ops '<module>.<Class>_<attribute>/...'; a litert-torch that names them "
                "otherwise needs autocompress/hardware_profiles/litert.py updated."
            )
        return owners

    def _fits(self, index: int, weight: torch.Tensor) -> bool:
        """The op's weight (input 1) could be ``weight``: as many elements, and the output
        channels first (CONV_2D OHWI, FULLY_CONNECTED OI) or last (DEPTHWISE_CONV_2D 1HWO)."""
        inputs = self.ops[index][1]
        if len(inputs) < 2 or inputs[1] < 0:
            return False
        shape = [int(d) for d in self.tensors[inputs[1]].shape]
        return (
            bool(shape)
            and int(np.prod(shape)) == weight.numel()
            and weight.shape[0] in (shape[0], shape[-1])
        )

    def compute_ops(self, owners: list[set[str]], layer: str) -> list[tuple[str, str, str]]:
        """``(op type, activation dtype, weight dtype)`` of each compute op of ``layer``."""
        return [
            (kind, self.dtype(inputs[0]), self.dtype(inputs[1]))
            for (kind, inputs, _, _), names in zip(self.ops, owners, strict=True)
            if kind in _COMPUTE_OPS and layer in names
        ]

    def neighbours(self) -> tuple[list[list[int]], list[list[int]]]:
        """Per op, the ops producing its inputs and the ops consuming its outputs."""
        producer = {t: i for i, op in enumerate(self.ops) for t in op[2]}
        upstream = [[producer[t] for t in op[1] if t in producer] for op in self.ops]
        downstream: list[list[int]] = [[] for _ in self.ops]
        for i, sources in enumerate(upstream):
            for source in sources:
                downstream[source].append(i)
        return upstream, downstream


def _layer_pattern(model: nn.Module, name: str) -> re.Pattern[str]:
    # A location is the module path after the root's class; locations are separated by ';'.
    return re.compile(r"(?:^|[;/])" + re.escape(_module_path(model, name)) + ";")


def _recipe(graph: _Graph, owners: list[set[str]], plan: dict[str, bool]) -> list[dict]:
    """ai-edge-quantizer recipe: int8 everywhere, then (later entries win) float32 inputs and
    outputs and every op that :func:`_op_is_int8` keeps float."""
    upstream, downstream = graph.neighbours()
    recipe = [
        _INT8_RECIPE,
        {"regex": ".*", "operation": "INPUT", "algorithm_key": "no_quantize"},
        {"regex": ".*", "operation": "OUTPUT", "algorithm_key": "no_quantize"},
    ]
    for index, op in enumerate(graph.ops):
        if op[3] and not _op_is_int8(index, owners, plan, upstream, downstream):
            recipe.append(
                {"regex": f"^{re.escape(op[3])}$", "operation": "*", "algorithm_key": "no_quantize"}
            )
    return recipe


def _op_is_int8(
    index: int,
    owners: list[set[str]],
    plan: dict[str, bool],
    upstream: list[list[int]],
    downstream: list[list[int]],
) -> bool:
    """A layer's op: int8 when all its layers are. Another op: as the nearest layers upstream,
    else downstream, else int8 (the model has an int8 layer, or no recipe is made)."""
    if owners[index]:
        return all(plan[name] for name in owners[index])
    for edges in (upstream, downstream):
        layers = _nearest_layers(index, owners, edges)
        if layers:
            return all(plan[name] for name in layers)
    return True


def _nearest_layers(start: int, owners: list[set[str]], edges: list[list[int]]) -> set[str]:
    found: set[str] = set()
    seen, frontier = {start}, list(edges[start])
    while frontier:
        index = frontier.pop()
        if index in seen:
            continue
        seen.add(index)
        if owners[index]:
            found |= owners[index]
        else:
            frontier.extend(edges[index])
    return found


def _quantize(content: bytes, recipe: list[dict], inputs: list[np.ndarray]) -> bytes:
    from ai_edge_quantizer import calibrator, quantizer, recipe_manager

    interpreter = litert_interpreter(content)
    signatures = interpreter.get_signature_list()
    if len(signatures) != 1:
        raise RuntimeError(
            f"Expected one signature in the converted model, found {list(signatures)}."
        )
    key, signature = next(iter(signatures.items()))
    argument = signature["inputs"][0]
    manager = recipe_manager.RecipeManager()
    manager.load_quantization_recipe(recipe)
    with warnings.catch_warnings():
        # The calibrator and the quantizer's checks keep every intermediate tensor on purpose,
        # and LiteRT warns that this is meant for debugging.
        warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors")
        # Quantizer.calibrate keeps a moving average (0.95) of each sample's min / max: fed
        # the batch-1 model one sample at a time, that ends near a typical sample's range and
        # clips the rest (measured: logits clipped by up to 40% of their range). The extremes
        # over all samples are what the fake-quant observers track (per 128-sample batch).
        calibration = calibrator.Calibrator(content, num_threads=1, qsv_update_func=_extremes)
        # Its tqdm bar (on from 100 op runs, not switchable here) would only clutter the output.
        with contextlib.redirect_stderr(io.StringIO()):
            calibration.calibrate({key: [{argument: x} for x in inputs]}, manager)
        try:
            result = quantizer.Quantizer(content, recipe).quantize(
                calibration.get_model_qsvs(),
                enable_progress_bar=False,
                enable_progress_report=False,
            )
        except Exception as err:  # ai-edge-quantizer raises many exception types
            raise RuntimeError(
                f"ai-edge-quantizer could not quantize the converted candidate "
                f"({type(err).__name__}: {err})."
            ) from err
    return bytes(result.quantized_model)


def _extremes(seen: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Running min / max of a tensor over the calibration samples."""
    if not seen:
        return new
    return {"min": np.minimum(seen["min"], new["min"]), "max": np.maximum(seen["max"], new["max"])}


def _layer_precision(
    name: str, module: nn.Module, *, requested: bool, ops: list[tuple[str, str, str]]
) -> LayerPrecision:
    activation = _one({a for _, a, _ in ops})
    weight = _one({w for _, _, w in ops})
    precision = weight if weight == activation else f"weights {weight}, activations {activation}"
    w_bits, a_bits = layer_bits(module, name=name)
    wanted = INT8 if requested else FLOAT32
    if precision != wanted:
        note = f"asked for {wanted}, but the quantizer left it {precision}"
    elif requested and min(w_bits, a_bits) < INT8_MAX_BITS:
        note = (
            f"requested w{w_bits}/a{a_bits} bits: executed as int8 (LiteRT has no kernels "
            "below 8 bits)"
        )
    elif not requested and (w_bits < 32 or a_bits < 32):
        note = f"requested w{w_bits}/a{a_bits} bits (> {INT8_MAX_BITS}): executed as float32"
    else:
        note = ""
    return LayerPrecision(
        name=name,
        w_bits=w_bits,
        a_bits=a_bits,
        quantizer=str(layer_quantizer(module)),
        requested=wanted,
        precision=precision,
        weight_format=weight,
        activation_format=activation,
        ops=[kind for kind, _, _ in ops],
        note=note,
    )


def _one(dtypes: set[str]) -> str:
    return dtypes.pop() if len(dtypes) == 1 else "mixed (" + ", ".join(sorted(dtypes)) + ")"


def _layout(shape: tuple[int, ...], input_shape: tuple[int, ...]) -> str:
    """The model's input layout, from its input shape (batch first)."""
    if len(input_shape) != 3:
        return f"(batch, {', '.join(map(str, input_shape))}) as in PyTorch"
    channels, height, width = input_shape
    if shape == (1, channels, height, width):
        return "NCHW"
    if shape == (1, height, width, channels):
        return "NHWC"
    return f"unknown: input shape {list(shape)}"
