"""Per-layer latency lookup tables (LUTs) measured on this host, and the ``"lut"`` profile.

A model's LUT latency is ``overhead_ms + sum(layer entries)``. Everything outside the groups
(residual additions, pooling, flatten, an activation that does not follow a layer directly) is
not in the table; :func:`model_layers` counts those ops so the learned predictor can correct
for them.

This module holds :class:`LUTProfile`, which prices a model from a LUT, and re-exports the LUT
API from the modules that implement it:
:mod:`~autocompress.hardware_profiles.lut_table` (layer keys, entries, the LUT and its JSON
file), :mod:`~autocompress.hardware_profiles.lut_trace` (which ops of a model form one layer),
:mod:`~autocompress.hardware_profiles.lut_build` (how entries are measured, and which) and
:mod:`~autocompress.hardware_profiles.host` (the machine facts stored with a LUT).
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Any, Union

from torch import nn

from autocompress.hardware_profiles._base import (
    HardwareMetrics,
    HardwareProfile,
    register_hardware_profile,
)
from autocompress.hardware_profiles.checks import check_loaded
from autocompress.hardware_profiles.device_spec import DeviceSpec
from autocompress.hardware_profiles.graph import (
    check_input_shape,
    layer_bits,
    layer_costs,
    metrics_with_memory,
)
from autocompress.hardware_profiles.host import host_facts
from autocompress.hardware_profiles.lut_build import (
    build_lut,
    context_module,
    layer_module,
    layer_shapes_of_space,
    measure_models,
)
from autocompress.hardware_profiles.lut_table import (
    HOST_PRECISION,
    LatencyLUT,
    LayerKey,
    LayerRecord,
    LUTEntry,
    ModelLayers,
)
from autocompress.hardware_profiles.lut_trace import model_layers

if TYPE_CHECKING:
    from autocompress.hardware_profiles.analytic import AnalyticProfile
    from autocompress.hardware_profiles.predictor import LatencyPredictor

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
]

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

    A LUT keyed by bits (an imported table, see :meth:`LatencyLUT.lookup_key`) is looked up at
    each layer's own ``w_bits``/``a_bits``, so a 4-bit layer gets the table's 4-bit figure.
    When such a table gives energy (``energy_mj``) for every layer of the model, energy is
    their sum; otherwise it is unknown (NaN).
    """

    def __init__(
        self,
        *,
        lut: LatencyLUT | str | os.PathLike[str],
        fallback: Fallback = None,
    ) -> None:
        self.lut = check_loaded(
            lut,
            LatencyLUT,
            name="lut",
            where="LUTProfile",
            rule="a LatencyLUT or the path of a LUT JSON file",
        )
        self.fallback = _resolve_fallback(fallback)

    def __repr__(self) -> str:
        return f"LUTProfile(lut={self.lut!r}, fallback={self.fallback!r})"

    def profile(self, model: nn.Module, *, input_shape: tuple[int, ...]) -> HardwareMetrics:
        shape = check_input_shape(input_shape, caller="LUTProfile.profile")
        traced = model_layers(model, input_shape=shape, precision=self.lut.precision)
        traced = traced._replace(layers=self._lookup_records(model, traced.layers))
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
        energies = [
            None if r.key is None else self.lut.layer_energy_mj(r.key) for r in traced.layers
        ]
        known = bool(energies) and all(e is not None for e in energies)
        energy_mj = math.fsum(e for e in energies if e is not None) if known else math.nan
        return metrics_with_memory(
            model,
            costs,
            latency_ms=self.lut.overhead_ms + sum(r["latency_ms"] for r in rows),
            energy_mj=energy_mj,
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
                "energy_note": (
                    "Energy: the sum of the LUT's per-layer figures."
                    if known
                    else "Energy unknown: the LUT holds no energy for some or all layers."
                ),
            },
        )

    def _lookup_records(self, model: nn.Module, records: list[LayerRecord]) -> list[LayerRecord]:
        """The traced records with keys in the form this LUT stores (with each layer's bits
        when it is keyed by them)."""
        modules = dict(model.named_modules())
        out = []
        for record in records:
            key = record.key
            if key is not None:
                w_bits, a_bits = layer_bits(modules[record.name], name=record.name)
                key = self.lut.lookup_key(key, w_bits=w_bits, a_bits=a_bits)
            out.append(LayerRecord(record.name, key))
        return out

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
