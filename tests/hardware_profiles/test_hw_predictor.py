import json
import math
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest
from torch import nn

from autocompress.hardware_profiles import (
    AnalyticProfile,
    LatencyPredictor,
    LayerKey,
    LearnedProfile,
    LUTProfile,
    calibrate_analytic,
    create_hardware_profile,
    fit_predictor,
    host_device_spec,
    latency_fidelity,
    load_device,
    model_layers,
)
from autocompress.hardware_profiles.lut_table import HOST_PRECISION, LatencyLUT, LUTEntry
from autocompress.hardware_profiles.predictor_features import layer_features


def _random_keys(n: int, *, seed: int) -> list[LayerKey]:
    rng = np.random.default_rng(seed)
    keys = []
    while len(keys) < n:
        size = int(rng.choice([4, 8, 16, 32]))
        c_in, c_out = (int(c) for c in rng.choice([8, 12, 16, 24, 32, 48, 64, 96], size=2))
        if rng.random() < 0.2:
            key = LayerKey(
                kind="linear",
                in_channels=c_in * 4,
                out_channels=c_out,
                kernel=(),
                stride=(),
                padding=(),
                dilation=(),
                groups=1,
                input_size=(),
                bn=False,
                act=str(rng.choice(["none", "relu"])),
                precision=HOST_PRECISION,
            )
        else:
            k = int(rng.choice([1, 3, 5]))
            depthwise = k > 1 and rng.random() < 0.3
            key = LayerKey(
                kind="conv",
                in_channels=c_in,
                out_channels=c_in if depthwise else c_out,
                kernel=(k, k),
                stride=(int(rng.choice([1, 2])),) * 2,
                padding=(k // 2, k // 2),
                dilation=(1, 1),
                groups=c_in if depthwise else 1,
                input_size=(size, size),
                bn=True,
                act=str(rng.choice(["relu", "relu6"])),
                precision=HOST_PRECISION,
            )
        keys.append(key)
    return keys


def _formula_ms(key: LayerKey) -> float:
    """A known latency law: dispatch + compute + memory, depthwise 3x slower per MAC."""
    per_mac = 3e-8 if key.depthwise else 1e-8
    return 5e-4 + per_mac * key.macs + 2e-7 * (key.input_elems + key.output_elems)


def _table(keys):
    return {k: _formula_ms(k) for k in keys}


def _models() -> list[tuple[nn.Module, tuple[int, ...]]]:
    """Small models with different numbers of layers and of other ops."""
    out = []
    for depth in (1, 2, 3, 4):
        for pooled in (False, True):
            layers: list[nn.Module] = []
            c = 3
            for i in range(depth):
                layers += [nn.Conv2d(c, 8 * (i + 1), 3, padding=1), nn.ReLU()]
                c = 8 * (i + 1)
            layers += [nn.AdaptiveAvgPool2d(2 if pooled else 8), nn.Flatten()]
            layers += [nn.Linear(c * (4 if pooled else 64), 10)]
            if pooled:
                layers.append(nn.Softmax(dim=1))
            out.append((nn.Sequential(*layers), (3, 8, 8)))
    return out


def _layer_table_of(models):
    keys = {r.key for m, s in models for r in model_layers(m, input_shape=s).layers}
    return _table(sorted(keys) + _random_keys(60, seed=5))


def test_learned_layers_recover_a_known_latency_law():
    train, test = _random_keys(400, seed=0), _random_keys(150, seed=1)
    predictor = fit_predictor(layers=_table(train))
    predicted = predictor.predict_layers(test, use_known=False)  # the trees, never a lookup
    truth = np.array([_formula_ms(k) for k in test])
    within = np.mean(np.abs(predicted / truth - 1) <= 0.10)
    assert within >= 0.95
    # The law spans orders of magnitude: a constant guess cannot pass the same bar.
    assert np.mean(np.abs(np.median(truth) / truth - 1) <= 0.10) < 0.3
    assert layer_features(test).shape == (150, 22)
    # Layers it was trained on keep their measured value exactly.
    assert predictor.predict_layers(train[:5]).tolist() == [_formula_ms(k) for k in train[:5]]


def test_model_level_correction_recovers_known_coefficients():
    models = _models()
    table = _layer_table_of(models)
    plain = fit_predictor(layers=table)  # no models: overhead + sum of layers
    parts = [plain.explain(m, input_shape=s) for m, s in models]
    assert parts[0]["latency_ms"] == pytest.approx(parts[0]["layer_sum_ms"])
    truth = np.array([0.01, 0.8, 0.002, 0.003, 1e-6])
    names = ("layer_sum_ms", "n_layers", "n_uncosted_ops", "uncosted_elems")
    measured = [truth @ [1.0, *(p[n] for n in names)] for p in parts]
    predictor = fit_predictor(layers=table, models=models, measured_ms=measured)
    np.testing.assert_allclose(predictor.correction, truth, rtol=1e-6, atol=1e-9)
    predicted = [predictor.predict(m, input_shape=s) for m, s in models]
    np.testing.assert_allclose(predicted, measured, rtol=1e-6)


def test_model_level_correction_resists_models_timed_in_a_slow_phase():
    models = [
        (nn.Sequential(*layers, nn.Flatten(), nn.Linear(c * 64, 10)), (3, 8, 8))
        for depth in (1, 2, 3, 4)
        for width in (4, 8, 16, 24)
        for layers, c in [_conv_stack(depth, width)]
    ]
    table = _layer_table_of(models)
    plain = fit_predictor(layers=table)
    names = ("layer_sum_ms", "n_layers", "n_uncosted_ops", "uncosted_elems")
    truth = np.array([0.01, 0.8, 0.002, 0.003, 1e-6])
    exact = np.array(
        [
            truth @ [1.0, *(p[n] for n in names)]
            for p in (plain.explain(m, input_shape=s) for m, s in models)
        ]
    )
    measured = exact * (1 + np.random.default_rng(0).uniform(-0.02, 0.02, len(exact)))
    measured[[2, 9, 13]] *= 1.5  # timed while the host ran slow
    predictor = fit_predictor(layers=table, models=models, measured_ms=measured)
    predicted = np.array([predictor.predict(m, input_shape=s) for m, s in models])
    # Every model, the three slow ones included, is priced at its true latency, not pulled
    # towards the slow timings (plain least squares misses 11 of the 16 by over 3%, one by 11%).
    assert np.max(np.abs(predicted / exact - 1)) < 0.03


def _conv_stack(depth: int, width: int) -> tuple[list[nn.Module], int]:
    layers: list[nn.Module] = []
    c = 3
    for i in range(depth):
        layers += [nn.Conv2d(c, width * (i + 1), 3, padding=1), nn.ReLU()]
        c = width * (i + 1)
    return layers, c


def test_persistence_round_trip_gives_identical_predictions(tmp_path):
    models = _models()
    measured = [0.02 + 0.001 * i for i in range(len(models))]
    predictor = fit_predictor(
        layers=_layer_table_of(models), models=models, measured_ms=measured, random_state=7
    )
    path = predictor.save(tmp_path / "predictor.json")
    data = json.loads(path.read_text())
    assert data["format"] == "autocompress-latency-predictor" and data["version"] == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a faithful refit must not warn
        again = LatencyPredictor.load(path)
    keys = _random_keys(50, seed=9)
    assert np.array_equal(again.predict_layers(keys), predictor.predict_layers(keys))
    assert np.array_equal(again.correction, predictor.correction)
    m, s = models[3]
    assert again.predict(m, input_shape=s) == predictor.predict(m, input_shape=s)

    data["check"]["layer_predictions_ms"][0] *= 2  # as if saved by another scikit-learn
    path.write_text(json.dumps(data))
    with pytest.warns(UserWarning, match="refitted latency predictor differs"):
        LatencyPredictor.load(path)
    data["params"]["criterion"] = "friedman_mse"  # not on the allow-list
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="'params' parameter of LatencyPredictor"):
        LatencyPredictor.load(path)


