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
from dataclasses import dataclass, replace
from numbers import Integral, Real
from pathlib import Path
from typing import Any, Literal, NamedTuple

from torch import nn

from autocompress.core.validation import check_int

__all__ = [
    "ACTIVATION_FACTORIES",
    "BITS_PRECISION",
    "DEPLOYED",
    "FUSED_ACTIVATIONS",
    "HOST_PRECISION",
    "IMPORTED_BACKEND",
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
#: Precision of a LUT whose keys carry each layer's own ``w_bits``/``a_bits`` (an imported
#: table): the LUT profile looks a layer up at its bits.
BITS_PRECISION = "bits"
LUT_FORMAT = "autocompress-latency-lut"
#: Version 2 added the bits of a key, ``fused``, ``source`` and optional entry fields;
#: version 1 files still load (their keys are float, their entries measured here).
LUT_VERSION = 2
_READABLE_VERSIONS = (1, 2)
#: Runtimes a LUT can be measured with (MeasuredProfile backends).
LUT_BACKENDS = ("onnxruntime", "torch", "executorch", "litert")
#: The backend of a LUT imported from a table measured or simulated elsewhere.
IMPORTED_BACKEND = "imported"
_FLOAT_BITS = 32
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
    (:data:`HOST_PRECISION` on this host; a :meth:`DeviceSpec.mac_cost` label; or
    :data:`BITS_PRECISION`: the layer's own bits). ``w_bits``/``a_bits``: the layer's weight and
    input bits (32, float, unless the LUT is keyed by bits).
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
    w_bits: int = _FLOAT_BITS
    a_bits: int = _FLOAT_BITS

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
            "w_bits": self.w_bits,
            "a_bits": self.a_bits,
        }

    @classmethod
    def from_dict(cls, data: Any) -> LayerKey:
        """Inverse of :meth:`as_dict`; raises ValueError on missing, unknown or mistyped fields.
        ``w_bits``/``a_bits`` may be missing (keys of version-1 files): 32."""
        fields = set(cls.__dataclass_fields__)
        bits = {"w_bits", "a_bits"}
        if not isinstance(data, Mapping) or set(data) not in (fields, fields - bits):
            raise ValueError(
                f"The 'data' parameter of LayerKey.from_dict must be a mapping with exactly the "
                f"fields {sorted(fields)} (w_bits and a_bits may be left out). "
                f"Got {data!r} instead."
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
        bits = f"w{self.w_bits}a{self.a_bits}"
        if self.precision == BITS_PRECISION:
            return f"{self.kind}{extras} {shape} @{bits}"
        float_bits = (self.w_bits, self.a_bits) == (_FLOAT_BITS, _FLOAT_BITS)
        return f"{self.kind}{extras} {shape} @{self.precision}" + ("" if float_bits else f" {bits}")


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
    An entry imported from a table (``autocompress profile import-lut``) holds the table's
    ``latency_ms`` only: ``alone_ms``, ``chain_ms`` and ``repeats`` are None. ``energy_mj``:
    millijoules per call when the table gives them, else None.
    """

    latency_ms: float
    alone_ms: float | None
    chain_ms: float | None
    repeats: int | None
    energy_mj: float | None = None


class LatencyLUT:
    """Measured latency of layer op groups on one host and runtime.

    ``entries`` maps :class:`LayerKey` to :class:`LUTEntry`. ``overhead_ms`` is the per-run cost
    every measurement includes once (see :mod:`~autocompress.hardware_profiles.lut_build`);
    :meth:`layer_ms` subtracts it.
    ``backend``/``threads``/``warmup``/``repeats``/``rounds`` say how the entries were measured,
    ``host`` describes the machine and library versions (see :func:`host_facts`).

    A table imported from elsewhere (:data:`IMPORTED_BACKEND`; ``threads``/``warmup``/
    ``repeats`` None: unknown) has ``precision`` :data:`BITS_PRECISION` (keys carry the bits),
    ``fused`` False (its keys hold the geometry only: bn False, act ``"none"``, a Linear as a
    1x1 conv; each figure is the layer as that device runs it, with what follows fused) and
    ``source``, where it came from (file, rows, sha256). :meth:`lookup_key` maps a traced
    layer's key to the form this LUT stores. Instances are not modified after construction.
    """

    def __init__(
        self,
        *,
        entries: Mapping[LayerKey, LUTEntry],
        overhead_ms: float,
        backend: str,
        threads: int | None,
        warmup: int | None,
        repeats: int | None,
        rounds: int = 1,
        precision: str = HOST_PRECISION,
        host: Mapping[str, Any] | None = None,
        created: str = "",
        fused: bool = True,
        source: Mapping[str, Any] | None = None,
    ) -> None:
        if not isinstance(overhead_ms, Real) or not math.isfinite(overhead_ms) or overhead_ms < 0:
            raise ValueError(
                "The 'overhead_ms' parameter of LatencyLUT must be a finite number >= 0. "
                f"Got {overhead_ms!r} instead."
            )
        backends = [*LUT_BACKENDS, IMPORTED_BACKEND]
        if backend not in backends:
            raise ValueError(
                f"The 'backend' parameter of LatencyLUT must be one of {backends}. "
                f"Got {backend!r} instead."
            )
        bad = [k for k, v in entries.items() if not (isinstance(k, LayerKey) and _ok_entry(v))]
        if bad:
            raise ValueError(
                "The 'entries' parameter of LatencyLUT must map LayerKey to LUTEntry with finite "
                f"times (alone/chain >= 0 or None). Got a bad entry for {bad[0]!r} instead."
            )
        if not isinstance(fused, bool):
            raise ValueError(
                f"The 'fused' parameter of LatencyLUT must be a bool. Got {fused!r} instead."
            )
        self.entries: dict[LayerKey, LUTEntry] = dict(entries)
        self.overhead_ms = float(overhead_ms)
        self.backend = backend
        self.threads = _optional_int(threads, name="threads", minimum=1)
        self.warmup = _optional_int(warmup, name="warmup", minimum=0)
        self.repeats = _optional_int(repeats, name="repeats", minimum=1)
        self.rounds = check_int(rounds, name="rounds", where="LatencyLUT", minimum=1)
        self.precision = str(precision)
        self.host = dict(host or {})
        self.created = created
        self.fused = fused
        self.source = dict(source) if source is not None else None

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

    def lookup_key(self, key: LayerKey, *, w_bits: int, a_bits: int) -> LayerKey:
        """The key under which this LUT stores a traced layer (``key`` from
        :func:`model_layers` at this LUT's ``precision``) whose bits are ``w_bits``/``a_bits``:
        with the bits when the LUT is keyed by them, and in the geometry-only form of a table
        that is not ``fused`` (see the class doc). A Linear over ``n`` positions becomes a 1x1
        conv on a 1 x n input (1 x 1 for a plain vector), as such a table writes it."""
        if self.precision == BITS_PRECISION:
            key = replace(key, w_bits=w_bits, a_bits=a_bits)
        if self.fused:
            return key
        key = replace(key, bn=False, act="none")
        if key.kind == "linear":
            key = replace(
                key,
                kind="conv",
                kernel=(1, 1),
                stride=(1, 1),
                padding=(0, 0),
                dilation=(1, 1),
                input_size=(1, math.prod(key.input_size)),
            )
        return key

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

    def layer_energy_mj(self, key: LayerKey) -> float | None:
        """Energy of one call of the layer (mJ), or None when unknown or not in the table."""
        entry = self.entries.get(key)
        return None if entry is None else entry.energy_mj

    def to_dict(self) -> dict[str, Any]:
        data = {
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
            "fused": self.fused,
            "overhead_ms": self.overhead_ms,
        }
        if self.source is not None:
            data["source"] = self.source
        data["entries"] = [_entry_dict(key, e) for key, e in sorted(self.entries.items())]
        return data

    @classmethod
    def from_dict(cls, data: Any) -> LatencyLUT:
        """Inverse of :meth:`to_dict`; raises ValueError naming the first problem it finds."""
        if not isinstance(data, Mapping) or data.get("format") != LUT_FORMAT:
            raise ValueError(
                f"The 'data' parameter of LatencyLUT.from_dict must be a mapping with "
                f"format={LUT_FORMAT!r}. Got {_brief(data)} instead."
            )
        if data.get("version") not in _READABLE_VERSIONS:
            raise ValueError(
                f"The 'version' field of a latency LUT must be one of {list(_READABLE_VERSIONS)}. "
                f"Got {data.get('version')!r} instead."
            )
        try:
            entries = {}
            for row in data["entries"]:
                key = LayerKey.from_dict(row["key"])
                entries[key] = LUTEntry(
                    latency_ms=float(row["latency_ms"]),
                    alone_ms=_optional(float, row["alone_ms"]),
                    chain_ms=_optional(float, row["chain_ms"]),
                    repeats=_optional(int, row["repeats"]),
                    energy_mj=_optional(float, row.get("energy_mj")),
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
                fused=data.get("fused", True),
                source=data.get("source"),
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
    for name in ("w_bits", "a_bits"):
        value = getattr(key, name)
        if isinstance(value, bool) or not isinstance(value, Integral) or not 1 <= value <= 32:
            return f"{name} must be an int in [1, 32]"
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
    optional = (entry.alone_ms, entry.chain_ms, entry.energy_mj)
    return (
        all(t is None or (isinstance(t, Real) and math.isfinite(t) and t >= 0) for t in optional)
        and isinstance(entry.latency_ms, Real)
        and math.isfinite(entry.latency_ms)
    )


def _entry_dict(key: LayerKey, entry: LUTEntry) -> dict[str, Any]:
    row = {
        "key": key.as_dict(),
        "latency_ms": entry.latency_ms,
        "alone_ms": entry.alone_ms,
        "chain_ms": entry.chain_ms,
        "repeats": entry.repeats,
    }
    if entry.energy_mj is not None:
        row["energy_mj"] = entry.energy_mj
    return row


def _optional(kind: Callable[[Any], Any], value: Any) -> Any:
    return None if value is None else kind(value)


def _optional_int(value: Any, *, name: str, minimum: int) -> int | None:
    """None (not known: an imported table) or an int >= ``minimum``."""
    return (
        None if value is None else check_int(value, name=name, where="LatencyLUT", minimum=minimum)
    )


def _dims(values: Sequence[int]) -> str:
    return "x".join(map(str, values)) if values else "-"


def _brief(data: Any) -> str:
    text = repr(data)
    return text if len(text) <= 80 else text[:77] + "..."
