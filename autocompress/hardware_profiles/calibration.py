"""Fitting the two free parameters of an analytic (roofline) device spec to measured latencies.

SciPy is imported only when a calibration runs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from torch import nn

from autocompress.hardware_profiles.device_spec import DeviceSpec
from autocompress.hardware_profiles.fidelity import LatencyFidelity, latency_fidelity

__all__ = ["AnalyticCalibration", "calibrate_analytic"]


class AnalyticCalibration(NamedTuple):
    """Result of :func:`calibrate_analytic`: the fitted spec and its error before and after."""

    spec: DeviceSpec
    before: LatencyFidelity
    after: LatencyFidelity


# Search box of the calibration: efficiency in [1e-4, 1] (the DeviceSpec allows (0, 1]), per-
# layer overhead in [1 ns, 100 ms].
_EFFICIENCY_BOUNDS = (1e-4, 1.0)
_OVERHEAD_BOUNDS_S = (1e-9, 1e-1)


def calibrate_analytic(
    spec: DeviceSpec,
    *,
    models: Sequence[tuple[nn.Module, tuple[int, ...]]],
    measured_ms: Sequence[float],
) -> AnalyticCalibration:
    """Fit ``compute_efficiency`` and ``layer_overhead_s`` of ``spec`` to measured latencies.

    ``models``: ``(model, input_shape)`` pairs, ``measured_ms`` their measured latencies on the
    device ``spec`` describes (at least 2). Bounded least squares (SciPy) on the log-ratio of
    the :class:`AnalyticProfile` prediction to the measurement, so every model counts by its
    relative error; all other fields of the spec are kept. Returns the new spec (validated like
    a YAML one) with the :class:`LatencyFidelity` of the old and the new spec on these models.
    The analytic model has no per-run term, so a per-inference overhead ends up spread over
    the layers.
    """
    from scipy.optimize import least_squares

    from autocompress.hardware_profiles.analytic import AnalyticProfile

    if not isinstance(spec, DeviceSpec):
        raise ValueError(
            f"The 'spec' parameter of calibrate_analytic must be a DeviceSpec. Got {spec!r} "
            "instead."
        )
    models = list(models)
    measured = np.asarray(measured_ms, dtype=np.float64).ravel()
    if len(models) < 2 or len(models) != len(measured) or not np.all(measured > 0):
        raise ValueError(
            "The 'models' and 'measured_ms' parameters of calibrate_analytic must pair at least "
            f"2 models with positive latencies. Got {len(models)} models and "
            f"{len(measured)} latencies instead."
        )
    # Per layer, compute time at efficiency 1 and memory time do not depend on the two fitted
    # parameters: profile once, then the fit only re-evaluates sum(max(c / eff, m)) + n * o.
    unit = AnalyticProfile(device=spec.model_copy(update={"compute_efficiency": 1.0}))
    parts = []
    for model, shape in models:
        rows = unit.profile(model, input_shape=shape).details["layers"]
        compute = np.array([r["compute_ms"] for r in rows])
        memory = np.array([r["memory_ms"] for r in rows])
        parts.append((compute, memory, len(rows)))

    def predict(efficiency: float, overhead_s: float) -> np.ndarray:
        return np.array(
            [np.maximum(c / efficiency, m).sum() + n * overhead_s * 1e3 for c, m, n in parts]
        )

    def residuals(theta: np.ndarray) -> np.ndarray:
        return np.log(np.maximum(predict(*np.exp(theta)), 1e-12)) - np.log(measured)

    lower = np.log([_EFFICIENCY_BOUNDS[0], _OVERHEAD_BOUNDS_S[0]])
    upper = np.log([_EFFICIENCY_BOUNDS[1], _OVERHEAD_BOUNDS_S[1]])
    start = np.log([spec.compute_efficiency, spec.layer_overhead_s])
    # least_squares needs a strictly feasible start.
    start = np.clip(start, lower + 1e-9, upper - 1e-9)
    fit = least_squares(
        residuals, start, bounds=(lower, upper), method="trf", ftol=1e-12, xtol=1e-12, gtol=1e-12
    )
    efficiency, overhead_s = (float(v) for v in np.exp(fit.x))
    efficiency = min(efficiency, 1.0)
    data = spec.model_dump()
    data.update(compute_efficiency=efficiency, layer_overhead_s=overhead_s)
    calibrated = DeviceSpec.model_validate(data)
    return AnalyticCalibration(
        spec=calibrated,
        before=latency_fidelity(
            predicted_ms=predict(spec.compute_efficiency, spec.layer_overhead_s),
            measured_ms=measured,
        ),
        after=latency_fidelity(predicted_ms=predict(efficiency, overhead_s), measured_ms=measured),
    )