def test_learned_profile_and_lut_fallback(tmp_path):
    models = _models()
    table = _layer_table_of(models)
    predictor = fit_predictor(layers=table, overhead_ms=0.004)
    path = predictor.save(tmp_path / "p.json")
    profile = create_hardware_profile("learned", predictor=str(path))
    assert isinstance(profile, LearnedProfile) and profile.name == "learned"
    model, shape = models[5]
    metrics = profile.profile(model, input_shape=shape)
    assert metrics.latency_ms == pytest.approx(predictor.predict(model, input_shape=shape))
    assert math.isnan(metrics.energy_mj) and len(metrics.details["layers"]) == 4

    # A LUT missing one layer falls back on the predictor's estimate for that layer only.
    keys = [r.key for r in model_layers(model, input_shape=shape).layers]
    lut = LatencyLUT(
        entries={
            k: LUTEntry(latency_ms=table[k], alone_ms=1, chain_ms=2, repeats=1) for k in keys[1:]
        },
        overhead_ms=0.004,
        backend="onnxruntime",
        threads=1,
        warmup=0,
        repeats=1,
    )
    rows = LUTProfile(lut=lut, fallback=path).profile(model, input_shape=shape).details["layers"]
    assert rows[0]["source"] == "fallback" and {r["source"] for r in rows[1:]} == {"lut"}
    assert rows[0]["latency_ms"] == pytest.approx(predictor.predict_layers(keys[:1])[0])


