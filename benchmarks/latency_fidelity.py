"""How well do the latency profiles predict real whole-model latency on this host?

    python benchmarks/latency_fidelity.py [--quick] [--per-group N] [--repeats R] [--rounds K]
                                          [--seed S | --seeds S1 S2 S3] [--float] [--save DIR]
                                          [--backend onnxruntime|executorch|litert]

Samples candidates from four search spaces (mlp and small_cnn on 1x8x8 digits-sized inputs,
small_cnn and mobilenetv2 on 3x32x32 CIFAR-sized inputs), builds each compressed model and
measures it with ONNX Runtime as deployed (int8 kernels for layers of at most 8 bits, fp32 for
the others; ``--float``: everything float; ``--backend executorch``/``litert``: the XNNPACK
``.pte`` / ``.tflite`` program instead, as deployed, and the LUT measured with it too)
(1 thread, warm-up, the timing rule of ``autocompress.hardware_profiles.timing`` over R timed
runs), once in each of K rounds over all
models in shuffled order; the reference latency is the best of the K rounds
(small cloud VMs have slower phases of a few seconds caused by their neighbours; contention
only ever adds time, see ``build_lut``).
Candidates that build the same host model (the same layers at the same host precisions) are
merged, then the distinct models are split into disjoint train and test sets (seeded). From the
TRAIN set only: the LUT (every train layer measured on its own), the learned predictor (trees on
the LUT + correction on the train whole-model latencies) and the calibrated analytic spec. The
deployed set-up (``autocompress profile build-lut`` over the whole space, then ``profile fit``)
is the last row: the LUT also holds the test models' layers, each timed on its own, while the
correction still sees train whole-model latencies only. On
the TEST set, for each profile: % within +-10% of the reference, RMSE (ms), Kendall tau and
median |error|.

Noise ceiling: the best of rounds 1..K/2 against the best of rounds K/2+1..K of each model: %
within +-10%, i.e. how repeatable a reference taken from half the rounds is (the full K-round
reference is at least as steady). With ``--seeds``, one run per seed and then the median and the
[min, max] of every figure over the runs: quote those, not the best run.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import yaml

from autocompress.compression.apply import build_compressed
from autocompress.hardware_profiles import (
    AnalyticProfile,
    LearnedProfile,
    LUTProfile,
    build_lut,
    calibrate_analytic,
    fit_predictor,
    host_device_spec,
    latency_fidelity,
    model_layers,
)
from autocompress.hardware_profiles.lut_build import joint_space, measure_models
from autocompress.hardware_profiles.lut_table import DEPLOYED, HOST_PRECISION, LatencyLUT
from autocompress.hardware_profiles.predictor import CORRECTION_FEATURES
from autocompress.spaces.sampling import sample_candidates

NUM_CLASSES = 10
PRUNE = [0.0, 0.25, 0.5, 0.75]
GROUPS: list[tuple[str, tuple[int, ...], dict[str, Any]]] = [
    (
        "mlp",
        (1, 8, 8),
        {"family": "mlp", "arch": {"depths": [1, 2, 3], "widths": [32, 64, 128, 256]}},
    ),
    ("small_cnn", (1, 8, 8), {"family": "small_cnn"}),
    ("small_cnn", (3, 32, 32), {"family": "small_cnn"}),
    ("mobilenetv2", (3, 32, 32), {"family": "mobilenetv2"}),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run (~1 min)")
    parser.add_argument("--per-group", type=int, default=None, help="candidates per space")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per measurement")
    parser.add_argument("--rounds", type=int, default=None, help="measurements per model")
    parser.add_argument("--test-fraction", type=float, default=0.4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=None,
        help="several runs, one per seed (sampling, split and order); prints each run and the "
        "median and spread of the figures (default: --seed alone)",
    )
    parser.add_argument(
        "--float",
        dest="quantized",
        action="store_false",
        help="time every model and layer as float (default: as deployed, int8 where the bits "
        "allow)",
    )
    parser.add_argument("--save", type=Path, default=None, help="write data and models here")
    parser.add_argument(
        "--backend", choices=["onnxruntime", "executorch", "litert"], default="onnxruntime"
    )
    args = parser.parse_args()
    if not args.quantized and args.backend != "onnxruntime":
        parser.error(f"--float needs --backend onnxruntime ({args.backend} runs as deployed)")
    runs = {seed: run(args, seed) for seed in (args.seeds or [args.seed])}
    if len(runs) > 1:
        _summary(runs)


def _summary(runs: dict[int, tuple[list[tuple[str, Any]], float]]) -> None:
    """Median [min, max] over the runs of each profile's figures and of the noise ceiling."""
    print()
    print(f"over {len(runs)} runs (seeds {', '.join(map(str, runs))}): median [min, max]")
    # Profiles in the same order every run (a LUT's hit rate in its name is the first run's).
    names = [name for name, _ in next(iter(runs.values()))[0]]
    for index, name in enumerate(names):
        within = [results[index][1].within_10pct for results, _ in runs.values()]
        tau = [results[index][1].kendall_tau for results, _ in runs.values()]
        print(
            f"  {name:<52} within10% {np.median(within):6.1%} [{min(within):.1%}, "
            f"{max(within):.1%}]  tau {np.median(tau):.3f} [{min(tau):.3f}, {max(tau):.3f}]"
        )
    ceiling = [noise for _, noise in runs.values()]
    print(
        f"  {'noise ceiling':<52} within10% {np.median(ceiling):6.1%} [{min(ceiling):.1%}, "
        f"{max(ceiling):.1%}]"
    )


