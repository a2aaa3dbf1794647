"""ExecuTorch: lower a compressed model to a ``.pte`` program for the XNNPACK delegate, with int8
where the search quantized, and run it with ExecuTorch's Python runtime.

Shared by ``autocompress export --format executorch`` (which writes the program and verifies it)
and ``MeasuredProfile(backend="executorch")`` (which times it); needs the ``executorch`` extra.

Which layers run int8 (:func:`precision_plan`): a Conv/Linear layer with fake-quant enabled and
``w_bits <= 8`` and ``a_bits <= 8`` runs in XNNPACK's int8 kernels; every other layer (above 8
bits, quantization disabled, or a plain float layer the search excluded) stays float32. XNNPACK
has no kernels below 8 bits, so a layer the search gave 2-7 bits executes as int8: its requested
bits are recorded beside the precision it ran in. Non-uniform weights (pot, apot, codebook) and
learned step sizes (LSQ) are re-quantized to uniform int8 too.

How (:func:`lower_to_executorch`): the fake-quant layers are replaced by plain ``nn.Conv2d`` /
``nn.Linear`` holding the weights each layer computes with (:func:`float_model`: its fake-quant
weights, pruned and masked) and no input fake-quant; ``torch.export`` captures that float model;
ExecuTorch's ``XNNPACKQuantizer`` annotates it for PT2E quantization (torchao's ``prepare_pt2e``
/ ``convert_pt2e``) with its symmetric per-channel int8 config, calibrated on the given inputs;
then ``to_edge_transform_and_lower`` with the ``XnnpackPartitioner`` and ``to_executorch`` make
the program. A layer that stays float is left unannotated by a filter on the quantizer: the
per-module-name config cannot do it in ExecuTorch 1.5.1 (``set_module_name(name, None)`` is
refused, and with an int8 ``set_module_name`` entry per int8 layer instead, a small CNN's
Conv-BatchNorm-ReLU layers were left unquantized: only its Linear layer was). Operators between
layers (pooling, add, concat) are annotated by the global config, so they are int8 where their
neighbours are. The program has a fixed batch of 1.

The precision of each layer is read back from the converted graph (the conv/linear node's input
and weight both come from int8 dequantize nodes), not assumed from the plan, and operators left
outside the XNNPACK delegate are counted.
"""

from __future__ import annotations

import copy
import functools
import threading
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from autocompress.compression.quantization import FLOAT_BITS, QuantConv2d, QuantLinear
from autocompress.hardware_profiles.deployed import INT8, INT8_MAX_BITS, int8_plan
from autocompress.hardware_profiles.graph import layer_bits, layer_quantizer
from autocompress.spaces.candidate import UNIFORM

__all__ = [
    "INT8",
    "FLOAT32",
    "LayerPrecision",
    "LoweredProgram",
    "as_executed",
    "executorch_runner",
    "executorch_threads",
    "executorch_version",
    "float_model",
    "load_method",
    "lower_to_executorch",
    "measured_details",
    "precision_plan",
]

FLOAT32 = "float32"
INSTALL_HINT = "pip install 'autocompress[executorch]'"
# Calibration inputs when the caller has no data (the measured profile): seeded normal inputs.
# They fix the int8 scales only; the kernels and so the latency do not depend on them.
RANDOM_CALIBRATION_BATCHES = 4
RANDOM_CALIBRATION_BATCH_SIZE = 8
# torch.export and PT2E keep state in module globals: one lowering at a time.
_LOWER_LOCK = threading.Lock()
# The XNNPACK threadpool is process-wide: one thread-count change at a time.
_THREADS_LOCK = threading.Lock()
# Bumped each time executorch_threads replaces the threadpool: methods loaded before are stale.
_pool_generation = [0]
_DEQUANTIZE_OPS = ("dequantize_per_tensor", "dequantize_per_channel")