def test_a_run_that_wants_energy_refuses_a_profile_without_it(tmp_path, tiny_config_dict):
    from autocompress.config import ConfigError, parse_config
    from autocompress.search.setup import make_hardware_profile

    table = _layer_table_of(_models())
    predictor = fit_predictor(layers=table, overhead_ms=0.004).save(tmp_path / "p.json")

    def lut_file(energy: float | None) -> str:
        entries = {
            k: LUTEntry(latency_ms=v, alone_ms=None, chain_ms=None, repeats=None, energy_mj=energy)
            for k, v in table.items()
        }
        lut = LatencyLUT(
            entries=entries,
            overhead_ms=0.0,
            backend="imported",
            threads=None,
            warmup=None,
            repeats=None,
        )
        return str(lut.save(tmp_path / f"lut-{energy}.json"))

    def config(hardware: dict, objectives: list[str]):
        tiny_config_dict["hardware"] = hardware
        tiny_config_dict["search"]["objectives"] = objectives
        return parse_config(tiny_config_dict)

    with_energy = ["accuracy", "latency_ms", "energy_mj"]
    # Every candidate's energy would be NaN: refused up front, not trial by trial.
    learned = {"profile": "learned", "options": {"predictor": str(predictor)}}
    with pytest.raises(ConfigError, match="learned profile's predictor holds latency only"):
        make_hardware_profile(config(learned, with_energy))
    lut = {"profile": "lut", "options": {"lut": lut_file(None)}}
    with pytest.raises(ConfigError, match=f"no energy for {len(table)} of its {len(table)}"):
        make_hardware_profile(config(lut, with_energy))
    assert make_hardware_profile(config(learned, ["accuracy", "latency_ms"]))
    assert make_hardware_profile(config({**lut, "options": {"lut": lut_file(0.01)}}, with_energy))


def test_calibration_recovers_efficiency_and_overhead():
    base = load_device("cortex_a72")
    truth = base.model_copy(update={"compute_efficiency": 0.23, "layer_overhead_s": 3e-5})
    models = _models()
    measured = [
        AnalyticProfile(device=truth).profile(m, input_shape=s).latency_ms for m, s in models
    ]
    result = calibrate_analytic(base, models=models, measured_ms=measured)
    assert result.spec.compute_efficiency == pytest.approx(0.23, rel=1e-4)
    assert result.spec.layer_overhead_s == pytest.approx(3e-5, rel=1e-4)
    assert result.after.within_10pct == 1.0 and result.after.median_abs_pct < 1e-3
    assert result.before.median_abs_pct > 10
    assert result.spec.name == base.name and result.spec.sources == base.sources


def test_host_spec_is_a_valid_float_spec():
    spec = host_device_spec(threads=2)
    assert spec.supported_bits == [32] and spec.kind == "cpu"
    model, shape = _models()[0]
    assert AnalyticProfile(device=spec).profile(model, input_shape=shape).latency_ms > 0


def test_latency_fidelity_figures():
    f = latency_fidelity(predicted_ms=[1.05, 2.5, 2.9], measured_ms=[1.0, 2.0, 3.0])
    assert f.n == 3 and f.within_10pct == pytest.approx(2 / 3)
    assert f.rmse_ms == pytest.approx(math.sqrt((0.05**2 + 0.5**2 + 0.1**2) / 3))
    assert f.kendall_tau == pytest.approx(1.0)
    with pytest.raises(ValueError, match="latency_fidelity"):
        latency_fidelity(predicted_ms=[1.0], measured_ms=[1.0, 2.0])


def test_bad_inputs_are_rejected():
    table = _table(_random_keys(10, seed=2))
    models = _models()
    with pytest.raises(ValueError, match="'layers' parameter of fit_predictor"):
        fit_predictor(layers=dict(list(table.items())[:1]))
    with pytest.raises(ValueError, match="'layers' parameter of fit_predictor"):
        fit_predictor(layers={**table, next(iter(table)): -1.0})
    with pytest.raises(ValueError, match="'measured_ms' parameter of fit_predictor"):
        fit_predictor(layers=table, models=models, measured_ms=[1.0])
    with pytest.raises(ValueError, match="'models' parameter of fit_predictor"):
        fit_predictor(layers=table, models=models[:4], measured_ms=[1.0, 2.0, 3.0, 4.0])
    message = (
        "The 'predictor' parameter of LearnedProfile must be a LatencyPredictor or the path of "
        "a predictor JSON file. Got 3 instead."
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        LearnedProfile(predictor=3)
    with pytest.raises(ValueError, match="'spec' parameter of calibrate_analytic"):
        calibrate_analytic("cortex_a72", models=models, measured_ms=[1.0] * len(models))
    with pytest.raises(ValueError, match="calibrate_analytic"):
        calibrate_analytic(load_device("cortex_a72"), models=models[:1], measured_ms=[1.0])
    with pytest.raises(ValueError, match="format"):
        LatencyPredictor.from_dict({"format": "joblib"})


def test_import_does_not_load_sklearn_or_scipy():
    code = (
        "import sys, autocompress.hardware_profiles as hp; "
        "assert 'sklearn' not in sys.modules and 'scipy' not in sys.modules; "
        "print(hp.list_hardware_profiles())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "learned" in out.stdout and "lut" in out.stdout
