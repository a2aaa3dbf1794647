"""The latency LUT's data model and its JSON file format.

A :class:`LayerKey` describes one layer op group (a Conv/Linear with the BatchNorm and the
activation folded into it; :mod:`~autocompress.hardware_profiles.lut_trace` says which ops form a
group), a :class:`LUTEntry` holds its timings, and a :class:`LatencyLUT` maps keys to entries
together with how and where they were measured (see
:mod:`~autocompress.hardware_profiles.lut_build`). A LUT is saved as versioned JSON (never
pickle) with the facts of the host that measured it; :func:`write_json` and :func:`read_json`
are shared with the learned predictor's file. Kept apart from tracing, measuring and the profile
so that each of those (and the predictor) can import the data model without import cycles.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from numbers import Integral, Real
from pathlib import Path
from typing import Any, Literal, NamedTuple

from torch import nn

from autocompress.core.validation import check_int

__all__ = [
    "ACTIVATION_FACTORIES",
    "FUSED_ACTIVATIONS",
    "DEPLOYED",
    "HOST_PRECISION",
    "LUT_BACKENDS",
    "LUTEntry",
    "LatencyLUT",
    "LayerKey",
    "LayerRecord",
    "ModelLayers",
    "read_json",
    "write_json",
]

#: Precision of a layer the host runs with float kernels (and of every layer of a float LUT).
HOST_PRECISION = "fp32"
#: A LUT's precision when each layer is keyed by the precision the host runtime executes it
#: at (``"int8"`` or ``"fp32"``, see :func:`.deployed.deployed_precision`): it was measured on
#: quantized models (MeasuredProfile with ``quantized=True``).
DEPLOYED = "deployed"
LUT_FORMAT = "autocompress-latency-lut"
LUT_VERSION = 1
#: Runtimes a LUT can be measured with (MeasuredProfile backends).
LUT_BACKENDS = ("onnxruntime", "torch")
#: Activations fused into the preceding layer, by exact type (a subclass may compute something
#: else). LeakyReLU and GELU are left out: their parameters would have to be part of the key.
FUSED_ACTIVATIONS: dict[type[nn.Module], str] = {
    nn.ReLU: "relu",
    nn.ReLU6: "relu6",
    nn.SiLU: "silu",
    nn.Hardswish: "hardswish",
    nn.Sigmoid: "sigmoid",
    nn.Tanh: "tanh",
}
#: Activation name of a LayerKey -> the module that computes it.
ACTIVATION_FACTORIES: dict[str, Callable[[], nn.Module]] = {
    name: cls for cls, name in FUSED_ACTIVATIONS.items()
}


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
    every measurement includes once (see :mod:`~autocompress.hardware_profiles.lut_build`);
    :meth:`layer_ms` subtracts it.
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
        if backend not in LUT_BACKENDS:
            raise ValueError(
                f"The 'backend' parameter of LatencyLUT must be one of {list(LUT_BACKENDS)}. "
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
        self.threads = check_int(threads, name="threads", where="LatencyLUT", minimum=1)
        self.warmup = check_int(warmup, name="warmup", where="LatencyLUT", minimum=0)
        self.repeats = check_int(repeats, name="repeats", where="LatencyLUT", minimum=1)
        self.rounds = check_int(rounds, name="rounds", where="LatencyLUT", minimum=1)
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
    if key.act != "none" and key.act not in ACTIVATION_FACTORIES:
        return f"act must be 'none' or one of {sorted(ACTIVATION_FACTORIES)}"
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


def _dims(values: Sequence[int]) -> str:
    return "x".join(map(str, values)) if values else "-"


def _brief(data: Any) -> str:
    text = repr(data)
    return text if len(text) <= 80 else text[:77] + "..."
