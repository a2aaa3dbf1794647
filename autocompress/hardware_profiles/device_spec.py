"""Edge-device descriptions for the analytic profile, loaded from cited YAML files.

Shipped specs live in ``devices/*.yaml`` (package data); every field there carries a comment
citing its source. Users can pass the path of their own YAML with the same fields.
"""

from __future__ import annotations

import math
import os
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, NamedTuple

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..core.models import OmitAtDefault

PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
PositiveInt = Annotated[int, Field(gt=0)]
Bits = Annotated[int, Field(ge=1, le=32)]

DECODED_BITS = 8  # non-uniform weights a device cannot run natively are decoded to int8
_DEVICES_PACKAGE = "autocompress.hardware_profiles"
_DEVICES_DIR = "devices"


class MacCost(NamedTuple):
    """How one layer's MACs run: precision label, peak MAC/s and energy per MAC (pJ)."""

    precision: str
    peak_macs_per_s: float
    energy_pj: float


class QuantizerCost(BaseModel):
    """How a device runs the weights of one non-uniform quantizer (``quantizers:`` of a spec).

    ``executes_as: shift``: the device multiplies by powers of two with shifts (``pot``, and
    ``apot`` as two shifts and an add), so such a layer is priced like ``w_bits``-bit integer
    compute. ``executes_as: int8``: the weights are decoded to int8 before the MACs (a table
    lookup), priced as 8-bit weights. ``source`` cites where the figure comes from, as every
    other field of a shipped spec does.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    executes_as: Literal["shift", "int8"]
    source: str = Field(min_length=1)


class SparseKernel(BaseModel):
    """A sparse weight pattern the device runs faster than dense (``DeviceSpec.sparse``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    speedup: Annotated[float, Field(ge=1, allow_inf_nan=False)]
    source: str = Field(min_length=1)


#: The layer classes of :attr:`DeviceSpec.layer_efficiency`: a depthwise conv (groups equal to
#: its input channels) and another grouped conv; every other Conv/Linear layer is dense.
LayerClass = Literal["dense", "depthwise", "grouped"]
Efficiency = Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]


class BitScaling(BaseModel):
    """How much faster a device's kernels run operands narrower than the precision they compute
    at (packed sub-word arithmetic): the peak MAC rate of a layer whose wider operand has ``b``
    bits, computed at precision ``p > b``, is multiplied by ``(p / max(b, saturation_bits)) **
    exponent``. Below ``saturation_bits`` narrower operands gain nothing more. Usually fitted
    by ``autocompress profile calibrate``; latency only (energy per MAC is not scaled).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    exponent: Annotated[float, Field(ge=0, le=8, allow_inf_nan=False)]
    saturation_bits: Bits


class CalibrationRecord(BaseModel):
    """What a calibrated spec was fitted on (``autocompress profile calibrate``).

    ``table``: the LUT file; ``table_sha256``: its SHA-256; ``rows``: its usable entries, of
    which ``fit_rows`` fitted the spec and the rest (``holdout`` share, drawn with ``seed``)
    were held out; ``base_device``: the spec it started from; ``metrics``: fidelity figures
    (``within_10pct``, ``kendall_tau``, ...) per data set and spec, e.g. ``heldout_calibrated``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    table: str
    table_sha256: str
    rows: PositiveInt
    fit_rows: PositiveInt
    holdout: Annotated[float, Field(ge=0, lt=1)]
    seed: int
    base_device: str
    metrics: dict[str, dict[str, float]] = Field(default_factory=dict)
    created: str = ""