@dataclass(frozen=True)
class LayerPrecision:
    """How one Conv/Linear layer runs in the program.

    ``precision``: ``int8`` (int8 weights per output channel and int8 input) or ``float32``, as
    found in the converted graph; ``weight_format`` / ``activation_format``: the same split by
    tensor. ``w_bits`` / ``a_bits``: the bits the search chose. ``note`` says why the precision
    differs from the requested bits ("" when it does not).
    """

    name: str
    kind: str
    w_bits: int
    a_bits: int
    precision: str
    weight_format: str
    activation_format: str
    delegated: bool
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LoweredProgram:
    """A ``.pte`` program (``buffer``) and what it runs: ``layers`` in module order,
    ``ops_outside_delegate`` (operator name -> count of nodes ExecuTorch runs with its portable
    kernels instead of XNNPACK), ``calibration`` (what the int8 ranges were measured on) and
    ``quantized_reference``: the PT2E-converted model (quantize/dequantize ops around float
    kernels) that the program computes, runnable in PyTorch; None when nothing is int8."""

    buffer: bytes
    layers: tuple[LayerPrecision, ...]
    ops_outside_delegate: dict[str, int]
    calibration: str
    quantized_reference: nn.Module | None = field(default=None, repr=False)

    @property
    def int8_layers(self) -> list[str]:
        return [layer.name for layer in self.layers if layer.precision == INT8]

    @property
    def float_layers(self) -> list[str]:
        return [layer.name for layer in self.layers if layer.precision == FLOAT32]

    @property
    def widened_layers(self) -> list[str]:
        """Layers whose requested bits (below 8) executed as int8."""
        return [
            layer.name
            for layer in self.layers
            if layer.precision == INT8 and min(layer.w_bits, layer.a_bits) < INT8_MAX_BITS
        ]


def executorch_version() -> str:
    _require("executorch")
    from importlib.metadata import version

    return version("executorch")


def _require(what: str) -> None:
    try:
        import executorch  # noqa: F401  heavy, optional: only when this backend is used
        import torchao  # noqa: F401
    except ImportError as err:
        raise ImportError(
            f"{what} needs ExecuTorch (with torchao's PT2E quantization): {INSTALL_HINT}."
        ) from err


def precision_plan(model: nn.Module) -> dict[str, str]:
    """``{layer: "int8" | "float32"}`` for every Conv/Linear layer of ``model``, in module
    order: int8 where :func:`~.deployed.int8_plan` says so (fake-quant on, at most 8 weight and
    input bits), float32 for every other layer."""
    return {name: INT8 if int8 else FLOAT32 for name, int8 in int8_plan(model).items()}


