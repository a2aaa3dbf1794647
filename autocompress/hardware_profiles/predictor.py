"""The learned latency predictor, which the ``"learned"`` profile
(:mod:`~autocompress.hardware_profiles.learned`) prices models with.

The predictor has two stages, trained from measurements on one host/runtime:

1. **Per layer** (nn-Meter style): features of a :class:`LayerKey` (MACs, parameters, input and
   output elements, kernel, stride, groups, channels, depthwise flag, precision, SIMD-block
   alignment of the channels, ...; see :mod:`~autocompress.hardware_profiles.predictor_features`)
   -> latency of the layer op group. A physical prior (non-negative least-squares fit of
   latency on MACs, activation elements and parameters, in relative error) carries the trend,
   and scikit-learn gradient-boosted trees (fixed ``random_state``) learn the log-ratio between
   the measurement and that prior, so predictions outside the training range follow the prior
   instead of a flat tree leaf. Training data: the entries of a :class:`LatencyLUT`. A layer
   that is in the training data keeps its measured value; the trees price the layers never
   measured.
2. **Per model**: a linear correction, fitted to whole-model measurements in relative error
   with a robust loss (a model timed in a slow phase of the host barely moves it),
   ``latency = b0 + b1 * sum(layer predictions) + b2 * n_layers + b3 * n_uncosted_ops
   + b4 * uncosted_elems`` (see :class:`ModelLayers`): it absorbs the per-run overhead and what
   per-layer timings miss (ops outside the layer groups such as pooling and residual additions,
   cache effects between layers).

Persistence is plain JSON: the training rows, hyper-parameters and correction coefficients;
loading refits the trees deterministically (same data, same ``random_state``) and checks that
the refit reproduces the stored training predictions. Nothing is ever unpickled.

scikit-learn and SciPy are imported only when a predictor is fitted or loaded, so importing
:mod:`autocompress.hardware_profiles` stays light. Measuring a host and fitting a predictor to
it in one call: :func:`~autocompress.hardware_profiles.predictor_fit.fit_latency_predictor`.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from autocompress.hardware_profiles.lut_table import (
    HOST_PRECISION,
    LatencyLUT,
    LayerKey,
    read_json,
    write_json,
)
from autocompress.hardware_profiles.lut_trace import model_layers
from autocompress.hardware_profiles.predictor_features import layer_features

__all__ = ["CORRECTION_FEATURES", "DEFAULT_PARAMS", "LatencyPredictor", "fit_predictor"]

PREDICTOR_FORMAT = "autocompress-latency-predictor"
PREDICTOR_VERSION = 1
#: Whole-model quantities the correction is linear in (after an intercept); see module doc.
CORRECTION_FEATURES = ("layer_sum_ms", "n_layers", "n_uncosted_ops", "uncosted_elems")
#: Gradient-boosting settings a saved predictor may carry (an allow-list: anything else in a
#: file is rejected rather than passed to scikit-learn).
DEFAULT_PARAMS: dict[str, Any] = {
    "n_estimators": 300,
    "learning_rate": 0.05,
    "max_depth": 3,
    "min_samples_leaf": 3,
    "subsample": 1.0,
}
_PARAM_TYPES: dict[str, tuple[type, ...]] = {
    "n_estimators": (int,),
    "learning_rate": (int, float),
    "max_depth": (int,),
    "min_samples_leaf": (int,),
    "subsample": (int, float),
}
# Latencies below this (0.1 us) are noise around the subtracted per-run overhead; the log
# target needs a positive floor.
_MIN_MS = 1e-4
_MIN_CORRECTION_MODELS = len(CORRECTION_FEATURES) + 1
# Relative error at which the correction's robust loss starts to discount a training model:
# half the +-10% that a prediction is judged by.
_CORRECTION_SCALE = 0.05
# Refit-on-load must reproduce the saved model; anything beyond float round-off means the
# scikit-learn build grows different trees.
_REFIT_RTOL = 1e-9


def _prior_design(keys: Sequence[LayerKey]) -> np.ndarray:
    """Columns of the physical prior: 1, MACs, activation elements, weight parameters."""
    return np.asarray(
        [[1.0, k.macs, k.input_elems + k.output_elems, k.weight_params] for k in keys],
        dtype=np.float64,
    ).reshape(len(keys), 4)


class LatencyPredictor:
    """Per-layer gradient-boosted trees + a model-level linear correction (see module doc).

    Build one with :func:`fit_predictor` or :meth:`load`; it is read-only afterwards, so
    ``predict*`` may be called from several threads.
    """

    def __init__(
        self,
        *,
        layer_keys: Sequence[LayerKey],
        layer_ms: Sequence[float],
        params: Mapping[str, Any],
        random_state: int,
        correction: Sequence[float],
        model_rows: Sequence[Mapping[str, float]] = (),
        overhead_ms: float = 0.0,
        precision: str = HOST_PRECISION,
        host: Mapping[str, Any] | None = None,
    ) -> None:
        """Fit the per-layer stage on ``layer_keys``/``layer_ms``; use :func:`fit_predictor`."""
        self.layer_keys = list(layer_keys)
        self.layer_ms = np.asarray(layer_ms, dtype=np.float64)
        self.params = _check_params(params)
        self.random_state = int(random_state)
        self.correction = np.asarray(correction, dtype=np.float64)
        if self.correction.shape != (len(CORRECTION_FEATURES) + 1,) or not np.all(
            np.isfinite(self.correction)
        ):
            raise ValueError(
                f"The 'correction' parameter of LatencyPredictor must be "
                f"{len(CORRECTION_FEATURES) + 1} finite numbers (intercept, then one per "
                f"{list(CORRECTION_FEATURES)}). Got {list(correction)!r} instead."
            )
        self.model_rows = [dict(r) for r in model_rows]
        self.overhead_ms = float(overhead_ms)
        self.precision = precision
        self.host = dict(host or {})
        self._known = dict(zip(self.layer_keys, self.layer_ms.tolist(), strict=True))
        self._prior_coef, self._trees = _fit_layers(
            self.layer_keys, self.layer_ms, params=self.params, random_state=self.random_state
        )

    def __repr__(self) -> str:
        return (
            f"LatencyPredictor({len(self.layer_keys)} layers, {len(self.model_rows)} models, "
            f"correction={np.round(self.correction, 6).tolist()})"
        )

    def predict_layers(self, keys: Sequence[LayerKey], *, use_known: bool = True) -> np.ndarray:
        """Latency (ms) each layer op group adds to a model, one per key.

        A key the predictor was trained on gets its training value (a measurement beats an
        estimate of it) unless ``use_known`` is False; other keys get the tree estimate.
        """
        keys = list(keys)
        if not keys:
            return np.zeros(0)
        prior = np.maximum(_prior_design(keys) @ self._prior_coef, _MIN_MS)
        estimate = prior * np.exp(self._trees.predict(layer_features(keys)))
        if use_known:
            known = [self._known.get(k) for k in keys]
            estimate = np.array(
                [e if v is None else v for e, v in zip(estimate, known, strict=True)]
            )
        return estimate

    def predict_summary(
        self, *, layer_sum_ms: float, n_layers: int, n_uncosted_ops: int, uncosted_elems: int
    ) -> float:
        """Whole-model latency (ms) from the per-layer sum and the op counts (the correction)."""
        row = np.array([1.0, layer_sum_ms, n_layers, n_uncosted_ops, uncosted_elems])
        return max(float(row @ self.correction), _MIN_MS)

    def predict(self, model: nn.Module, *, input_shape: tuple[int, ...]) -> float:
        """Predicted whole-model latency (ms) of one batch-1 inference."""
        return self.explain(model, input_shape=input_shape)["latency_ms"]

    def explain(self, model: nn.Module, *, input_shape: tuple[int, ...]) -> dict[str, Any]:
        """The prediction with its parts: per-layer rows, sums and counts."""
        traced = model_layers(model, input_shape=input_shape, precision=self.precision)
        unkeyed = [r.name for r in traced.layers if r.key is None]
        if unkeyed:
            raise ValueError(
                "LatencyPredictor cannot price layers without a LayerKey (transposed or "
                f"non-zero-padded convs): {unkeyed}."
            )
        keys = [r.key for r in traced.layers]
        layer_ms = self.predict_layers(keys)  # type: ignore[arg-type]
        layer_sum = float(layer_ms.sum())
        return {
            "latency_ms": self.predict_summary(
                layer_sum_ms=layer_sum,
                n_layers=len(keys),
                n_uncosted_ops=traced.uncosted_ops,
                uncosted_elems=traced.uncosted_elems,
            ),
            "layer_sum_ms": layer_sum,
            "n_layers": len(keys),
            "n_uncosted_ops": traced.uncosted_ops,
            "uncosted_elems": traced.uncosted_elems,
            "layers": [
                {"name": r.name, "key": str(r.key), "latency_ms": float(ms)}
                for r, ms in zip(traced.layers, layer_ms, strict=True)
            ],
        }

    def to_dict(self) -> dict[str, Any]:
        import sklearn

        return {
            "format": PREDICTOR_FORMAT,
            "version": PREDICTOR_VERSION,
            "host": self.host,
            "precision": self.precision,
            "params": self.params,
            "random_state": self.random_state,
            "overhead_ms": self.overhead_ms,
            "layers": [
                {"key": k.as_dict(), "ms": float(ms)}
                for k, ms in zip(self.layer_keys, self.layer_ms, strict=True)
            ],
            "correction": {
                "features": ["intercept", *CORRECTION_FEATURES],
                "coef": self.correction.tolist(),
            },
            "models": self.model_rows,
            "check": {
                "sklearn": sklearn.__version__,
                "layer_predictions_ms": self.predict_layers(
                    self.layer_keys, use_known=False
                ).tolist(),
            },
        }

    @classmethod
    def from_dict(cls, data: Any) -> LatencyPredictor:
        """Rebuild from :meth:`to_dict` output by refitting; warns if the refit differs."""
        if not isinstance(data, Mapping) or data.get("format") != PREDICTOR_FORMAT:
            raise ValueError(
                "The 'data' parameter of LatencyPredictor.from_dict must be a mapping with "
                f"format={PREDICTOR_FORMAT!r}. Got {str(data)[:80]} instead."
            )
        if data.get("version") != PREDICTOR_VERSION:
            raise ValueError(
                f"The 'version' field of a latency predictor must be {PREDICTOR_VERSION}. "
                f"Got {data.get('version')!r} instead."
            )
        try:
            predictor = cls(
                layer_keys=[LayerKey.from_dict(row["key"]) for row in data["layers"]],
                layer_ms=[float(row["ms"]) for row in data["layers"]],
                params=data["params"],
                random_state=data["random_state"],
                correction=[float(c) for c in data["correction"]["coef"]],
                model_rows=data.get("models", []),
                overhead_ms=float(data.get("overhead_ms", 0.0)),
                precision=str(data.get("precision", HOST_PRECISION)),
                host=data.get("host", {}),
            )
            stored = np.asarray(data["check"]["layer_predictions_ms"], dtype=np.float64)
            saved_with = data["check"].get("sklearn")
        except (KeyError, TypeError) as err:
            raise ValueError(
                f"A latency predictor is missing or mistypes a field: {err!r}."
            ) from None
        refit = predictor.predict_layers(predictor.layer_keys, use_known=False)
        if stored.shape != refit.shape or not np.allclose(refit, stored, rtol=_REFIT_RTOL, atol=0):
            import sklearn

            warnings.warn(
                f"The refitted latency predictor differs from the saved one (saved with "
                f"scikit-learn {saved_with}, refitted with {sklearn.__version__}); predictions "
                "may shift slightly.",
                stacklevel=2,
            )
        return predictor

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the predictor as JSON to ``path`` (parent folders created); returns the path."""
        return write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> LatencyPredictor:
        """Read a predictor written by :meth:`save` (plain JSON; the trees are refitted)."""
        data = read_json(path, where="LatencyPredictor.load", what="Latency predictor")
        return cls.from_dict(data)