class DeviceSpec(OmitAtDefault):
    """Roofline + energy-per-operation description of one edge target.

    Precision rules (see :meth:`mac_cost`):

    * fixed-precision hardware computes a layer at ``max(w_bits, a_bits)`` rounded up to the
      next entry of ``supported_bits`` (int4 on an int8 CPU runs as int8); a precision above
      all of them runs at the largest;
    * ``bit_flexible`` (BitFusion-style) hardware fuses small multipliers, so a ``w x a`` MAC
      runs ``(base_bits / w') * (base_bits / a')`` times faster than a ``base_bits`` MAC and
      costs that much less energy, where ``w'``/``a'`` are the bits rounded up to
      ``supported_bits`` (the fusion widths); above the largest width, to a multiple of it
      (temporal decomposition). ``peak_macs_per_s``/``energy_per_mac_pj`` then hold only
      ``base_bits``;
    * ``fallback_bits`` (a subset of ``supported_bits``, empty by default) lists precisions the
      device's own compute units cannot run, which its runtime hands to another processor (an
      int8-only accelerator runs float layers on its host CPU). Their ``peak_macs_per_s`` /
      ``energy_per_mac_pj`` entries are that processor's, and :meth:`mac_cost` labels them
      ``"<bits>-fallback"``. The memory roof, on-chip memory, layer overhead and compute
      efficiency stay the device's, and the hand-over itself is not costed, so a fallback layer
      is an optimistic estimate.
    * non-uniform weights (``pot``, ``apot``, ``codebook``; see :meth:`weight_compute_bits`)
      compute as int8 (``DECODED_BITS``) unless ``quantizers`` declares ``executes_as: shift``
      for that quantizer; their memory traffic is at their own bits either way (``graph``).

    ``sparse`` (empty by default) maps N:M patterns (``"2:4"``) to the compute speedup the
    device's sparse kernels give a layer with that pattern (an Ampere-class GPU's sparse tensor
    cores: 2x for 2:4), with a source. Only there does sparsity cut latency and energy (MAC time
    and energy divided by the speedup, the weight read in its sparse encoding); every other
    sparse layer is priced dense, its sparsity saving storage only.

    Calibration terms (optional; unset, they leave every prediction as it was; usually written
    by ``autocompress profile calibrate`` from a per-layer latency table):

    * ``compute_efficiency_by_bits``: the efficiency of layers computed at that precision (see
      :meth:`compute_precision`), instead of ``compute_efficiency``;
    * ``layer_efficiency``: a factor in (0, 1] on the efficiency of ``depthwise`` and
      ``grouped`` convs, whose kernels reach a smaller share of the peak than dense ones;
    * ``bit_scaling``: narrow operands speed up kernels of a wider precision (:class:`BitScaling`);
    * ``channel_tile``: the device computes output channels in blocks of this many, so a layer
      with ``C`` of them costs the MAC time of ``ceil(C / channel_tile) * channel_tile``;
    * ``calibration``: what the terms were fitted on (:class:`CalibrationRecord`).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    # Fields that came later, left out of dumps while at their defaults, so specs written before
    # (calibrated ones included) stay as they were.
    omit_at_default: ClassVar[tuple[str, ...]] = (
        "quantizers",
        "compute_efficiency_by_bits",
        "layer_efficiency",
        "bit_scaling",
        "channel_tile",
        "calibration",
    )

    name: str = Field(min_length=1)
    description: str = ""
    kind: Literal["cpu", "gpu", "mcu", "accelerator"]
    supported_bits: list[Bits] = Field(min_length=1)
    peak_macs_per_s: dict[Bits, PositiveFloat] = Field(min_length=1)
    bit_flexible: bool = False
    base_bits: Bits | None = None
    fallback_bits: list[Bits] = Field(default_factory=list)
    memory_bandwidth_bytes_per_s: PositiveFloat
    onchip_memory_bytes: PositiveInt
    energy_per_mac_pj: dict[Bits, PositiveFloat] = Field(min_length=1)
    energy_per_dram_byte_pj: PositiveFloat
    energy_per_sram_byte_pj: PositiveFloat
    layer_overhead_s: PositiveFloat
    compute_efficiency: Annotated[float, Field(gt=0, le=1)]
    sources: list[str] = Field(min_length=1)
    quantizers: dict[Literal["pot", "apot", "codebook"], QuantizerCost] = Field(
        default_factory=dict
    )
    sparse: dict[str, SparseKernel] = Field(default_factory=dict)
    compute_efficiency_by_bits: dict[Bits, Efficiency] = Field(default_factory=dict)
    layer_efficiency: dict[Literal["depthwise", "grouped"], Efficiency] = Field(
        default_factory=dict
    )
    bit_scaling: BitScaling | None = None
    channel_tile: PositiveInt | None = None
    calibration: CalibrationRecord | None = None

    @field_validator("quantizers")
    @classmethod
    def _codebook_does_not_shift(
        cls, quantizers: dict[str, QuantizerCost]
    ) -> dict[str, QuantizerCost]:
        if "codebook" in quantizers and quantizers["codebook"].executes_as == "shift":
            raise ValueError(
                "a codebook's values are not powers of two: it cannot execute as shift; "
                "use int8. Got codebook: shift"
            )
        return quantizers

    @field_validator("sparse")
    @classmethod
    def _nm_patterns(cls, sparse: dict[str, SparseKernel]) -> dict[str, SparseKernel]:
        from ..spaces.candidate import canonical_sparsity

        out = {}
        for key, kernel in sparse.items():
            value = canonical_sparsity(key) if ":" in key else None
            if not isinstance(value, str):
                raise ValueError(f"keys must be 'N:M' patterns with 0 < N < M. Got {key!r}")
            out[value] = kernel
        return out

    @field_validator("supported_bits", "fallback_bits")
    @classmethod
    def _sorted_unique(cls, bits: list[int]) -> list[int]:
        return sorted(set(bits))

    @model_validator(mode="after")
    def _tables_match_bits(self) -> DeviceSpec:
        if self.bit_flexible:
            if self.base_bits is None or self.base_bits not in self.supported_bits:
                raise ValueError(
                    "base_bits: a bit_flexible device needs base_bits, one of supported_bits "
                    f"{self.supported_bits}; got {self.base_bits!r}"
                )
            expected = {self.base_bits}
        else:
            expected = set(self.supported_bits)
        self._check_fallback_bits()
        self._check_calibration_terms()
        for table in ("peak_macs_per_s", "energy_per_mac_pj"):
            keys = set(getattr(self, table))
            if keys != expected:
                raise ValueError(
                    f"{table}: needs exactly one entry per precision {sorted(expected)}; "
                    f"got entries for {sorted(keys)}"
                )
        return self

    def _check_fallback_bits(self) -> None:
        if not self.fallback_bits:
            return
        if self.bit_flexible:
            raise ValueError(
                "fallback_bits: a bit_flexible device runs every precision itself; "
                f"got {self.fallback_bits}"
            )
        outside = sorted(set(self.fallback_bits) - set(self.supported_bits))
        if outside:
            raise ValueError(
                f"fallback_bits: must be a subset of supported_bits {self.supported_bits}; "
                f"got {outside} outside it"
            )
        if set(self.fallback_bits) == set(self.supported_bits):
            raise ValueError(
                "fallback_bits: at least one precision of supported_bits must run on the device "
                f"itself; got all of {self.supported_bits} as fallback"
            )

    def _check_calibration_terms(self) -> None:
        outside = sorted(set(self.compute_efficiency_by_bits) - set(self.supported_bits))
        if outside:
            raise ValueError(
                "compute_efficiency_by_bits: keys must be precisions of supported_bits "
                f"{self.supported_bits}; got {outside}"
            )
        if self.bit_scaling is not None and self.bit_flexible:
            raise ValueError(
                "bit_scaling: a bit_flexible device already scales its throughput with the "
                "bits (base_bits / bits); remove bit_scaling"
            )

    def compute_bits(self, bits: int) -> int:
        """The precision the hardware actually uses for a ``bits``-wide operand."""
        wider = [b for b in self.supported_bits if b >= bits]
        if wider:
            return wider[0]
        if self.bit_flexible:
            top = self.supported_bits[-1]
            return math.ceil(bits / top) * top
        return self.supported_bits[-1]

    def weight_compute_bits(self, w_bits: int, quantizer: str = "uniform") -> int:
        """The weight bit-width a layer's MACs are priced at: ``w_bits``, except non-uniform
        weights, which are decoded to ``DECODED_BITS`` (int8) unless ``quantizers`` says the
        device runs them as shifts."""
        if quantizer == "uniform" or w_bits >= 32:
            return w_bits
        cost = self.quantizers.get(quantizer)  # type: ignore[call-overload]
        if cost is not None and cost.executes_as == "shift":
            return w_bits
        return max(w_bits, DECODED_BITS)

    def mac_cost(self, *, w_bits: int, a_bits: int) -> MacCost:
        """Peak throughput and energy of one MAC with ``w_bits`` weights and ``a_bits`` inputs."""
        if self.bit_flexible:
            base = self.base_bits
            w, a = self.compute_bits(w_bits), self.compute_bits(a_bits)
            # Number of base-width MAC slots one w x a MAC occupies (BitBricks used).
            scale = (w / base) * (a / base)
            return MacCost(
                precision=f"w{w}a{a}",
                peak_macs_per_s=self.peak_macs_per_s[base] / scale,
                energy_pj=self.energy_per_mac_pj[base] * scale,
            )
        prec = self.compute_bits(max(w_bits, a_bits))
        peak = self.peak_macs_per_s[prec]
        scaling = self.bit_scaling
        # The fallback processor's kernels are not the device's: they are not scaled.
        if scaling is not None and prec not in self.fallback_bits:
            narrow = max(w_bits, a_bits, scaling.saturation_bits)
            if narrow < prec:
                peak = peak * (prec / narrow) ** scaling.exponent
        return MacCost(
            precision=f"{prec}-fallback" if prec in self.fallback_bits else f"{prec}",
            peak_macs_per_s=peak,
            energy_pj=self.energy_per_mac_pj[prec],
        )

    def compute_precision(self, *, w_bits: int, a_bits: int) -> int:
        """The precision a layer computes at, what ``compute_efficiency_by_bits`` is keyed by:
        one of ``supported_bits``; on a bit-flexible device, the wider of the two fusion widths
        (a multiple of the widest above it, which then keeps ``compute_efficiency``)."""
        return self.compute_bits(max(w_bits, a_bits))

    def efficiency(self, *, precision: int, layer: LayerClass = "dense") -> float:
        """Share of the peak MAC rate a ``layer`` computed at ``precision`` reaches:
        ``compute_efficiency_by_bits`` (else ``compute_efficiency``) times the
        ``layer_efficiency`` factor of its class (1 for dense layers)."""
        base = self.compute_efficiency_by_bits.get(precision, self.compute_efficiency)
        if layer == "dense":
            return base
        return base * self.layer_efficiency.get(layer, 1.0)

    def tiled_channels(self, channels: int) -> int:
        """Output channels a layer with ``channels`` of them costs (``channel_tile`` blocks);
        ``channels`` itself when the spec has no tile or the layer has no channels (attention).
        """
        tile = self.channel_tile
        if tile is None or channels <= 0:
            return channels
        return math.ceil(channels / tile) * tile


def list_devices() -> list[str]:
    """Names of the shipped device specs (accepted by :func:`load_device`), sorted."""
    return sorted(
        entry.name[: -len(".yaml")]
        for entry in _devices_dir().iterdir()
        if entry.name.endswith(".yaml")
    )


def load_device(name_or_path: str | os.PathLike[str]) -> DeviceSpec:
    """Load a shipped spec by name (see :func:`list_devices`) or a user YAML by path."""
    if isinstance(name_or_path, str) and name_or_path in list_devices():
        entry = _devices_dir().joinpath(f"{name_or_path}.yaml")
        return _parse(entry.read_text(encoding="utf-8"), source=f"{name_or_path}.yaml")
    if isinstance(name_or_path, str | os.PathLike):
        path = Path(name_or_path)
        if path.suffix in (".yaml", ".yml") and path.is_file():
            return _parse(path.read_text(encoding="utf-8"), source=str(path))
    raise ValueError(
        f"The 'name_or_path' parameter of load_device must be one of {list_devices()} or the "
        f"path of an existing .yaml file. Got {name_or_path!r} instead."
    )


def _parse(text: str, *, source: str) -> DeviceSpec:
    try:
        data: Any = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ValueError(f"Device spec {source} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(
            f"Device spec {source} must be a YAML mapping of fields. Got {type(data).__name__}."
        )
    try:
        return DeviceSpec.model_validate(data)
    except ValidationError as err:
        problems = "; ".join(_describe(e) for e in err.errors())
        raise ValueError(f"Invalid device spec {source}: {problems}") from None


def _describe(error: Any) -> str:
    loc = ".".join(str(part) for part in error["loc"])
    msg = error["msg"].removeprefix("Value error, ")
    if not loc:
        return msg  # model-level checks already start with the field name
    if error["type"] == "missing":
        return f"field '{loc}' is missing"
    return f"field '{loc}': {msg} (got {error.get('input')!r})"


def _devices_dir() -> Any:
    return resources.files(_DEVICES_PACKAGE).joinpath(_DEVICES_DIR)
