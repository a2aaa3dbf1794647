"""Per-layer latency lookup tables (LUTs) measured on this host, and the ``"lut"`` profile.

What a *layer* is here (the unit that gets one LUT entry): one Conv/Linear call together with
the BatchNorm that directly consumes its output and the activation that directly consumes that,
because this is the op group a deployed runtime executes as one kernel: the ONNX export folds an
eval-mode BatchNorm into the conv weights and ONNX Runtime fuses Conv/Gemm with a following
Relu/Clip.

How an entry is measured: each distinct group is timed on its own (a tiny model of just that
group, random weights, batch 1) with :class:`MeasuredProfile`, the same way whole models are
timed. Timed completely alone, a layer is charged for things a model pays once or not at all:
the per-run cost (input binding, output allocation, the Python call) and layout conversions at
its boundaries (ONNX Runtime runs convs in a blocked NCHWc layout and converts in and out at the
edges of the graph; in a model, neighbouring convs hand the blocked layout on, and such
conversions cost up to half of a MobileNetV2 measured layer by layer). So every group is timed
twice, alone (``A = R + in(x) + L + out(y)``) and between two cheap *context ops* that keep the
runtime's layout (``B = R + in(x) + C(x) + L + C(y) + out(y)``; a depthwise 1x1 conv for a
conv, a square Linear for a linear), and each context op is timed alone per shape
(``C_x = R + in(x) + C(x) + out(x)``); then ``L = (A + B - C_x - C_y) / 2`` up to the
difference between converting a tensor in and out, which cancels when they cost the same.
The per-run cost ``R`` cancels too; it is measured on a near-empty model and stored once as
``overhead_ms``.

A model's LUT latency is ``overhead_ms + sum(layer entries)``. Everything outside the groups
(residual additions, pooling, flatten, an activation that does not follow a layer directly) is
not in the table; :func:`model_layers` counts those ops so the learned predictor can correct
for them. A LUT is saved as versioned JSON (never pickle) with the facts of the host that
measured it.
"""

from __future__ import annotations

import copy
import datetime
import json
import math
import os
import platform
import random
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from numbers import Integral, Real
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Union

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd
from torch.overrides import TorchFunctionMode

from autocompress.hardware_profiles._base import (
    HardwareMetrics,
    HardwareProfile,
    register_hardware_profile,
)
from autocompress.hardware_profiles.device_spec import DeviceSpec
from autocompress.hardware_profiles.graph import (
    check_input_shape,
    is_costed_layer,
    layer_bits,
    layer_costs,
    model_size_bytes,
    peak_activation_bytes,
)

if TYPE_CHECKING:
    from autocompress.hardware_profiles.analytic import AnalyticProfile
    from autocompress.hardware_profiles.predictor import LatencyPredictor
    from autocompress.spaces import Candidate, SpaceConfig

__all__ = [
    "HOST_PRECISION",
    "LUTEntry",
    "LUTProfile",
    "LatencyLUT",
    "LayerKey",
    "LayerRecord",
    "ModelLayers",
    "build_lut",
    "context_module",
    "host_facts",
    "layer_module",
    "layer_shapes_of_space",
    "measure_models",
    "model_layers",
    "sample_candidates",
]

#: Precision every layer runs at on this host: MeasuredProfile times float kernels.
HOST_PRECISION = "fp32"
LUT_FORMAT = "autocompress-latency-lut"
LUT_VERSION = 1
_BACKENDS = ("onnxruntime", "torch")
# Activations fused into the preceding layer, by exact type (a subclass may compute something
# else). LeakyReLU and GELU are left out: their parameters would have to be part of the key.
_ACTIVATIONS: dict[type[nn.Module], str] = {
    nn.ReLU: "relu",
    nn.ReLU6: "relu6",
    nn.SiLU: "silu",
    nn.Hardswish: "hardswish",
    nn.Sigmoid: "sigmoid",
    nn.Tanh: "tanh",
}
_ACTIVATION_FACTORIES: dict[str, Callable[[], nn.Module]] = {
    name: cls for cls, name in _ACTIVATIONS.items()
}
# Removed by the ONNX export of an eval-mode model, so they are not ops of the deployed graph.
_EXPORT_NO_OPS = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)
# Measuring the per-run overhead several times through a build spreads it over load changes.
_OVERHEAD_SAMPLES = 3