def fit_predictor(
    *,
    layers: LatencyLUT | Mapping[LayerKey, float],
    models: Sequence[tuple[nn.Module, tuple[int, ...]]] = (),
    measured_ms: Sequence[float] = (),
    overhead_ms: float | None = None,
    params: Mapping[str, Any] | None = None,
    random_state: int = 0,
) -> LatencyPredictor:
    """Train a :class:`LatencyPredictor`.

    ``layers``: per-layer training data, a LUT (its :meth:`LatencyLUT.layer_table` and overhead)
    or ``{LayerKey: ms}``. ``models``/``measured_ms``: ``(model, input_shape)`` pairs and their
    measured whole-model latencies (ms) for the correction; at least
    ``len(CORRECTION_FEATURES) + 1`` of them, or none, in which case the correction is
    ``overhead_ms + sum(layers)`` (``overhead_ms`` defaults to the LUT's, else 0). ``params``:
    gradient-boosting settings (keys of :data:`DEFAULT_PARAMS`). Deterministic for fixed inputs.
    """
    host: dict[str, Any] = {}
    precision = HOST_PRECISION
    if isinstance(layers, LatencyLUT):
        table = layers.layer_table()
        host = dict(layers.host)
        precision = layers.precision
        if overhead_ms is None:
            overhead_ms = layers.overhead_ms
    elif isinstance(layers, Mapping):
        table = dict(layers)
    else:
        raise ValueError(
            "The 'layers' parameter of fit_predictor must be a LatencyLUT or a mapping of "
            f"LayerKey to milliseconds. Got {layers!r} instead."
        )
    bad = [
        k
        for k, v in table.items()
        if not isinstance(k, LayerKey)
        or isinstance(v, bool)
        or not isinstance(v, int | float | np.floating)
        or not math.isfinite(v)
        or v < 0
    ]
    if len(table) < 2 or bad:
        raise ValueError(
            "The 'layers' parameter of fit_predictor must hold at least 2 LayerKey -> finite "
            f"ms >= 0 entries. Got {len(table)} entries"
            + (f", a bad one for {bad[0]!r}" if bad else "")
            + " instead."
        )
    overhead = 0.0 if overhead_ms is None else _check_ms(overhead_ms, name="overhead_ms")
    models, measured = list(models), np.asarray(measured_ms, dtype=np.float64).ravel()
    if len(models) != len(measured):
        raise ValueError(
            "The 'measured_ms' parameter of fit_predictor must have one latency per model. "
            f"Got {len(measured)} for {len(models)} models instead."
        )
    if models and (len(models) < _MIN_CORRECTION_MODELS or not np.all(measured > 0)):
        raise ValueError(
            f"The 'models' parameter of fit_predictor must hold none or at least "
            f"{_MIN_CORRECTION_MODELS} models with positive measured latencies. Got "
            f"{len(models)} models, latencies {measured.tolist()[:5]} instead."
        )
    predictor = LatencyPredictor(
        layer_keys=list(table),
        layer_ms=list(table.values()),
        params={**DEFAULT_PARAMS, **dict(params or {})},
        random_state=random_state,
        correction=[overhead, 1.0] + [0.0] * (len(CORRECTION_FEATURES) - 1),
        overhead_ms=overhead,
        precision=precision,
        host=host,
    )
    if not models:
        return predictor
    rows = []
    for (model, shape), ms in zip(models, measured, strict=True):
        parts = predictor.explain(model, input_shape=shape)
        rows.append({**{f: parts[f] for f in CORRECTION_FEATURES}, "measured_ms": float(ms)})
    predictor.correction = _fit_correction(rows)
    predictor.model_rows = rows
    return predictor