def run(args: argparse.Namespace, seed: int) -> tuple[list[tuple[str, Any]], float]:
    """One run with ``seed``; returns each profile's test fidelity and the noise ceiling."""
    print(f"== seed {seed}", flush=True)
    per_group = args.per_group or (8 if args.quick else 75)
    repeats = args.repeats or (10 if args.quick else 50)
    rounds = args.rounds or (2 if args.quick else 8)
    lut_rounds = 2 if args.quick else 3
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    start = time.perf_counter()

    precision = DEPLOYED if args.quantized else HOST_PRECISION
    models = _distinct_models(per_group, seed=seed, precision=precision)
    print(f"{len(models)} distinct host models from {per_group * len(GROUPS)} candidates")

    # ---- whole-model measurements: K rounds, each over all models in a new shuffled order;
    # the reference is the best round (see build_lut: contention only ever adds time)
    timings = measure_models(
        [(m["model"], m["shape"]) for m in models],
        backend=args.backend,
        threads=1,
        warmup=10,
        repeats=repeats,
        rounds=rounds,
        seed=seed,
        quantized=args.quantized,
    )
    for m, rounds_ms in zip(models, timings, strict=True):
        m["rounds_ms"] = rounds_ms
        m["measured_ms"] = min(rounds_ms)
    # Noise: the reference from the first half of the rounds vs the one from the second half.
    half = rounds // 2
    repeat_error = [
        abs(min(m["rounds_ms"][half:]) / min(m["rounds_ms"][:half]) - 1) for m in models
    ]
    print(f"measured {rounds} rounds in {time.perf_counter() - start:.0f} s")
    rng = random.Random(seed)

    # ---- split by distinct model
    order = list(range(len(models)))
    rng.shuffle(order)
    n_test = max(2, round(args.test_fraction * len(models)))
    test = [models[i] for i in order[:n_test]]
    train = [models[i] for i in order[n_test:]]
    pairs = [(m["model"], m["shape"]) for m in train]
    train_ms = [m["measured_ms"] for m in train]

    # ---- profiles from train data only
    t = time.perf_counter()
    timing = {
        "backend": args.backend,
        "threads": 1,
        "warmup": 10,
        "repeats": repeats,
        "quantized": args.quantized,
    }
    lut = build_lut(pairs, **timing, rounds=lut_rounds)
    print(
        f"LUT: {len(lut)} layer entries from {len(train)} train models in "
        f"{time.perf_counter() - t:.0f} s (per-run overhead {lut.overhead_ms * 1e3:.2f} us)"
    )
    predictor = fit_predictor(layers=lut, models=pairs, measured_ms=train_ms, random_state=0)
    spec = host_device_spec(threads=1, quantized=args.quantized)
    calibration = calibrate_analytic(spec, models=pairs, measured_ms=train_ms)
    c = calibration.spec
    print(
        f"analytic calibration: efficiency {spec.compute_efficiency:.3g} -> "
        f"{c.compute_efficiency:.3g}, layer overhead {spec.layer_overhead_s * 1e6:.3g} -> "
        f"{c.layer_overhead_s * 1e6:.3g} us (train within 10%: "
        f"{calibration.before.within_10pct:.0%} -> {calibration.after.within_10pct:.0%})"
    )
    names = ["intercept", *CORRECTION_FEATURES]
    print(
        "learned correction:",
        ", ".join(f"{n} {v:.4g}" for n, v in zip(names, predictor.correction, strict=True)),
    )

    # A LUT that also covers the test models' layers, as `autocompress profile build-lut` over
    # the whole search space gives: it adds layer timings of test layers, never test latencies.
    missing = {k for m in test for k in m["keys"] if k not in lut}
    extra = None
    if missing:
        extra = build_lut(sorted(missing), **timing, rounds=lut_rounds)
    full = LatencyLUT(
        entries={**lut.entries, **(extra.entries if extra else {})},
        overhead_ms=lut.overhead_ms,
        backend=lut.backend,
        threads=lut.threads,
        warmup=lut.warmup,
        repeats=lut.repeats,
        precision=lut.precision,
        host=lut.host,
    )
    # The deployed set-up: `profile build-lut` over the space, then `profile fit` on measured
    # whole models (here the train ones only): the trees see every layer, never a test latency.
    predictor_full = fit_predictor(layers=full, models=pairs, measured_ms=train_ms, random_state=0)
    test_keys = [k for m in test for k in m["keys"]]
    hit_rate = float(np.mean([k in lut for k in test_keys]))

    profiles = {
        "analytic (uncalibrated host guess)": AnalyticProfile(device=spec),
        "analytic (calibrated on train)": AnalyticProfile(device=calibration.spec),
        f"LUT (train layers, {hit_rate:.0%} hits, learned fallback)": LUTProfile(
            lut=lut, fallback=predictor
        ),
        "LUT (every test layer measured)": LUTProfile(lut=full),
        "learned (trees + model correction)": LearnedProfile(predictor=predictor),
        "learned (every test layer in the LUT)": LearnedProfile(predictor=predictor_full),
    }
    test_ms = [m["measured_ms"] for m in test]
    results = []
    predictions = {}
    for name, profile in profiles.items():
        pred = [profile.profile(m["model"], input_shape=m["shape"]).latency_ms for m in test]
        predictions[name] = pred
        results.append((name, latency_fidelity(predicted_ms=pred, measured_ms=test_ms)))
    noise_within = float(np.mean(np.asarray(repeat_error) <= 0.10))

    print()
    print(
        f"TEST set: {len(test)} models (train {len(train)}); latency "
        f"{min(test_ms) * 1e3:.1f} .. {max(test_ms) * 1e3:.1f} us; {args.backend} "
        f"({'int8 where the bits allow' if args.quantized else 'float'}), 1 thread, "
        f"best of {rounds} rounds x median of {repeats} runs"
    )
    print(f"{'profile':<52} {'within10%':>9} {'RMSE ms':>9} {'tau':>6} {'med|err|':>9}")
    for name, f in results:
        print(
            f"{name:<52} {f.within_10pct:>9.1%} {f.rmse_ms:>9.4f} {f.kendall_tau:>6.3f} "
            f"{f.median_abs_pct:>8.1f}%"
        )
    print(
        f"{'noise: best of rounds 1..K/2 vs best of K/2+1..K':<52} {noise_within:>9.1%}   "
        f"({len(repeat_error)} models, median |diff| {100 * np.median(repeat_error):.1f}%)"
    )
    print()
    for name in ("learned (trees + model correction)", "learned (every test layer in the LUT)"):
        learned = predictions[name]
        print(f"{name} per space (test):")
        for group in sorted({m["group"] for m in test}):
            idx = [i for i, m in enumerate(test) if m["group"] == group]
            if len(idx) >= 2:
                f = latency_fidelity(
                    predicted_ms=[learned[i] for i in idx], measured_ms=[test_ms[i] for i in idx]
                )
                print(
                    f"  {group:<22} n={f.n:<4} within10% {f.within_10pct:6.1%}  "
                    f"med|err| {f.median_abs_pct:4.1f}%  tau {f.kendall_tau:.3f}"
                )
    if args.save is not None:
        _save(args.save / f"seed{seed}", models, test, lut, full, predictor, calibration.spec)
    print(f"wall time {time.perf_counter() - start:.0f} s")
    return results, noise_within


