import re

import pytest
from torch import nn

from autocompress.hardware_profiles import (
    LatencyPredictor,
    LearnedProfile,
    PredictorFit,
    fit_latency_predictor,
)
from autocompress.hardware_profiles.lut_build import layer_shapes_of_space
from autocompress.hardware_profiles.lut_table import HOST_PRECISION
from autocompress.hardware_profiles.predictor import CORRECTION_FEATURES

_SPACE = {
    "family": "mlp",
    "arch": {"depths": [1, 2], "widths": [16, 32, 64]},
    "prune_ratios": [0.0, 0.5],
}
_SHAPE = (1, 8, 8)
_FAST = dict(backend="torch", threads=1, warmup=0, repeats=2, rounds=1)


@pytest.fixture(scope="module")
def fitted():
    """One tiny real fit (torch backend, few samples and runs), with its progress calls."""
    calls = []
    fit = fit_latency_predictor(
        space=_SPACE,
        input_shape=_SHAPE,
        num_classes=10,
        samples=16,
        seed=0,
        holdout=0.4,
        progress=lambda stage, done, total: calls.append((stage, done, total)),
        **_FAST,
    )
    return fit, calls


def test_fit_measures_distinct_models_and_trains_a_predictor(fitted):
    fit, _ = fitted
    assert isinstance(fit, PredictorFit) and isinstance(fit.predictor, LatencyPredictor)
    assert fit.n_candidates == 16 and 2 <= fit.n_models <= 16
    assert len(fit.measured_ms) == fit.n_models and min(fit.measured_ms) > 0
    assert fit.corrected == (fit.n_models >= len(CORRECTION_FEATURES) + 1)
    assert fit.lut.backend == "torch" and len(fit.lut) == len(fit.predictor.layer_keys)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    metrics = LearnedProfile(predictor=fit.predictor).profile(model, input_shape=_SHAPE)
    assert metrics.latency_ms > 0


def test_fit_reports_holdout_and_calibration(fitted):
    fit, _ = fitted
    assert fit.calibration is not None and fit.calibration.spec.name == "host"
    assert fit.calibration.after.n == fit.n_models
    # Seed 0 draws enough distinct models for both sides of the split.
    assert fit.holdout is not None and fit.holdout.n == round(0.4 * fit.n_models)


def test_fit_reports_progress_per_stage(fitted):
    _, calls = fitted
    stages = [stage for stage, _, _ in calls]
    assert stages[0] == "models" and stages[-1] == "layers"
    assert stages == sorted(stages, key=["models", "layers"].index)  # models first, then layers
    for stage in ("models", "layers"):
        last = [c for c in calls if c[0] == stage][-1]
        assert last[1] == last[2]  # ends at done == total


def test_a_given_lut_is_reused_and_calibration_can_be_skipped(fitted, tmp_path):
    fit, _ = fitted
    path = fit.lut.save(tmp_path / "lut.json")
    calls = []
    again = fit_latency_predictor(
        space=_SPACE,
        input_shape=_SHAPE,
        num_classes=10,
        samples=16,
        seed=0,
        lut=path,
        calibrate=False,
        progress=lambda stage, done, total: calls.append(stage),
        **_FAST,
    )
    assert set(calls) == {"models"} and again.calibration is None
    assert set(again.predictor.layer_keys) == set(fit.predictor.layer_keys)
    assert again.n_models == fit.n_models  # same seed, same candidates


def test_lut_measured_differently_is_rejected_before_measuring(fitted, tmp_path):
    fit, _ = fitted
    path = fit.lut.save(tmp_path / "lut.json")
    with pytest.raises(ValueError, match=r"measured with torch, 1 thread\(s\); this fit"):
        fit_latency_predictor(
            space=_SPACE, input_shape=_SHAPE, num_classes=10, lut=path, backend="onnxruntime"
        )
    message = (
        "The 'lut' parameter of fit_latency_predictor must be None, a LatencyLUT or the path of "
        "a LUT JSON file. Got 42 instead."
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        fit_latency_predictor(space=_SPACE, input_shape=_SHAPE, num_classes=10, lut=42)


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"samples": 0}, "samples"),
        ({"num_classes": 0}, "num_classes"),
        ({"backend": "tflite"}, "backend"),
        ({"holdout": 1.0}, "holdout"),
        ({"input_shape": (0, 8)}, "input_shape"),
    ],
)
def test_bad_arguments_are_rejected(kwargs, param):
    args = {"space": _SPACE, "input_shape": _SHAPE, "num_classes": 10, **kwargs}
    with pytest.raises(ValueError, match=f"'{param}' parameter of fit_latency_predictor"):
        fit_latency_predictor(**args)


def test_fit_samples_the_same_candidates_as_layer_shapes_of_space(fitted):
    fit, _ = fitted
    keys = layer_shapes_of_space(
        _SPACE, data_shape=_SHAPE, num_classes=10, n_samples=16, seed=0, precision=HOST_PRECISION
    )
    assert set(fit.lut.keys()) == set(keys)
