"""Measuring this host on a search space and fitting the learned latency predictor to it, in one
call: what ``autocompress profile fit host`` does, for any Python user.

:func:`fit_latency_predictor` samples candidates of the space, times each distinct host model
(:func:`measure_models`), measures their layers into a LUT (:func:`build_lut`) unless one is
given, reports the error on held-out models of a predictor fitted without them, fits the final
:class:`LatencyPredictor` on everything and calibrates the analytic host spec on the same
measurements.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from numbers import Real
from typing import TYPE_CHECKING, Any, Literal

from torch import nn

from autocompress.core.validation import check_int
from autocompress.hardware_profiles.calibration import AnalyticCalibration, calibrate_analytic
from autocompress.hardware_profiles.checks import check_loaded
from autocompress.hardware_profiles.fidelity import LatencyFidelity, latency_fidelity
from autocompress.hardware_profiles.graph import check_input_shape
from autocompress.hardware_profiles.host import host_device_spec
from autocompress.hardware_profiles.lut_build import build_lut, joint_space, measure_models
from autocompress.hardware_profiles.lut_table import (
    DEPLOYED,
    HOST_PRECISION,
    LUT_BACKENDS,
    LatencyLUT,
    LayerKey,
)
from autocompress.hardware_profiles.lut_trace import model_layers
from autocompress.hardware_profiles.predictor import (
    CORRECTION_FEATURES,
    LatencyPredictor,
    fit_predictor,
)

if TYPE_CHECKING:
    from autocompress.hardware_profiles.remote import RemoteProfile
    from autocompress.spaces import Candidate, SpaceConfig

__all__ = ["PredictorFit", "fit_latency_predictor"]

#: ``progress(stage, done, total)``: ``stage`` is ``"models"`` (whole-model timings) or
#: ``"layers"`` (LUT timings); called after each timing.
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class PredictorFit:
    """What :func:`fit_latency_predictor` found.

    ``predictor``: the final predictor (trained on every measured model). ``lut``: the layer
    timings it was trained on. ``n_candidates``: candidates sampled; ``n_models``: distinct host
    models among them, each timed, with ``measured_ms`` their latencies (best round).
    ``corrected``: whether there were enough models for the model-level correction.
    ``holdout``: error on held-out models of a predictor fitted without them (None when too few
    models to hold any out). ``calibration``: the analytic host spec fitted to the measured
    models (None when not asked for or fewer than 2 models).
    """

    predictor: LatencyPredictor
    lut: LatencyLUT
    n_candidates: int
    n_models: int
    measured_ms: list[float]
    corrected: bool
    holdout: LatencyFidelity | None
    calibration: AnalyticCalibration | None


def fit_latency_predictor(
    *,
    space: SpaceConfig | Mapping[str, Any],
    input_shape: tuple[int, ...],
    num_classes: int,
    samples: int = 40,
    seed: int = 0,
    lut: LatencyLUT | str | os.PathLike[str] | None = None,
    backend: Literal["onnxruntime", "torch", "executorch", "litert"] = "onnxruntime",
    quantized: bool | None = None,
    remote: RemoteProfile | None = None,
    journal: str | os.PathLike[str] | None = None,
    threads: int = 1,
    warmup: int = 10,
    repeats: int = 30,
    rounds: int = 3,
    holdout: float = 0.25,
    calibrate: bool = True,
    progress: Progress | None = None,
) -> PredictorFit:
    """Measure this host on ``samples`` candidates of ``space`` and fit a latency predictor.

    ``space``: a :class:`SpaceConfig` or its mapping form, built at ``input_shape`` (one sample,
    no batch dim) and ``num_classes``; candidates are drawn with ``seed``. Candidates that build
    the same host model (the same layers at the same host precisions) are timed once.
    ``quantized`` (default: True, False for torch): models and layers are timed as deployed, int8
    where the bits allow (see :class:`MeasuredProfile`). ``remote``/``journal``: as in
    :func:`build_lut` (one journal holds the model and the layer timings); with ``remote`` the
    analytic spec is not calibrated, since its first guess describes this host. ``lut``: layer
    timings to reuse (a :class:`LatencyLUT` or its JSON path), measured with the same
    ``backend`` and ``threads``; None measures the models' layers with :func:`build_lut`.
    ``backend``/``threads``/``warmup``/``repeats``/``rounds``: how every timing is taken (see
    :func:`build_lut`). ``holdout``: share of the distinct models held out to report the error
    of a predictor fitted without them (their own layers are then priced by the trees, as a new
    candidate's would be). ``calibrate``: also fit the analytic host spec
    (:func:`host_device_spec`, :func:`calibrate_analytic`). ``progress``: see :data:`Progress`.
    Same arguments and timings give the same predictor; the timings themselves vary.
    """
    from autocompress.spaces.sampling import sample_candidates

    shape = check_input_shape(input_shape, caller="fit_latency_predictor")
    check_int(num_classes, name="num_classes", where="fit_latency_predictor", minimum=1)
    check_int(samples, name="samples", where="fit_latency_predictor", minimum=1)
    if backend not in LUT_BACKENDS:
        raise ValueError(
            f"The 'backend' parameter of fit_latency_predictor must be one of "
            f"{list(LUT_BACKENDS)}. Got {backend!r} instead."
        )
    if isinstance(holdout, bool) or not isinstance(holdout, Real) or not 0 <= holdout < 1:
        raise ValueError(
            "The 'holdout' parameter of fit_latency_predictor must be a number in [0, 1). "
            f"Got {holdout!r} instead."
        )
    # A LUT that cannot be used is reported before minutes of measuring, not after.
    quantized = backend != "torch" if quantized is None else quantized
    precision = DEPLOYED if quantized else HOST_PRECISION
    layers = None
    if lut is not None:
        layers = _matching_lut(lut, backend=backend, threads=threads, precision=precision)
    joint = joint_space(space, input_shape=shape, num_classes=num_classes)
    candidates = sample_candidates(joint, n=samples, seed=seed)
    models = _distinct_models(
        candidates, num_classes=num_classes, input_shape=shape, precision=precision
    )
    pairs = [(model, shape) for model, _ in models]
    # Whole models and their layers are timed the same way, so the two can be compared.
    timing: dict[str, Any] = {
        "backend": backend,
        "threads": threads,
        "warmup": warmup,
        "repeats": repeats,
        "rounds": rounds,
        "quantized": quantized,
        "remote": remote,
        "journal": journal,
    }
    timings = measure_models(pairs, **timing, seed=seed, progress=_stage(progress, "models"))
    measured = [min(t) for t in timings]  # best round, as in build_lut
    if layers is None:
        layers = build_lut(pairs, **timing, progress=_stage(progress, "layers"))
    corrected = len(pairs) >= len(CORRECTION_FEATURES) + 1
    fidelity = None
    if corrected:
        fidelity = _holdout_fidelity(
            pairs, [keys for _, keys in models], measured, lut=layers, share=holdout, seed=seed
        )
    predictor = fit_predictor(
        layers=layers,
        models=pairs if corrected else (),
        measured_ms=measured if corrected else (),
    )
    calibration = None
    if calibrate and remote is None and len(pairs) >= 2:
        calibration = calibrate_analytic(
            host_device_spec(threads=threads, quantized=quantized),
            models=pairs,
            measured_ms=measured,
        )
    return PredictorFit(
        predictor=predictor,
        lut=layers,
        n_candidates=len(candidates),
        n_models=len(pairs),
        measured_ms=measured,
        corrected=corrected,
        holdout=fidelity,
        calibration=calibration,
    )


def _matching_lut(lut: Any, *, backend: str, threads: int, precision: str) -> LatencyLUT:
    """``lut`` (loaded when a path), checked to be measured the way this fit measures."""
    source = f" {lut}" if isinstance(lut, str | os.PathLike) else ""
    lut = check_loaded(
        lut,
        LatencyLUT,
        name="lut",
        where="fit_latency_predictor",
        rule="None, a LatencyLUT or the path of a LUT JSON file",
    )
    if lut.backend != backend or lut.threads != threads:
        raise ValueError(
            f"The LUT{source} was measured with {lut.backend}, {lut.threads} thread(s); "
            f"this fit measures with {backend}, {threads} thread(s). Use matching settings."
        )
    if lut.precision != precision:
        raise ValueError(
            f"The LUT{source} holds {lut.precision!r} layers; this fit measures "
            f"{precision!r} ones ({'quantized' if precision == DEPLOYED else 'float'} models). "
            "Build the LUT with the same --quantized/--float setting."
        )
    return lut


def _distinct_models(
    candidates: list[Candidate],
    *,
    num_classes: int,
    input_shape: tuple[int, ...],
    precision: str,
) -> list[tuple[nn.Module, tuple[LayerKey | None, ...]]]:
    """One ``(model, layer keys)`` per distinct host model, in first-seen order: candidates
    with the same layers (traced at ``precision``) and the same ops outside them run the same
    kernels on the host."""
    from autocompress.compression.apply import build_compressed

    models: dict[Any, tuple[nn.Module, tuple[LayerKey | None, ...]]] = {}
    for candidate in candidates:
        model = build_compressed(candidate, num_classes=num_classes, input_shape=input_shape)
        traced = model_layers(model, input_shape=input_shape, precision=precision)
        keys = tuple(r.key for r in traced.layers)
        models.setdefault((keys, traced.uncosted_ops, traced.uncosted_elems), (model, keys))
    return list(models.values())


def _holdout_fidelity(
    pairs: list[tuple[nn.Module, tuple[int, ...]]],
    layer_keys: list[tuple[LayerKey | None, ...]],
    measured: list[float],
    *,
    lut: LatencyLUT,
    share: float,
    seed: int,
) -> LatencyFidelity | None:
    """Error on a seeded ``share`` of the models of a predictor fitted on the others; None when
    too few models remain on either side."""
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    n_test = round(share * len(pairs))
    train = sorted(order[n_test:])
    # Held-out models are judged like new candidates: only training models' layers are known
    # to this trial predictor, the held-out ones' other layers are estimated.
    known = {k for i in train for k in layer_keys[i] if k in lut}
    if n_test < 2 or len(train) <= len(CORRECTION_FEATURES) or len(known) <= 1:
        return None
    trial = fit_predictor(
        layers={k: lut.layer_ms(k) for k in known},
        overhead_ms=lut.overhead_ms,
        models=[pairs[i] for i in train],
        measured_ms=[measured[i] for i in train],
    )
    test = order[:n_test]
    return latency_fidelity(
        predicted_ms=[trial.predict(pairs[i][0], input_shape=pairs[i][1]) for i in test],
        measured_ms=[measured[i] for i in test],
    )


def _stage(progress: Progress | None, stage: str) -> Callable[[int, int], None] | None:
    if progress is None:
        return None
    report = progress
    return lambda done, total: report(stage, done, total)