def _fit_layers(
    keys: list[LayerKey], ms: np.ndarray, *, params: Mapping[str, Any], random_state: int
) -> tuple[np.ndarray, Any]:
    try:
        from scipy.optimize import nnls
        from sklearn.ensemble import GradientBoostingRegressor
    except ImportError as err:  # core dependencies, but say what is missing
        raise ImportError(
            "The learned latency predictor needs scikit-learn and SciPy: "
            "pip install scikit-learn scipy."
        ) from err
    target = np.maximum(ms, _MIN_MS)
    design = _prior_design(keys)
    # Relative-error fit: each row divided by its target, so small layers count as much as
    # large ones (the fidelity that matters is +-10%, not absolute ms).
    scale = design.max(axis=0)
    scale[scale == 0] = 1.0
    coef, _ = nnls(design / target[:, None] / scale, np.ones(len(target)))
    coef = coef / scale
    prior = np.maximum(design @ coef, _MIN_MS)
    trees = GradientBoostingRegressor(random_state=random_state, **params)
    trees.fit(layer_features(keys), np.log(target) - np.log(prior))
    return coef, trees


def _fit_correction(rows: list[dict[str, float]]) -> np.ndarray:
    """Robust fit, in relative error, of measured ~ [1, *CORRECTION_FEATURES].

    A training model timed in a slow phase of the host is off by tens of percent; in plain
    least squares a few such rows pull the coefficients that every prediction uses. The Cauchy
    loss weighs a residual of :data:`_CORRECTION_SCALE` about half as much as a small one and
    one of 50% almost not at all; it starts from the least-squares solution, which it equals
    where every row fits.
    """
    from scipy.optimize import least_squares

    x = np.array([[1.0, *(r[f] for f in CORRECTION_FEATURES)] for r in rows])
    y = np.array([r["measured_ms"] for r in rows])
    design = x / y[:, None]
    # Columns range from ms to element counts: equilibrate them so that the solver's rank
    # cut-off does not drop the small ones.
    scale = np.abs(design).max(axis=0)
    scale[scale == 0] = 1.0
    design = design / scale
    start, *_ = np.linalg.lstsq(design, np.ones(len(y)), rcond=None)
    fit = least_squares(
        lambda coef: design @ coef - 1.0,
        start,
        jac=lambda coef: design,
        loss="cauchy",
        f_scale=_CORRECTION_SCALE,
        method="trf",
        x_scale="jac",
        xtol=1e-12,
        ftol=1e-12,
        gtol=1e-12,
    )
    return fit.x / scale


def _check_params(params: Any) -> dict[str, Any]:
    if not isinstance(params, Mapping) or set(params) - set(_PARAM_TYPES):
        raise ValueError(
            f"The 'params' parameter of LatencyPredictor must be a mapping with keys among "
            f"{sorted(_PARAM_TYPES)}. Got {params!r} instead."
        )
    for name, value in params.items():
        if isinstance(value, bool) or not isinstance(value, _PARAM_TYPES[name]) or value <= 0:
            raise ValueError(
                f"The '{name}' gradient-boosting parameter must be a positive number. "
                f"Got {value!r} instead."
            )
    return dict(params)


def _check_ms(value: Any, *, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ValueError(
            f"The '{name}' parameter of fit_predictor must be a finite number >= 0. "
            f"Got {value!r} instead."
        )
    return float(value)