def _distinct_models(per_group: int, *, seed: int, precision: str) -> list[dict[str, Any]]:
    """Build the sampled candidates; keep one per distinct host model (layers + other ops)."""
    models: list[dict[str, Any]] = []
    seen: set[Any] = set()
    for index, (family, shape, space) in enumerate(GROUPS):
        joint = joint_space(
            {**space, "prune_ratios": PRUNE}, input_shape=shape, num_classes=NUM_CLASSES
        )
        candidates = sample_candidates(joint, n=per_group, seed=seed + index)
        for candidate in candidates:
            model = build_compressed(candidate, num_classes=NUM_CLASSES, input_shape=shape)
            traced = model_layers(model, input_shape=shape, precision=precision)
            keys = [r.key for r in traced.layers]
            signature = (shape, tuple(keys), traced.uncosted_ops, traced.uncosted_elems)
            if signature in seen:
                continue
            seen.add(signature)
            models.append(
                {
                    "group": f"{family}@{'x'.join(map(str, shape))}",
                    "candidate": candidate,
                    "model": model,
                    "shape": shape,
                    "keys": keys,
                    "rounds_ms": [],
                }
            )
    return models


def _save(folder: Path, models, test, lut, full, predictor, spec) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    test_ids = {id(m) for m in test}
    rows = [
        {
            "group": m["group"],
            "shape": list(m["shape"]),
            "candidate": m["candidate"].to_dict(),
            "rounds_ms": m["rounds_ms"],
            "split": "test" if id(m) in test_ids else "train",
        }
        for m in models
    ]
    (folder / "measurements.json").write_text(json.dumps(rows, indent=1))
    lut.save(folder / "lut_train.json")
    full.save(folder / "lut_full.json")
    predictor.save(folder / "predictor.json")
    (folder / "host_calibrated.yaml").write_text(
        yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)
    )
    print(f"saved measurements, LUTs (train, full), predictor and calibrated spec to {folder}")


if __name__ == "__main__":
    main()