@dataclass(frozen=True, order=True)
class LayerKey:
    """The facts that decide the latency of one layer op group on one target.

    ``kind``: ``"conv"`` (non-transposed ``nn.Conv1d/2d/3d``) or ``"linear"``.
    ``kernel``/``stride``/``padding``/``dilation``: one int per spatial dim (empty for linear).
    ``input_size``: the input's spatial dims for a conv (e.g. ``(32, 32)``), the dims between
    batch and features for a linear (``()`` for a ``(1, features)`` input).
    ``bn``: a BatchNorm directly follows (folded at deployment). ``act``: the activation that
    directly follows (``"none"`` if none). ``precision``: what the target computes the layer at
    (:data:`HOST_PRECISION` on this host; a :meth:`DeviceSpec.mac_cost` label otherwise).
    Biases are not part of the key: their cost is negligible and a folded BN adds one anyway.
    """

    kind: Literal["conv", "linear"]
    in_channels: int
    out_channels: int
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int
    input_size: tuple[int, ...]
    bn: bool
    act: str
    precision: str

    def __post_init__(self) -> None:
        problem = _key_problem(self)
        if problem:
            raise ValueError(f"Invalid LayerKey: {problem}. Got {self!r} instead.")

    @property
    def output_size(self) -> tuple[int, ...]:
        if self.kind == "linear":
            return self.input_size
        return tuple(
            (size + 2 * p - d * (k - 1) - 1) // s + 1
            for size, k, s, p, d in zip(
                self.input_size, self.kernel, self.stride, self.padding, self.dilation, strict=True
            )
        )

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input sample without the batch dim, as fed to the isolated group."""
        if self.kind == "linear":
            return (*self.input_size, self.in_channels)
        return (self.in_channels, *self.input_size)

    @property
    def output_shape(self) -> tuple[int, ...]:
        """Shape of the group's output without the batch dim."""
        if self.kind == "linear":
            return (*self.input_size, self.out_channels)
        return (self.out_channels, *self.output_size)

    @property
    def input_elems(self) -> int:
        return math.prod(self.input_shape)

    @property
    def output_elems(self) -> int:
        return self.out_channels * math.prod(self.output_size)

    @property
    def weight_params(self) -> int:
        return self.out_channels * (self.in_channels // self.groups) * math.prod(self.kernel)

    @property
    def macs(self) -> int:
        return self.output_elems * (self.in_channels // self.groups) * math.prod(self.kernel)

    @property
    def depthwise(self) -> bool:
        return self.kind == "conv" and self.groups > 1 and self.groups == self.in_channels

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-friendly fields (tuples as lists)."""
        return {
            "kind": self.kind,
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "kernel": list(self.kernel),
            "stride": list(self.stride),
            "padding": list(self.padding),
            "dilation": list(self.dilation),
            "groups": self.groups,
            "input_size": list(self.input_size),
            "bn": self.bn,
            "act": self.act,
            "precision": self.precision,
        }

    @classmethod
    def from_dict(cls, data: Any) -> LayerKey:
        """Inverse of :meth:`as_dict`; raises ValueError on missing, unknown or mistyped fields."""
        fields = set(cls.__dataclass_fields__)
        if not isinstance(data, Mapping) or set(data) != fields:
            raise ValueError(
                f"The 'data' parameter of LayerKey.from_dict must be a mapping with exactly the "
                f"fields {sorted(fields)}. Got {data!r} instead."
            )
        values = dict(data)
        for name in ("kernel", "stride", "padding", "dilation", "input_size"):
            if not isinstance(values[name], list | tuple):
                raise ValueError(
                    f"The '{name}' field of a LayerKey must be a list of ints. "
                    f"Got {values[name]!r} instead."
                )
            values[name] = tuple(values[name])
        return cls(**values)

    def __str__(self) -> str:
        if self.kind == "linear":
            shape = f"{self.in_channels}->{self.out_channels} in={_dims(self.input_size)}"
        else:
            shape = (
                f"{self.in_channels}->{self.out_channels} k={_dims(self.kernel)} "
                f"s={_dims(self.stride)} p={_dims(self.padding)} d={_dims(self.dilation)} "
                f"g={self.groups} in={_dims(self.input_size)}"
            )
        extras = "+bn" * self.bn + (f"+{self.act}" if self.act != "none" else "")
        return f"{self.kind}{extras} {shape} @{self.precision}"


class LayerRecord(NamedTuple):
    """One Conv/Linear call of a traced model: its name and key (None: no key for this layer
    type, e.g. a transposed conv; such a layer is always a LUT miss)."""

    name: str
    key: LayerKey | None


class ModelLayers(NamedTuple):
    """A traced model: its layer op groups in execution order, and the ops outside them.

    ``uncosted_ops``: calls that are in the deployed graph but in no group: leaf modules that
    were not folded into a layer (pooling, flatten, a stray activation) and tensor-valued torch
    functions called outside any module (residual additions, reshapes). Identity and dropout
    are not counted (the export removes them). ``uncosted_elems``: for each of those calls, the
    element count of its largest input or output tensor, summed (their work is roughly one pass
    over it).
    """

    layers: list[LayerRecord]
    uncosted_ops: int
    uncosted_elems: int = 0


@dataclass(frozen=True)
class LUTEntry:
    """Timing of one layer op group (ms; best-of-rounds medians, see :func:`build_lut`).

    ``latency_ms``: what the layer adds to a model, ``(alone + chain - contexts) / 2``; noise can
    make it slightly negative for the smallest layers (:meth:`LatencyLUT.layer_ms` clamps).
    ``alone_ms``: the group timed alone. ``chain_ms``: timed between its two context ops.
    """

    latency_ms: float
    alone_ms: float
    chain_ms: float
    repeats: int


class LatencyLUT:
    """Measured latency of layer op groups on one host and runtime.

    ``entries`` maps :class:`LayerKey` to :class:`LUTEntry`. ``overhead_ms`` is the per-run cost
    every measurement includes once (see the module doc); :meth:`layer_ms` subtracts it.
    ``backend``/``threads``/``warmup``/``repeats``/``rounds`` say how the entries were measured,
    ``host`` describes the machine and library versions (see :func:`host_facts`). Instances are
    not modified after construction.
    """

    def __init__(
        self,
        *,
        entries: Mapping[LayerKey, LUTEntry],
        overhead_ms: float,
        backend: str,
        threads: int,
        warmup: int,
        repeats: int,
        rounds: int = 1,
        precision: str = HOST_PRECISION,
        host: Mapping[str, Any] | None = None,
        created: str = "",
    ) -> None:
        if not isinstance(overhead_ms, Real) or not math.isfinite(overhead_ms) or overhead_ms < 0:
            raise ValueError(
                "The 'overhead_ms' parameter of LatencyLUT must be a finite number >= 0. "
                f"Got {overhead_ms!r} instead."
            )
        if backend not in _BACKENDS:
            raise ValueError(
                f"The 'backend' parameter of LatencyLUT must be one of {list(_BACKENDS)}. "
                f"Got {backend!r} instead."
            )
        bad = [k for k, v in entries.items() if not (isinstance(k, LayerKey) and _ok_entry(v))]
        if bad:
            raise ValueError(
                "The 'entries' parameter of LatencyLUT must map LayerKey to LUTEntry with finite "
                f"times (alone/chain >= 0). Got a bad entry for {bad[0]!r} instead."
            )
        self.entries: dict[LayerKey, LUTEntry] = dict(entries)
        self.overhead_ms = float(overhead_ms)
        self.backend = backend
        self.threads = _check_int(threads, name="threads", minimum=1, where="LatencyLUT")
        self.warmup = _check_int(warmup, name="warmup", minimum=0, where="LatencyLUT")
        self.repeats = _check_int(repeats, name="repeats", minimum=1, where="LatencyLUT")
        self.rounds = _check_int(rounds, name="rounds", minimum=1, where="LatencyLUT")
        self.precision = str(precision)
        self.host = dict(host or {})
        self.created = created

    def __repr__(self) -> str:
        return (
            f"LatencyLUT({len(self)} entries, backend={self.backend!r}, threads={self.threads}, "
            f"overhead_ms={self.overhead_ms:.4g}, cpu={self.host.get('cpu_model', '?')!r})"
        )

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, key: object) -> bool:
        return key in self.entries

    def keys(self) -> list[LayerKey]:
        return list(self.entries)

    def layer_ms(self, key: LayerKey) -> float | None:
        """Latency the layer adds to a whole model (ms, >= 0), or None when ``key`` is not in
        the table."""
        entry = self.entries.get(key)
        if entry is None:
            return None
        # Noise can put a tiny layer's estimate below zero; it cannot cost less than nothing.
        return max(entry.latency_ms, 0.0)

    def layer_table(self) -> dict[LayerKey, float]:
        """``{key: layer_ms(key)}`` for every entry (training data of the learned predictor)."""
        return {key: self.layer_ms(key) for key in self.entries}  # type: ignore[misc]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": LUT_FORMAT,
            "version": LUT_VERSION,
            "created": self.created,
            "host": self.host,
            "backend": self.backend,
            "threads": self.threads,
            "warmup": self.warmup,
            "repeats": self.repeats,
            "rounds": self.rounds,
            "precision": self.precision,
            "overhead_ms": self.overhead_ms,
            "entries": [
                {
                    "key": key.as_dict(),
                    "latency_ms": e.latency_ms,
                    "alone_ms": e.alone_ms,
                    "chain_ms": e.chain_ms,
                    "repeats": e.repeats,
                }
                for key, e in sorted(self.entries.items())
            ],
        }

    @classmethod
    def from_dict(cls, data: Any) -> LatencyLUT:
        """Inverse of :meth:`to_dict`; raises ValueError naming the first problem it finds."""
        if not isinstance(data, Mapping) or data.get("format") != LUT_FORMAT:
            raise ValueError(
                f"The 'data' parameter of LatencyLUT.from_dict must be a mapping with "
                f"format={LUT_FORMAT!r}. Got {_brief(data)} instead."
            )
        if data.get("version") != LUT_VERSION:
            raise ValueError(
                f"The 'version' field of a latency LUT must be {LUT_VERSION}. "
                f"Got {data.get('version')!r} instead."
            )
        try:
            entries = {}
            for row in data["entries"]:
                key = LayerKey.from_dict(row["key"])
                entries[key] = LUTEntry(
                    latency_ms=float(row["latency_ms"]),
                    alone_ms=float(row["alone_ms"]),
                    chain_ms=float(row["chain_ms"]),
                    repeats=int(row["repeats"]),
                )
            return cls(
                entries=entries,
                overhead_ms=float(data["overhead_ms"]),
                backend=data["backend"],
                threads=data["threads"],
                warmup=data["warmup"],
                repeats=data["repeats"],
                rounds=data.get("rounds", 1),
                precision=str(data.get("precision", HOST_PRECISION)),
                host=dict(data.get("host", {})),
                created=str(data.get("created", "")),
            )
        except (KeyError, TypeError) as err:
            raise ValueError(f"A latency LUT is missing or mistypes a field: {err!r}.") from None

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the LUT as JSON to ``path`` (parent folders created) and return the path."""
        return write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> LatencyLUT:
        """Read a LUT written by :meth:`save` (plain JSON, validated field by field)."""
        return cls.from_dict(read_json(path, where="LatencyLUT.load", what="Latency LUT"))


def write_json(path: str | os.PathLike[str], data: Mapping[str, Any]) -> Path:
    """Write ``data`` as JSON to ``path`` (parent folders created) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    return path


def read_json(path: str | os.PathLike[str], *, where: str, what: str) -> Any:
    """Parse the JSON file at ``path``; errors name the caller (``where``) and the file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(
            f"The 'path' parameter of {where} must be an existing JSON file. "
            f"Got {str(path)!r} instead."
        )
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{what} {path} is not valid JSON: {err}") from None


# ----------------------------------------------------------------------------- tracing
def model_layers(
    model: nn.Module,
    *,
    input_shape: tuple[int, ...],
    precision: str | DeviceSpec = HOST_PRECISION,
) -> ModelLayers:
    """Trace one batch-1 forward pass and return the model's layer op groups and other ops.

    ``precision``: a str is the precision of every layer (the host runs everything at
    :data:`HOST_PRECISION`); a :class:`DeviceSpec` gives each layer the precision that device
    computes its ``w_bits``/``a_bits`` at. The model is traced as a deep copy in eval mode with
    fake quantization off (what the host deploys), so it comes back unchanged and concurrent
    calls do not interfere.
    """
    shape = check_input_shape(input_shape, caller="model_layers")
    if not isinstance(precision, str | DeviceSpec):
        raise ValueError(
            "The 'precision' parameter of model_layers must be a str or a DeviceSpec. "
            f"Got {precision!r} instead."
        )
    traced = copy.deepcopy(model).eval()
    for module in traced.modules():
        if hasattr(module, "quant_enabled"):
            module.quant_enabled = False
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
        if i < len(calls) and _consumes(calls[i], y) and type(calls[i][0]) in _ACTIVATIONS:
            act = _ACTIVATIONS[type(calls[i][0])]
            i += 1
        name = names.get(module, "")
        layers.append(LayerRecord(name, _key(module, x, name, bn, act, precision)))
    return ModelLayers(layers=layers, uncosted_ops=uncosted, uncosted_elems=uncosted_elems)


def _consumes(call: tuple[nn.Module, Any, Any], tensor: Any) -> bool:
    return call[1] is tensor


def _key(
    module: nn.Module, x: Any, name: str, bn: bool, act: str, precision: str | DeviceSpec
) -> LayerKey | None:
    if isinstance(precision, DeviceSpec):
        w_bits, a_bits = layer_bits(module, name=name)
        label = precision.mac_cost(w_bits=w_bits, a_bits=a_bits).precision
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


# ----------------------------------------------------------------------------- building
def layer_module(key: LayerKey, *, seed: int = 0) -> nn.Module:
    """The isolated op group of ``key`` as a float eval-mode module with seeded random weights.

    Its input is ``(1, *key.input_shape)``. Weight values do not change float kernel timings;
    the seed only keeps the module reproducible.
    """
    if not isinstance(key, LayerKey):
        raise ValueError(
            f"The 'key' parameter of layer_module must be a LayerKey. Got {key!r} instead."
        )
    generator = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    dims = len(key.input_size)
    if key.kind == "linear":
        layers.append(nn.Linear(key.in_channels, key.out_channels, bias=True))
        norm = nn.BatchNorm1d
    else:
        conv_cls = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims]
        layers.append(
            conv_cls(
                key.in_channels,
                key.out_channels,
                key.kernel,
                stride=key.stride,
                padding=key.padding,
                dilation=key.dilation,
                groups=key.groups,
                bias=not key.bn,
            )
        )
        norm = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[dims]
    if key.bn:
        layers.append(norm(key.out_channels))
    if key.act != "none":
        layers.append(_ACTIVATION_FACTORIES[key.act]())
    module = nn.Sequential(*layers)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    return module.eval()


def context_module(
    kind: Literal["conv", "linear"], shape: tuple[int, ...], *, seed: int = 0
) -> nn.Module:
    """The cheap op placed before/after a layer when it is timed in context (see module doc).

    ``shape``: the tensor it runs on, without the batch dim. A conv gets a depthwise 1x1 conv
    (keeps the runtime's conv layout, costs about one pass over the tensor); a linear gets a
    square ``nn.Linear`` over the last dim.
    """
    generator = torch.Generator().manual_seed(seed)
    if kind == "linear":
        module: nn.Module = nn.Linear(shape[-1], shape[-1])
    else:
        conv_cls = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[len(shape) - 1]
        module = conv_cls(shape[0], shape[0], 1, groups=shape[0])
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    return module.eval()


def build_lut(
    items: Iterable[LayerKey | tuple[nn.Module, tuple[int, ...]]],
    *,
    backend: Literal["onnxruntime", "torch"] = "onnxruntime",
    threads: int = 1,
    warmup: int = 10,
    repeats: int = 30,
    rounds: int = 3,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> LatencyLUT:
    """Measure every distinct layer op group of ``items`` on this host (see the module doc).

    ``items``: :class:`LayerKey` objects (e.g. from :func:`layer_shapes_of_space`) and/or
    ``(model, input_shape)`` pairs whose layers are traced with :func:`model_layers`; keys must
    have :data:`HOST_PRECISION` (the host only runs float kernels). Layers without a key are
    skipped. Every timing is a :class:`MeasuredProfile` median (``backend``, ``threads``,
    ``warmup``, ``repeats``). Everything is timed once per round, rounds one after another, and
    each timing keeps its best (smallest) median over the rounds: on a shared machine, other
    processes and virtual-machine neighbours only ever add time, and they come and go within
    seconds (a 30% slower phase is common on small cloud VMs), so the best of a few rounds is
    the repeatable figure (the reasoning of Python's ``timeit``). Whole-model references that a
    LUT is compared with should be taken the same way. ``progress(done, total)`` is called after
    each timing. Timing is serialised process-wide by MeasuredProfile. About ``2 * rounds``
    timings per key.
    """
    from autocompress.hardware_profiles.measured import MeasuredProfile

    if backend not in _BACKENDS:
        raise ValueError(
            f"The 'backend' parameter of build_lut must be one of {list(_BACKENDS)}. "
            f"Got {backend!r} instead."
        )
    _check_int(threads, name="threads", minimum=1, where="build_lut")
    _check_int(warmup, name="warmup", minimum=0, where="build_lut")
    _check_int(repeats, name="repeats", minimum=1, where="build_lut")
    _check_int(rounds, name="rounds", minimum=1, where="build_lut")
    keys = _distinct_keys(items)
    profiler = MeasuredProfile(backend=backend, warmup=warmup, repeats=repeats, threads=threads)
    contexts = list(dict.fromkeys(c for key in keys for c in _contexts(key)))
    total = rounds * (2 * len(keys) + len(contexts)) + _OVERHEAD_SAMPLES
    done = 0

    def time_ms(module: nn.Module, shape: tuple[int, ...]) -> float:
        nonlocal done
        latency = profiler.profile(module, input_shape=shape).latency_ms
        done += 1
        if progress is not None:
            progress(done, total)
        return latency

    # A near-empty model: what one session run costs by itself. Sampled at the start, the middle
    # and the end of the build, and like every timing, the best sample is kept.
    overheads = [time_ms(nn.ReLU(), (1,))]
    alone: dict[LayerKey, list[float]] = {k: [] for k in keys}
    chain: dict[LayerKey, list[float]] = {k: [] for k in keys}
    context_ms: dict[tuple[str, tuple[int, ...]], list[float]] = {c: [] for c in contexts}
    for round_index in range(rounds):
        measured: set[tuple[str, tuple[int, ...]]] = set()
        for index, key in enumerate(keys):
            if round_index == rounds // 2 and index == len(keys) // 2:
                overheads.append(time_ms(nn.ReLU(), (1,)))
            before, after = _contexts(key)
            # Context ops are timed next to the first layer that needs them, so both see the
            # same load.
            for context in (before, after):
                if context not in measured:
                    measured.add(context)
                    context_ms[context].append(time_ms(context_module(*context), context[1]))
            layer = layer_module(key, seed=seed + index)
            alone[key].append(time_ms(layer, key.input_shape))
            sandwich = nn.Sequential(context_module(*before), layer, context_module(*after))
            chain[key].append(time_ms(sandwich, key.input_shape))
    while len(overheads) < _OVERHEAD_SAMPLES:
        overheads.append(time_ms(nn.ReLU(), (1,)))
    entries = {}
    for key in keys:
        before, after = _contexts(key)
        a, b = min(alone[key]), min(chain[key])
        c_in, c_out = (min(context_ms[c]) for c in (before, after))
        entries[key] = LUTEntry(
            latency_ms=(a + b - c_in - c_out) / 2, alone_ms=a, chain_ms=b, repeats=repeats
        )
    return LatencyLUT(
        entries=entries,
        overhead_ms=min(overheads),
        backend=backend,
        threads=threads,
        warmup=warmup,
        repeats=repeats,
        rounds=rounds,
        host=host_facts(backend=backend, threads=threads),
        created=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    )


def _contexts(key: LayerKey) -> tuple[tuple[str, tuple[int, ...]], tuple[str, tuple[int, ...]]]:
    """(kind, shape) of the context ops before and after ``key``'s group."""
    return (key.kind, key.input_shape), (key.kind, key.output_shape)


def measure_models(
    models: Sequence[tuple[nn.Module, tuple[int, ...]]],
    *,
    backend: Literal["onnxruntime", "torch"] = "onnxruntime",
    threads: int = 1,
    warmup: int = 10,
    repeats: int = 30,
    rounds: int = 3,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> list[list[float]]:
    """Whole-model latencies (ms) timed the way :func:`build_lut` times layers.

    ``models``: ``(model, input_shape)`` pairs. Each round times every model once
    (:class:`MeasuredProfile` median of ``repeats`` runs after ``warmup``), in a new order
    shuffled with ``random.Random(seed)``, so a slow phase of the machine hits different models
    in different rounds. Returns the per-round medians of each model, in round order; the
    reference latency of a model is the smallest of them (see :func:`build_lut`).
    """
    from autocompress.hardware_profiles.measured import MeasuredProfile

    _check_int(rounds, name="rounds", minimum=1, where="measure_models")
    profiler = MeasuredProfile(backend=backend, warmup=warmup, repeats=repeats, threads=threads)
    rng = random.Random(seed)
    timings: list[list[float]] = [[] for _ in models]
    done = 0
    for _ in range(rounds):
        order = list(range(len(models)))
        rng.shuffle(order)
        for i in order:
            model, shape = models[i]
            timings[i].append(profiler.profile(model, input_shape=shape).latency_ms)
            done += 1
            if progress is not None:
                progress(done, rounds * len(models))
    return timings


def _distinct_keys(items: Iterable[Any]) -> list[LayerKey]:
    if isinstance(items, str | bytes) or not isinstance(items, Iterable):
        raise ValueError(
            "The 'items' parameter of build_lut must be an iterable of LayerKey or "
            f"(model, input_shape) pairs. Got {items!r} instead."
        )
    seen: dict[LayerKey, None] = {}
    for item in items:
        if isinstance(item, LayerKey):
            found = [item]
        elif isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], nn.Module):
            traced = model_layers(item[0], input_shape=item[1])
            found = [r.key for r in traced.layers if r.key is not None]
        else:
            raise ValueError(
                "The 'items' parameter of build_lut must hold LayerKey objects or "
                f"(nn.Module, input_shape) pairs. Got {item!r} instead."
            )
        for key in found:
            if key.precision != HOST_PRECISION:
                raise ValueError(
                    f"The 'items' parameter of build_lut must only hold keys at precision "
                    f"{HOST_PRECISION!r} (this host times float kernels). Got {key} instead."
                )
            seen.setdefault(key, None)
    return list(seen)


def host_facts(*, backend: str, threads: int | None) -> dict[str, Any]:
    """Machine and library facts stored with a LUT or predictor, so a reader knows where the
    numbers were measured and can tell when they no longer apply."""
    facts: dict[str, Any] = {
        "cpu_model": _cpu_model(),
        "machine": platform.machine(),
        "system": platform.platform(),
        "logical_cpus": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "backend": backend,
        "threads": threads,
    }
    if backend == "onnxruntime":
        try:
            import onnxruntime

            facts["onnxruntime"] = onnxruntime.__version__
        except ImportError:  # the measurement itself reports the missing extra
            facts["onnxruntime"] = None
    return facts


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# ----------------------------------------------------------------------------- search spaces
def sample_candidates(
    space_config: SpaceConfig | Mapping[str, Any],
    *,
    data_shape: tuple[int, ...],
    num_classes: int,
    n_samples: int,
    seed: int,
) -> list[Candidate]:
    """``n_samples`` candidates drawn from a :class:`JointSearchSpace` by Optuna's
    ``RandomSampler(seed=seed)`` (same arguments, same candidates). Duplicates are kept."""
    import optuna

    from autocompress.spaces import JointSearchSpace, SpaceConfig

    shape = check_input_shape(data_shape, caller="sample_candidates")
    _check_int(num_classes, name="num_classes", minimum=1, where="sample_candidates")
    _check_int(n_samples, name="n_samples", minimum=1, where="sample_candidates")
    _check_int(seed, name="seed", minimum=0, where="sample_candidates")
    config = space_config
    if not isinstance(config, SpaceConfig):
        config = SpaceConfig.model_validate(dict(space_config))
    space = JointSearchSpace(config, num_classes=num_classes, input_shape=shape)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    return [space.suggest(study.ask()) for _ in range(n_samples)]


def layer_shapes_of_space(
    space_config: SpaceConfig | Mapping[str, Any],
    *,
    data_shape: tuple[int, ...],
    num_classes: int,
    n_samples: int,
    seed: int,
) -> list[LayerKey]:
    """Distinct host layer keys of ``n_samples`` candidates of a search space (first-seen order).

    Each candidate is built compressed (pruned channels are what the host runs), then traced
    with :func:`model_layers`. Random sampling covers the space's layer shapes only in
    proportion to ``n_samples``; layers of later candidates that were never drawn are LUT misses.
    """
    from autocompress.compression.apply import build_compressed

    candidates = sample_candidates(
        space_config,
        data_shape=data_shape,
        num_classes=num_classes,
        n_samples=n_samples,
        seed=seed,
    )
    keys: dict[LayerKey, None] = {}
    for candidate in candidates:
        model = build_compressed(candidate, num_classes=num_classes, input_shape=data_shape)
        for record in model_layers(model, input_shape=data_shape).layers:
            if record.key is not None:
                keys.setdefault(record.key, None)
    return list(keys)


# ----------------------------------------------------------------------------- profile
#: What may price LUT misses (see LUTProfile).
Fallback = Union["LatencyPredictor", "AnalyticProfile", DeviceSpec, str, os.PathLike, None]


@register_hardware_profile("lut")
class LUTProfile(HardwareProfile):
    """Latency = the LUT's per-run overhead + the sum of the LUT entries of the model's layers.

    ``lut``: a :class:`LatencyLUT` or the path of one saved as JSON. ``fallback`` prices layers
    that are not in the table: None (a miss raises ValueError naming the missing layers), a
    :class:`LatencyPredictor` or the path of one saved as ``.json`` (its per-layer prediction),
    or an :class:`AnalyticProfile` / :class:`DeviceSpec` / device name / device YAML path (its
    per-layer roofline latency). Energy is unknown (NaN); size and peak memory use the bits, as
    in every profile. ``details`` lists each layer's key, latency and source (``"lut"`` or
    ``"fallback"``), the hit count and the LUT's host facts. The LUT is read-only here, so
    concurrent ``profile`` calls are safe.
    """

    def __init__(
        self,
        *,
        lut: LatencyLUT | str | os.PathLike[str],
        fallback: Fallback = None,
    ) -> None:
        if isinstance(lut, str | os.PathLike):
            lut = LatencyLUT.load(lut)
        if not isinstance(lut, LatencyLUT):
            raise ValueError(
                "The 'lut' parameter of LUTProfile must be a LatencyLUT or the path of a LUT "
                f"JSON file. Got {lut!r} instead."
            )
        self.lut = lut
        self.fallback = _resolve_fallback(fallback)

    def __repr__(self) -> str:
        return f"LUTProfile(lut={self.lut!r}, fallback={self.fallback!r})"

    def profile(self, model: nn.Module, *, input_shape: tuple[int, ...]) -> HardwareMetrics:
        shape = check_input_shape(input_shape, caller="LUTProfile.profile")
        traced = model_layers(model, input_shape=shape, precision=self.lut.precision)
        looked_up = [None if r.key is None else self.lut.layer_ms(r.key) for r in traced.layers]
        misses = [i for i, ms in enumerate(looked_up) if ms is None]
        fallback_ms = self._fallback_ms(model, shape, traced, misses) if misses else {}
        rows = []
        for i, record in enumerate(traced.layers):
            hit = looked_up[i] is not None
            rows.append(
                {
                    "name": record.name,
                    "key": str(record.key),
                    "latency_ms": looked_up[i] if hit else fallback_ms[i],
                    "source": "lut" if hit else "fallback",
                }
            )
        costs = layer_costs(model, input_shape=shape)
        return HardwareMetrics(
            latency_ms=self.lut.overhead_ms + sum(r["latency_ms"] for r in rows),
            energy_mj=math.nan,
            size_bytes=model_size_bytes(model),
            peak_mem_bytes=peak_activation_bytes(costs),
            details={
                "overhead_ms": self.lut.overhead_ms,
                "hits": len(rows) - len(misses),
                "misses": len(misses),
                "uncosted_ops": traced.uncosted_ops,
                "uncosted_elems": traced.uncosted_elems,
                "backend": self.lut.backend,
                "threads": self.lut.threads,
                "lut_host": self.lut.host,
                "layers": rows,
                "energy_note": "Energy unknown: a latency LUT holds no power figures.",
            },
        )

    def _fallback_ms(
        self,
        model: nn.Module,
        shape: tuple[int, ...],
        traced: ModelLayers,
        misses: list[int],
    ) -> dict[int, float]:
        from autocompress.hardware_profiles.analytic import AnalyticProfile

        if self.fallback is None:
            missing = [str(traced.layers[i].key) for i in misses[:3]]
            raise ValueError(
                f"LUTProfile: {len(misses)} layer(s) of the model are not in the LUT, e.g. "
                f"{missing}. Build the LUT for this search space (autocompress profile "
                "build-lut) or pass fallback= (a LatencyPredictor or a device spec)."
            )
        if isinstance(self.fallback, AnalyticProfile):
            rows = self.fallback.profile(model, input_shape=shape).details["layers"]
            if len(rows) != len(traced.layers):  # both list Conv/Linear calls in order
                raise RuntimeError(
                    f"LUTProfile: the analytic fallback saw {len(rows)} layer calls but the "
                    f"trace saw {len(traced.layers)}; the model runs differently between calls."
                )
            return {i: float(rows[i]["latency_ms"]) for i in misses}
        unkeyed = [traced.layers[i].name for i in misses if traced.layers[i].key is None]
        if unkeyed:
            raise ValueError(
                "LUTProfile: the learned fallback needs a LayerKey, which these layers lack "
                f"(transposed or non-zero-padded convs): {unkeyed}. Use an analytic fallback."
            )
        keys = [traced.layers[i].key for i in misses]
        predicted = self.fallback.predict_layers(keys)  # type: ignore[union-attr]
        return {i: float(ms) for i, ms in zip(misses, predicted, strict=True)}


def _resolve_fallback(fallback: Any) -> Any:
    from autocompress.hardware_profiles.analytic import AnalyticProfile
    from autocompress.hardware_profiles.predictor import LatencyPredictor

    if fallback is None or isinstance(fallback, LatencyPredictor | AnalyticProfile):
        return fallback
    if isinstance(fallback, DeviceSpec):
        return AnalyticProfile(device=fallback)
    if isinstance(fallback, str | os.PathLike):
        if str(fallback).endswith(".json"):
            return LatencyPredictor.load(fallback)
        return AnalyticProfile(device=fallback)
    raise ValueError(
        "The 'fallback' parameter of LUTProfile must be None, a LatencyPredictor (or its .json "
        f"path), an AnalyticProfile, a DeviceSpec or a device name/YAML path. Got {fallback!r} "
        "instead."
    )


# ----------------------------------------------------------------------------- checks
def _key_problem(key: LayerKey) -> str:
    ints = ("in_channels", "out_channels", "groups")
    tuples = ("kernel", "stride", "padding", "dilation", "input_size")
    if key.kind not in ("conv", "linear"):
        return "kind must be 'conv' or 'linear'"
    for name in ints:
        value = getattr(key, name)
        if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
            return f"{name} must be an int >= 1"
    for name in tuples:
        value = getattr(key, name)
        if not isinstance(value, tuple) or not all(
            isinstance(v, Integral) and not isinstance(v, bool) and v >= 0 for v in value
        ):
            return f"{name} must be a tuple of ints >= 0"
    if not isinstance(key.bn, bool):
        return "bn must be a bool"
    if key.act != "none" and key.act not in _ACTIVATION_FACTORIES:
        return f"act must be 'none' or one of {sorted(_ACTIVATION_FACTORIES)}"
    if not isinstance(key.precision, str) or not key.precision:
        return "precision must be a non-empty str"
    if key.kind == "linear":
        if key.kernel or key.stride or key.padding or key.dilation or key.groups != 1:
            return "a linear key has empty kernel/stride/padding/dilation and groups 1"
        return ""
    dims = len(key.input_size)
    if not 1 <= dims <= 3 or any(
        len(getattr(key, n)) != dims for n in ("kernel", "stride", "padding", "dilation")
    ):
        return "a conv key has 1-3 spatial dims and one kernel/stride/padding/dilation per dim"
    if min(key.kernel + key.stride + key.dilation + key.input_size) < 1:
        return "kernel, stride, dilation and input_size must be >= 1"
    if key.in_channels % key.groups or key.out_channels % key.groups:
        return "groups must divide in_channels and out_channels"
    if min(key.output_size) < 1:
        return "the kernel does not fit the padded input"
    return ""


def _ok_entry(entry: Any) -> bool:
    if not isinstance(entry, LUTEntry):
        return False
    times = (entry.alone_ms, entry.chain_ms)
    return (
        all(isinstance(t, Real) and math.isfinite(t) and t >= 0 for t in times)
        and isinstance(entry.latency_ms, Real)
        and math.isfinite(entry.latency_ms)
    )


def _check_int(value: Any, *, name: str, minimum: int, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise ValueError(
            f"The '{name}' parameter of {where} must be an int >= {minimum}. Got {value!r} instead."
        )
    return int(value)


def _dims(values: Sequence[int]) -> str:
    return "x".join(map(str, values)) if values else "-"


def _brief(data: Any) -> str:
    text = repr(data)
    return text if len(text) <= 80 else text[:77] + "..."