def float_model(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode with every QuantConv2d / QuantLinear replaced by a plain
    float layer holding the weights the layer computes with (its fake-quant weights, masked; the
    masked float weights when its quantization is disabled), and no input fake-quant: the
    candidate's architecture, pruning and weight values, in float32. ``model`` is not modified.

    Why the fake-quant weights rather than the latent float ones: a QAT-trained low-bit layer
    only works on its own grid (its latent weights drift where rounding hides them), and a
    per-channel symmetric grid of b <= 8 bits lies on or within half a step of the int8 grid
    that PT2E then picks (the same max |w| scale; exactly for 2 and 8 bits), also after batch
    norm is folded in, which scales each channel."""
    work = copy.deepcopy(model).cpu().eval()
    for name, module in list(work.named_modules()):
        if not isinstance(module, QuantConv2d | QuantLinear):
            if hasattr(module, "quant_enabled"):  # another fake-quant module: run it in float
                module.quant_enabled = False
            continue
        plain = _plain_layer(module)
        with torch.no_grad():
            weight = module.quantized_weight() if module.quant_enabled else module.masked_weight()
            plain.weight.copy_(weight)
            if module.bias is not None:
                plain.bias.copy_(module.bias)
        if not name:
            return plain.eval()
        parent, _, child = name.rpartition(".")
        setattr(work.get_submodule(parent), child, plain)
    return work.eval()


def _plain_layer(module: QuantConv2d | QuantLinear) -> nn.Module:
    bias = module.bias is not None
    if isinstance(module, QuantLinear):
        return nn.Linear(module.in_features, module.out_features, bias=bias)
    return nn.Conv2d(
        module.in_channels,
        module.out_channels,
        module.kernel_size,
        stride=module.stride,
        padding=module.padding,
        dilation=module.dilation,
        groups=module.groups,
        bias=bias,
        padding_mode=module.padding_mode,
    )


def as_executed(model: nn.Module, plan: dict[str, str]) -> nn.Module:
    """A copy of the fake-quant ``model`` at the precision the program runs each layer in: the
    same weights (:func:`float_model`), with the input of an int8 layer quantized at 8 bits and
    the input of a float32 layer not quantized. The reference an int8 program is judged against;
    it is the candidate itself when every int8 layer has 8-bit inputs and every float32 layer
    32-bit ones."""
    work = copy.deepcopy(model).cpu().eval()
    for name, module in work.named_modules():
        if isinstance(module, QuantConv2d | QuantLinear) and module.quant_enabled:
            module.a_bits = INT8_MAX_BITS if plan.get(name) == INT8 else FLOAT_BITS
    return work


def random_calibration(input_shape: tuple[int, ...], *, seed: int = 0) -> list[Tensor]:
    generator = torch.Generator().manual_seed(seed)
    shape = (RANDOM_CALIBRATION_BATCH_SIZE, *input_shape)
    return [torch.randn(shape, generator=generator) for _ in range(RANDOM_CALIBRATION_BATCHES)]


def lower_to_executorch(
    model: nn.Module,
    *,
    input_shape: tuple[int, ...],
    calibration: Sequence[Tensor] | None = None,
    calibration_source: str | None = None,
    seed: int = 0,
) -> LoweredProgram:
    """Lower ``model`` (a compressed candidate, fake-quant as searched) to an XNNPACK ``.pte``
    for batch-1 inputs of ``input_shape``, int8 where :func:`precision_plan` says so.

    ``calibration``: input batches (any batch size) the int8 activation ranges are measured on;
    None: :data:`RANDOM_CALIBRATION_BATCHES` seeded normal batches (``seed``), which is enough
    to time the program but not to use its outputs. ``calibration_source`` describes the
    batches for the report. ``model`` is not modified."""
    _require("ExecuTorch lowering")
    plan = precision_plan(model)
    kinds = {
        name: "linear" if isinstance(m, nn.Linear) else "conv"
        for name, m in model.named_modules()
        if name in plan
    }
    bits = {name: layer_bits(m, name=name) for name, m in model.named_modules() if name in plan}
    quantizers = {name: layer_quantizer(m) for name, m in model.named_modules() if name in plan}
    if calibration is None:
        calibration = random_calibration(input_shape, seed=seed)
        calibration_source = calibration_source or (
            f"{RANDOM_CALIBRATION_BATCHES} seeded normal batches of "
            f"{RANDOM_CALIBRATION_BATCH_SIZE} (seed {seed}): int8 ranges fit for timing only"
        )
    calibration = [torch.as_tensor(x).float().cpu() for x in calibration]
    if not calibration:
        raise ValueError(
            "The 'calibration' parameter of lower_to_executorch must hold at least one input "
            "batch (or be None for seeded random inputs). Got an empty sequence instead."
        )
    source = calibration_source or f"{len(calibration)} given batches"
    floating = float_model(model)
    example = (torch.zeros(1, *input_shape),)
    with _LOWER_LOCK, warnings.catch_warnings():
        # torch.export, torchao and ExecuTorch warn about their own deprecations on every call.
        warnings.simplefilter("ignore")
        reference = None
        program_model: nn.Module = floating
        if INT8 in plan.values():
            reference = _quantize_pt2e(floating, plan, example, calibration)
            program_model = reference
        buffer, outside, graph = _lower(program_model, example)
    found = _precisions(reference, plan) if reference is not None else {}
    delegated_out = _layers_outside(graph, plan)
    layers = tuple(
        _layer_precision(
            name,
            kinds[name],
            bits[name],
            quantizers[name],
            planned=plan[name],
            found=found.get(name, (FLOAT32, FLOAT32)),
            delegated=name not in delegated_out,
        )
        for name in plan
    )
    return LoweredProgram(
        buffer=buffer,
        layers=layers,
        ops_outside_delegate=outside,
        calibration=source if reference is not None else "none (no int8 layer)",
        quantized_reference=reference,
    )


def _quantize_pt2e(
    floating: nn.Module,
    plan: dict[str, str],
    example: tuple[Tensor, ...],
    calibration: Sequence[Tensor],
) -> nn.Module:
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    float_layers = {name for name, precision in plan.items() if precision == FLOAT32}

    def annotate(node: torch.fx.Node) -> bool:
        # Leave every node of a float layer unannotated; everything else follows the global
        # int8 config (an int8 layer, its folded batch norm and ReLU, pooling between layers).
        return not (_module_names(node) & float_layers)

    quantizer = _eval_quantizer_class()()
    quantizer.set_global(get_symmetric_quantization_config(is_per_channel=True))
    quantizer.set_filter_function(annotate)
    # A dynamic batch so that calibration runs whole batches; the program itself is batch 1.
    batch = torch.export.Dim("batch")
    captured = torch.export.export(
        floating,
        (example[0].repeat(2, *[1] * (example[0].dim() - 1)),),
        dynamic_shapes=({0: batch},),
    ).module()
    prepared = prepare_pt2e(captured, quantizer)
    with torch.no_grad():
        for x in calibration:
            prepared(x)
    return convert_pt2e(prepared)


@functools.cache
def _eval_quantizer_class() -> type:
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer

    class EvalXNNPACKQuantizer(XNNPACKQuantizer):
        """XNNPACK's quantizer without its conv-batch-norm patterns (QAT graphs only): for an
        eval-mode graph ``prepare_pt2e`` folds each batch norm into its conv before annotating,
        so they never match, yet building them exports a dozen pattern graphs per lowering
        (about 1.5 s of a 3 s lowering)."""

        SUPPORTED_PATTERNS = [
            pattern for pattern in XNNPACKQuantizer.SUPPORTED_PATTERNS if "_bn" not in pattern.name
        ]

    return EvalXNNPACKQuantizer


def _lower(model: nn.Module, example: tuple[Tensor, ...]) -> tuple[bytes, dict[str, int], Any]:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    exported = torch.export.export(model, example)
    edge = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()])
    graph = edge.exported_program().graph_module.graph
    outside: dict[str, int] = {}
    for node in graph.nodes:
        if node.op != "call_function" or _op_name(node) in ("executorch_call_delegate", "getitem"):
            continue
        outside[_op_name(node)] = outside.get(_op_name(node), 0) + 1
    return edge.to_executorch().buffer, dict(sorted(outside.items())), graph


def _op_name(node: torch.fx.Node) -> str:
    """The operator's name without namespace and overload: ``conv2d`` for ``aten.conv2d.default``
    (an ``OpOverload`` calls itself ``conv2d.default``, an edge op ``aten.convolution.default``)."""
    parts = getattr(node.target, "__name__", str(node.target)).split(".")
    return parts[-2] if len(parts) >= 2 else parts[0]


def _module_names(node: torch.fx.Node) -> set[str]:
    """The module paths a node was traced in (``nn_module_stack``), as ``named_modules`` names."""
    names = set()
    for value in node.meta.get("nn_module_stack", {}).values():
        path = value[0] if isinstance(value, tuple) else str(value)
        names.add(path.removeprefix("L['self'].").removeprefix("L__self__."))
    return names


def _layer_nodes(graph: Any, plan: dict[str, str]) -> Iterator[tuple[str, torch.fx.Node]]:
    """``(layer, node)`` for each conv/linear call of ``graph`` traced inside a planned layer."""
    for node in graph.nodes:
        if node.op != "call_function":
            continue
        op = _op_name(node)
        if not any(key in op for key in ("conv", "linear", "addmm", "mm")):
            continue
        for name in _module_names(node) & set(plan):
            yield name, node


def _precisions(reference: nn.Module, plan: dict[str, str]) -> dict[str, tuple[str, str]]:
    """``{layer: (weight format, input format)}`` read off the PT2E-converted graph."""
    found = {}
    for name, node in _layer_nodes(reference.graph, plan):
        inputs = [a for a in node.args[:2] if isinstance(a, torch.fx.Node)]
        formats = [INT8 if _is_dequantize(a) else FLOAT32 for a in inputs]
        if len(formats) == 2:
            found[name] = (formats[1], formats[0])
    return found


def _is_dequantize(node: torch.fx.Node) -> bool:
    return node.op == "call_function" and any(op in str(node.target) for op in _DEQUANTIZE_OPS)


def _layers_outside(graph: Any, plan: dict[str, str]) -> set[str]:
    """Layers with a conv/linear node left to the portable kernels (outside XNNPACK)."""
    return {name for name, _ in _layer_nodes(graph, plan)}


def _layer_precision(
    name: str,
    kind: str,
    bits: tuple[int, int],
    quantizer: str,
    *,
    planned: str,
    found: tuple[str, str],
    delegated: bool,
) -> LayerPrecision:
    w_bits, a_bits = bits
    precision = INT8 if found == (INT8, INT8) else FLOAT32
    notes = []
    if precision == FLOAT32 and found[1] == INT8:
        notes.append("its input is the int8 output of the layer before, dequantized to float32")
    if precision == INT8 and min(w_bits, a_bits) < INT8_MAX_BITS:
        notes.append(
            f"requested w{w_bits}/a{a_bits} executed as int8 (XNNPACK has no narrower kernels)"
        )
    if precision == INT8 and quantizer != UNIFORM:
        notes.append(f"{quantizer} weights re-quantized to uniform int8")
    wide = max(w_bits, a_bits) > INT8_MAX_BITS and min(w_bits, a_bits) < FLOAT_BITS
    if planned == FLOAT32 and wide:
        notes.append(f"w{w_bits}/a{a_bits} has more than 8 bits: runs in float32")
    elif planned == FLOAT32:
        notes.append("not quantized by the search: runs in float32")
    if precision != planned:
        notes.append(f"planned {planned} but the converted graph runs {precision}")
    if not delegated:
        notes.append("runs outside the XNNPACK delegate (ExecuTorch portable kernels)")
    return LayerPrecision(
        name=name,
        kind=kind,
        w_bits=w_bits,
        a_bits=a_bits,
        precision=precision,
        # A float32 layer runs a float kernel whatever its producer: both tensors are float32.
        weight_format=found[0] if precision == INT8 else FLOAT32,
        activation_format=found[1] if precision == INT8 else FLOAT32,
        delegated=delegated,
        note="; ".join(notes),
    )


def _portable_lib() -> Any:
    """ExecuTorch's runtime bindings. Importing them warns, once per process, that the API is
    experimental: a fact about ExecuTorch, not about anything the caller did."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from executorch.extension.pybindings import portable_lib
    return portable_lib


def measured_details(program: LoweredProgram, *, threads: int) -> dict[str, Any]:
    """The ``details`` keys that ``MeasuredProfile(backend="executorch")`` adds: which precision
    each layer ran in, and what the timing ran (``threads``: the XNNPACK threadpool's size)."""
    int8, floating = program.int8_layers, program.float_layers
    note = (
        f"Measured with ExecuTorch's XNNPACK delegate on this host: {len(int8)} layer(s) ran int8 "
        f"kernels, {len(floating)} float32 (details['layers']). Layers of fewer than 8 bits ran "
        "as int8, so latency reflects 8-bit kernels, not their own bits."
    )
    return {
        "note": note,
        "executorch_version": executorch_version(),
        "executorch_threads": threads,
        "pte_bytes": len(program.buffer),
        "int8_layers": int8,
        "float_layers": floating,
        "widened_layers": program.widened_layers,
        "ops_outside_delegate": program.ops_outside_delegate,
        "calibration": program.calibration,
        "layers": [layer.to_dict() for layer in program.layers],
    }


def load_method(program: bytes | Path) -> Any:
    """The ``forward`` method of a ``.pte`` program (bytes or a file), loaded with
    ``executorch.runtime``; call ``.execute([tensor])``."""
    _require("Running an ExecuTorch program")
    _portable_lib()  # imported here, quietly, rather than by Runtime.get()
    from executorch.runtime import Runtime

    source = str(program) if isinstance(program, Path) else program
    method = Runtime.get().load_program(source).load_method("forward")
    if method is None:
        raise ValueError(f"The ExecuTorch program {program!r:.80} has no 'forward' method.")
    return method


def executorch_runner(program: bytes | Path) -> Any:
    """A ``numpy batch -> numpy outputs`` callable over a batch-1 program: one call per sample
    (the program has a fixed batch of 1). The method is loaded on first use, and again after
    :func:`executorch_threads` has replaced the threadpool that the loaded one used."""
    loaded: dict[str, Any] = {}

    def method() -> Any:
        if loaded.get("generation") != _pool_generation[0]:
            loaded["method"] = load_method(program)
            loaded["generation"] = _pool_generation[0]
        return loaded["method"]

    def run(x: np.ndarray) -> np.ndarray:
        batch = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        forward = method()
        # Outputs may live in the program's planned memory, which the next call overwrites.
        outputs = [forward.execute([batch[i : i + 1]])[0].clone() for i in range(len(batch))]
        return torch.cat(outputs).numpy()

    return run


@contextmanager
def executorch_threads(threads: int | None) -> Iterator[int]:
    """Run ExecuTorch's (process-wide) XNNPACK threadpool with ``threads`` threads inside the
    block, then restore it; None keeps the runtime's default. Yields the thread count in use.

    Replacing the pool invalidates every method loaded before (XNNPACK keeps a pointer to the
    pool; executing such a method crashes the process): load the method to time inside the
    block and drop it at the end. :func:`executorch_runner` reloads its method by itself."""
    _require("ExecuTorch threads")
    portable_lib = _portable_lib()
    # The only thread-count control ExecuTorch 1.5 offers from Python is these two experimental
    # pybindings; without them the default count is used and reported.
    get = getattr(portable_lib, "_threadpool_get_thread_count", None)
    reset = getattr(portable_lib, "_unsafe_reset_threadpool", None)

    def call(function: Any, *args: int) -> Any:
        with warnings.catch_warnings():  # each call warns that the API is experimental
            warnings.simplefilter("ignore")
            return function(*args)

    with _THREADS_LOCK:
        previous = call(get) if get is not None else -1
        change = threads is not None and reset is not None and previous > 0 and threads != previous
        if change:
            call(reset, threads)
            _pool_generation[0] += 1
        try:
            yield call(get) if get is not None else -1
        finally:
            if change:
                call(reset, previous)
                _pool_generation[0] += 1
