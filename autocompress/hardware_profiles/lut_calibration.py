"""Fitting an analytic device spec to a per-layer latency table (``profile calibrate``).

Each LUT entry is priced as a one-layer model by :func:`~.analytic.layer_row` (so its weights
count as on chip when they alone fit in ``onchip_memory_bytes``), and the spec's free terms
are fitted by bounded least squares (SciPy) on ``log(predicted) - log(measured)``, so every
layer counts by its relative error:

* ``compute_efficiency_by_bits``: one efficiency per precision the table's layers compute at
  (``compute_efficiency`` for a bit-flexible device's layers wider than its widest fusion);
* ``layer_efficiency``: a factor for depthwise and for other grouped convs, where the table
  has them;
* ``bit_scaling``: the exponent, where the table has layers narrower than the precision they
  compute at, for each candidate ``saturation_bits`` (their distinct bit-widths), keeping the
  best;
* ``layer_overhead_s`` and ``memory_bandwidth_bytes_per_s``; the bandwidth from several
  starting points, since a layer that is compute-bound at the start gives it no gradient;
* ``channel_tile``, from 2, 4, 8, 16 and 32, kept only when it cuts the squared error by more
  than :data:`TILE_GAIN`.

Peak MAC rates, energies and memory sizes stay the spec's. A share of the entries can be held
out (seeded) to report how well the fitted spec predicts layers it has not seen.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from autocompress.hardware_profiles.analytic import layer_row
from autocompress.hardware_profiles.device_spec import (
    BitScaling,
    CalibrationRecord,
    DeviceSpec,
)
from autocompress.hardware_profiles.fidelity import LatencyFidelity, latency_fidelity
from autocompress.hardware_profiles.graph import LayerCost, activation_bytes, weight_bytes
from autocompress.hardware_profiles.lut_table import LatencyLUT, LayerKey

__all__ = ["TILE_GAIN", "TableCalibration", "calibrate_to_lut", "key_cost", "key_latency_ms"]

#: Relative cut of the fit's squared log error a ``channel_tile`` must bring to be kept.
TILE_GAIN = 0.02
_TILES = (2, 4, 8, 16, 32)
# Search box (the spec allows efficiencies and factors in (0, 1]).
_EFFICIENCY_BOUNDS = (1e-4, 1.0)
_FACTOR_BOUNDS = (1e-3, 1.0)
_EXPONENT_BOUNDS = (0.0, 4.0)
_OVERHEAD_BOUNDS_S = (1e-9, 1e-1)
_BANDWIDTH_BOUNDS = (1e6, 1e14)


class TableCalibration(NamedTuple):
    """Result of :func:`calibrate_to_lut`.

    ``spec``: the calibrated spec (with its :class:`CalibrationRecord`). ``fit_before`` /
    ``fit_after``: the base and the calibrated spec on the entries it was fitted on;
    ``heldout_before`` / ``heldout_after``: on the held-out entries (None with ``holdout=0``).
    ``skipped``: entries left out because their latency is not > 0.
    """

    spec: DeviceSpec
    fit_before: LatencyFidelity
    fit_after: LatencyFidelity
    heldout_before: LatencyFidelity | None
    heldout_after: LatencyFidelity | None
    skipped: int


def key_cost(key: LayerKey) -> LayerCost:
    """The :class:`LayerCost` of a LUT key at its own ``w_bits``/``a_bits`` (uniform, dense)."""
    input_bytes, output_bytes = activation_bytes(
        input_elems=key.input_elems, output_elems=key.output_elems, a_bits=key.a_bits
    )
    return LayerCost(
        name=str(key),
        kind=key.kind,
        macs=key.macs,
        weight_params=key.weight_params,
        w_bits=key.w_bits,
        a_bits=key.a_bits,
        input_elems=key.input_elems,
        output_elems=key.output_elems,
        weight_bytes=weight_bytes(
            numel=key.weight_params, w_bits=key.w_bits, out_channels=key.out_channels
        ),
        input_bytes=input_bytes,
        output_bytes=output_bytes,
        in_channels=key.in_channels,
        out_channels=key.out_channels,
        groups=key.groups,
    )


def key_latency_ms(spec: DeviceSpec, key: LayerKey) -> float:
    """The analytic latency of one LUT entry on ``spec``, priced as a one-layer model."""
    cost = key_cost(key)
    on_chip = cost.weight_bytes <= spec.onchip_memory_bytes
    return float(layer_row(spec, cost, weights_on_chip=on_chip)["latency_ms"])


def calibrate_to_lut(
    spec: DeviceSpec,
    lut: LatencyLUT | str | os.PathLike[str],
    *,
    holdout: float = 0.5,
    seed: int = 0,
    name: str | None = None,
) -> TableCalibration:
    """Fit the free terms of ``spec`` to the entries of ``lut`` (see the module doc).

    ``lut``: a :class:`LatencyLUT` or the path of its JSON file (an imported table, or one
    measured with ``profile build-lut``). ``holdout``: the share of entries, drawn with
    ``numpy.random.default_rng(seed)``, kept out of the fit to report its error on them (0:
    fit on all). ``name``: the calibrated spec's name (default ``<spec.name>_calibrated``).
    The spec records the table (path, SHA-256 of the file, or of the LUT's JSON for an object),
    the row counts, ``holdout``, ``seed`` and the fidelity figures.
    """
    from scipy.optimize import least_squares

    if not isinstance(spec, DeviceSpec):
        raise ValueError(
            f"The 'spec' parameter of calibrate_to_lut must be a DeviceSpec. Got {spec!r} instead."
        )
    if not isinstance(holdout, int | float) or not 0 <= holdout < 1:
        raise ValueError(
            "The 'holdout' parameter of calibrate_to_lut must be a number in [0, 1). "
            f"Got {holdout!r} instead."
        )
    table, sha256, lut = _load(lut)
    keys, measured, skipped = _usable_entries(lut)
    order = np.random.default_rng(seed).permutation(len(keys))
    n_hold = round(holdout * len(keys))
    if holdout > 0 and n_hold < 2:
        raise ValueError(
            f"The LUT {table} has {len(keys)} usable entries: holdout {holdout} leaves "
            f"{n_hold} to test on; at least 2 are needed (raise holdout or use 0)."
        )
    hold, fit = np.sort(order[:n_hold]), np.sort(order[n_hold:])
    fitter = _Fitter(spec, [keys[i] for i in fit], measured[fit])
    if len(fit) <= fitter.n_params:
        raise ValueError(
            f"The LUT {table} leaves {len(fit)} entries to fit {fitter.n_params} terms of the "
            f"spec; need more than that (import more rows or lower holdout)."
        )
    fitted = fitter.fit(least_squares)
    data = spec.model_dump()
    data.update(fitted)
    data.update(
        name=name or f"{spec.name}_calibrated",
        description=f"{spec.name} calibrated on the per-layer table {table}",
        sources=[*spec.sources, f"autocompress profile calibrate: fitted to {table} ({sha256})"],
        calibration=None,
    )
    calibrated = DeviceSpec.model_validate(data)

    def fidelity(s: DeviceSpec, rows: np.ndarray) -> LatencyFidelity:
        predicted = [key_latency_ms(s, keys[i]) for i in rows]
        return latency_fidelity(predicted_ms=predicted, measured_ms=measured[rows])

    result = TableCalibration(
        spec=calibrated,
        fit_before=fidelity(spec, fit),
        fit_after=fidelity(calibrated, fit),
        heldout_before=fidelity(spec, hold) if n_hold else None,
        heldout_after=fidelity(calibrated, hold) if n_hold else None,
        skipped=skipped,
    )
    metrics = {
        f"{rows}_{which}": {k: float(v) for k, v in figures._asdict().items()}
        for rows, which, figures in (
            ("fit", "base", result.fit_before),
            ("fit", "calibrated", result.fit_after),
            ("heldout", "base", result.heldout_before),
            ("heldout", "calibrated", result.heldout_after),
        )
        if figures is not None
    }
    record = CalibrationRecord(
        table=table,
        table_sha256=sha256,
        rows=len(keys),
        fit_rows=len(fit),
        holdout=float(holdout),
        seed=int(seed),
        base_device=spec.name,
        metrics=metrics,
        created=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    )
    return result._replace(spec=calibrated.model_copy(update={"calibration": record}))


def _load(lut: Any) -> tuple[str, str, LatencyLUT]:
    """(how the table is named, its SHA-256, the LUT)."""
    if isinstance(lut, LatencyLUT):
        text = json.dumps(lut.to_dict(), sort_keys=True).encode()
        return "<LatencyLUT object>", hashlib.sha256(text).hexdigest(), lut
    if isinstance(lut, str | os.PathLike):
        loaded = LatencyLUT.load(lut)  # raises a clear error for a missing or bad file
        return str(lut), hashlib.sha256(Path(lut).read_bytes()).hexdigest(), loaded
    raise ValueError(
        "The 'lut' parameter of calibrate_to_lut must be a LatencyLUT or the path of a LUT JSON "
        f"file. Got {lut!r} instead."
    )


def _usable_entries(lut: LatencyLUT) -> tuple[list[LayerKey], np.ndarray, int]:
    keys, measured = [], []
    for key, entry in sorted(lut.entries.items()):
        if entry.latency_ms > 0:  # a measured LUT's tiniest layers can come out <= 0 (noise)
            keys.append(key)
            measured.append(entry.latency_ms)
    return keys, np.asarray(measured, dtype=np.float64), len(lut.entries) - len(keys)


class _Fitter:
    """The analytic latency of the fit entries, vectorised over entries, as a function of the
    fitted terms (the same arithmetic as :func:`~.analytic.layer_row` for dense, uniform
    layers; :func:`calibrate_to_lut` reports figures from ``layer_row`` itself)."""

    def __init__(self, spec: DeviceSpec, keys: list[LayerKey], measured_ms: np.ndarray) -> None:
        self.spec = spec
        self.log_measured = np.log(measured_ms)
        costs = [key_cost(k) for k in keys]
        precisions = [spec.compute_precision(w_bits=c.w_bits, a_bits=c.a_bits) for c in costs]
        # One efficiency per precision of supported_bits; the rest share compute_efficiency
        # (None), as DeviceSpec.efficiency prices them.
        groups = [p if p in spec.supported_bits else None for p in precisions]
        self.precisions: list[int | None] = sorted(set(groups), key=lambda p: (p is None, p))
        self.classes = sorted({c.layer_class for c in costs} - {"dense"})
        self.prec_index = np.array([self.precisions.index(p) for p in groups])
        self.class_index = np.array(
            [self.classes.index(c.layer_class) if c.layer_class != "dense" else -1 for c in costs]
        )
        prec = np.array(precisions, dtype=np.float64)
        narrow = np.array([max(c.w_bits, c.a_bits) for c in costs], dtype=np.float64)
        # Bit scaling speeds up the device's own fixed-precision kernels only (see mac_cost).
        own = np.array([p not in spec.fallback_bits for p in precisions], dtype=bool)
        self.scalable = own & (narrow < prec) & (not spec.bit_flexible)
        self.saturations = sorted({int(b) for b in narrow[self.scalable]})
        # Peak rates without bit scaling when it is fitted here, else the spec's own.
        base = spec.model_copy(update={"bit_scaling": None}) if self.saturations else spec
        self.peak = np.array(
            [base.mac_cost(w_bits=c.w_bits, a_bits=c.a_bits).peak_macs_per_s for c in costs]
        )
        self.prec, self.narrow = prec, narrow
        self.macs = np.array([c.macs for c in costs], dtype=np.float64)
        self.out_channels = np.array([c.out_channels for c in costs], dtype=np.float64)
        on_chip = np.array([c.weight_bytes <= spec.onchip_memory_bytes for c in costs])
        total = np.array([c.total_bytes for c in costs], dtype=np.float64)
        weight = np.array([c.weight_bytes for c in costs], dtype=np.float64)
        self.offchip = total - np.where(on_chip, weight, 0.0)
        # No layer moves its bytes faster than it runs: the bandwidth is at least this.
        self.bandwidth_floor = float(np.max(self.offchip / (measured_ms * 1e-3)))
        self.n_params = len(self.precisions) + len(self.classes) + bool(self.saturations) + 2

    def _unpack(self, theta: np.ndarray) -> dict[str, Any]:
        n_p, n_c = len(self.precisions), len(self.classes)
        out = {
            "eff": np.exp(theta[:n_p]),
            "factor": np.exp(theta[n_p : n_p + n_c]),
            "overhead_s": math.exp(theta[-2]),
            "bandwidth": math.exp(theta[-1]),
        }
        out["exponent"] = float(theta[n_p + n_c]) if self.saturations else 0.0
        return out

    def predict_ms(self, theta: np.ndarray, *, tile: int | None, saturation: int) -> np.ndarray:
        return self._parts(theta, tile=tile, saturation=saturation)[0]

    def _parts(
        self, theta: np.ndarray, *, tile: int | None, saturation: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """(latency ms, compute ms, memory ms, log of the bit-scaling ratio, terms)."""
        t = self._unpack(theta)
        efficiency = t["eff"][self.prec_index] * np.where(
            self.class_index >= 0, np.append(t["factor"], 1.0)[self.class_index], 1.0
        )
        ratio = self.prec / np.maximum(self.narrow, saturation)
        log_ratio = np.where(self.scalable & (ratio > 1), np.log(ratio), 0.0)
        macs = self.macs
        if tile is not None:
            macs = macs * np.ceil(self.out_channels / tile) * tile / self.out_channels
        compute_ms = 1e3 * macs / (self.peak * np.exp(t["exponent"] * log_ratio) * efficiency)
        memory_ms = 1e3 * self.offchip / t["bandwidth"]
        latency_ms = np.maximum(compute_ms, memory_ms) + 1e3 * t["overhead_s"]
        return latency_ms, compute_ms, memory_ms, log_ratio, t

    def _jacobian(self, theta: np.ndarray, *, tile: int | None, saturation: int) -> np.ndarray:
        """d log(latency) / d theta: each term moves the roof that binds the layer."""
        latency, compute, memory, log_ratio, t = self._parts(
            theta, tile=tile, saturation=saturation
        )
        bound = compute >= memory
        d_compute = np.where(bound, -compute, 0.0) / latency  # d/d log(efficiency or factor)
        n_p, n_c = len(self.precisions), len(self.classes)
        jac = np.zeros((len(latency), self.n_params))
        rows = np.arange(len(latency))
        jac[rows, self.prec_index] = d_compute
        has_class = self.class_index >= 0
        jac[rows[has_class], n_p + self.class_index[has_class]] = d_compute[has_class]
        if self.saturations:
            jac[:, n_p + n_c] = d_compute * log_ratio
        jac[:, -2] = 1e3 * t["overhead_s"] / latency
        jac[:, -1] = np.where(bound, 0.0, -memory) / latency
        return jac

    def fit(self, least_squares: Any) -> dict[str, Any]:
        """The fitted fields of the spec (a dict of DeviceSpec fields)."""
        spec = self.spec
        start = [
            math.log(spec.compute_efficiency if p is None else spec.efficiency(precision=p))
            for p in self.precisions
        ]
        start += [math.log(spec.layer_efficiency.get(c, 1.0)) for c in self.classes]
        start += [spec.bit_scaling.exponent if spec.bit_scaling else 1.0] * bool(self.saturations)
        lower = [math.log(_EFFICIENCY_BOUNDS[0])] * len(self.precisions)
        upper = [math.log(_EFFICIENCY_BOUNDS[1])] * len(self.precisions)
        lower += [math.log(_FACTOR_BOUNDS[0])] * len(self.classes)
        upper += [math.log(_FACTOR_BOUNDS[1])] * len(self.classes)
        lower += [_EXPONENT_BOUNDS[0]] * bool(self.saturations)
        upper += [_EXPONENT_BOUNDS[1]] * bool(self.saturations)
        lower += [math.log(_OVERHEAD_BOUNDS_S[0]), math.log(_BANDWIDTH_BOUNDS[0])]
        upper += [math.log(_OVERHEAD_BOUNDS_S[1]), math.log(_BANDWIDTH_BOUNDS[1])]
        lo, hi = np.array(lower), np.array(upper)

        def solve(x0: np.ndarray, tile: int | None, saturation: int) -> tuple[float, np.ndarray]:
            def residuals(theta: np.ndarray) -> np.ndarray:
                predicted = self.predict_ms(theta, tile=tile, saturation=saturation)
                return np.log(predicted) - self.log_measured

            def jacobian(theta: np.ndarray) -> np.ndarray:
                return self._jacobian(theta, tile=tile, saturation=saturation)

            # least_squares needs a strictly feasible start.
            x0 = np.clip(x0, lo + 1e-9, hi - 1e-9)
            result = least_squares(residuals, x0, jac=jacobian, bounds=(lo, hi), method="trf")
            return float(np.sum(result.fun**2)), result.x

        # A layer that is compute-bound at the start gives the bandwidth no gradient, so it
        # also starts where the most memory-heavy layer would be memory-bound.
        overhead = math.log(spec.layer_overhead_s)
        bandwidths = [spec.memory_bandwidth_bytes_per_s, 2 * self.bandwidth_floor]
        best: dict[int | None, tuple[float, np.ndarray, int]] = {}
        untiled: dict[int, np.ndarray] = {}
        for saturation in self.saturations or [0]:
            fits = [
                solve(np.array([*start, overhead, math.log(b)]), None, saturation)
                for b in bandwidths
            ]
            cost, theta = min(fits, key=lambda f: f[0])
            untiled[saturation] = theta
            if None not in best or cost < best[None][0]:
                best[None] = (cost, theta, saturation)
        # Tiles start from the untiled fit of the same saturation.
        for tile in _TILES:
            for saturation, theta in untiled.items():
                cost, fitted = solve(theta, tile, saturation)
                if tile not in best or cost < best[tile][0]:
                    best[tile] = (cost, fitted, saturation)
        tile = min(best, key=lambda t: best[t][0])
        if best[tile][0] >= (1 - TILE_GAIN) * best[None][0]:
            tile = None
        _, theta, saturation = best[tile]
        t = self._unpack(theta)
        efficiencies = {
            p: float(min(e, 1.0)) for p, e in zip(self.precisions, t["eff"], strict=True)
        }
        fields: dict[str, Any] = {
            "compute_efficiency": efficiencies.pop(None, spec.compute_efficiency),
            "compute_efficiency_by_bits": {**spec.compute_efficiency_by_bits, **efficiencies},
            "layer_efficiency": {
                **spec.layer_efficiency,
                **{c: float(min(f, 1.0)) for c, f in zip(self.classes, t["factor"], strict=True)},
            },
            "layer_overhead_s": t["overhead_s"],
            "memory_bandwidth_bytes_per_s": t["bandwidth"],
            "channel_tile": tile,
        }
        if self.saturations:
            fields["bit_scaling"] = BitScaling(
                exponent=t["exponent"], saturation_bits=saturation
            ).model_dump()
        return fields
