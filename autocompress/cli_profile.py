"""Command line: ``autocompress profile build-lut | fit`` (latency tables and predictors).

Registered in :mod:`autocompress.cli` as the ``profile`` command group. Heavy imports
(torch, onnxruntime, scikit-learn) happen inside the commands.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

profile_app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Measure a device: per-layer latency tables (LUTs) and learned latency predictors.",
)
console = Console()
err_console = Console(stderr=True)

#: Devices these commands can measure. Remote agents (a URL) are not supported here yet.
SUPPORTED_DEVICES = ("host",)

Device = Annotated[
    str, typer.Argument(metavar="DEVICE", help="'host' (this machine); the only one for now.")
]
ConfigPath = Annotated[Path, typer.Option("--config", help="Run config YAML (its space: section).")]
Out = Annotated[Path, typer.Option("--out", help="Output JSON file.")]
Samples = Annotated[int, typer.Option(min=1, help="Candidates sampled from the search space.")]
Backend = Annotated[str, typer.Option(help="onnxruntime | torch")]
Repeats = Annotated[int, typer.Option(min=1, help="Timed runs per measurement (median kept).")]
Warmup = Annotated[int, typer.Option(min=0, help="Untimed runs before each measurement.")]
Threads = Annotated[int, typer.Option(min=1, help="Intra-op threads of the runtime.")]
Rounds = Annotated[
    int, typer.Option(min=1, help="Timing passes; the best pass of each timing is kept.")
]
Seed = Annotated[int | None, typer.Option(help="Sampling seed (default: the config's seed).")]
InputShape = Annotated[
    str | None,
    typer.Option(help="Per-sample input shape, e.g. 3,32,32 (default: from the config's data)."),
]
NumClasses = Annotated[
    int | None, typer.Option(min=1, help="Class count (default: from the config's data).")
]


def _fail(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code=2)


@profile_app.command("build-lut")
def build_lut_command(
    device: Device,
    config_path: ConfigPath,
    out: Out,
    samples: Samples = 50,
    backend: Backend = "onnxruntime",
    repeats: Repeats = 30,
    warmup: Warmup = 10,
    threads: Threads = 1,
    rounds: Rounds = 3,
    seed: Seed = None,
    input_shape: InputShape = None,
    num_classes: NumClasses = None,
) -> None:
    """Measure every distinct layer of the config's search space on DEVICE into a LUT JSON."""
    from .hardware_profiles.lut_build import layer_shapes_of_space

    _check_device(device)
    _check_backend(backend)
    config, shape, classes = _load(config_path, input_shape, num_classes)
    keys = layer_shapes_of_space(
        config.space,
        data_shape=shape,
        num_classes=classes,
        n_samples=samples,
        seed=config.seed if seed is None else seed,
    )
    console.print(
        f"{len(keys)} distinct layers in {samples} sampled candidates of space "
        f"'{config.space.family}' at input {shape}; measuring with {backend}, {threads} thread(s)"
    )
    lut = _measure_layers(
        keys, backend=backend, threads=threads, warmup=warmup, repeats=repeats, rounds=rounds
    )
    path = lut.save(out)
    console.print(
        f"wrote {path}: {len(lut)} entries, per-run overhead {lut.overhead_ms * 1e3:.2f} us, "
        f"cpu {lut.host.get('cpu_model')!r}"
    )


@profile_app.command("fit")
def fit_command(
    device: Device,
    config_path: ConfigPath,
    out: Out,
    samples: Samples = 40,
    lut_path: Annotated[
        Path | None, typer.Option("--lut", help="Reuse a LUT JSON instead of measuring layers.")
    ] = None,
    backend: Backend = "onnxruntime",
    repeats: Repeats = 30,
    warmup: Warmup = 10,
    threads: Threads = 1,
    rounds: Rounds = 3,
    holdout: Annotated[
        float, typer.Option(min=0.0, max=0.9, help="Share of models held out to report error.")
    ] = 0.25,
    spec_out: Annotated[
        Path | None, typer.Option(help="Also write the calibrated analytic spec YAML here.")
    ] = None,
    seed: Seed = None,
    input_shape: InputShape = None,
    num_classes: NumClasses = None,
) -> None:
    """Train the learned latency predictor for DEVICE and calibrate an analytic spec.

    Samples candidates of the config's space, measures each whole model, fits per-layer trees on
    a LUT (measured here unless --lut is given) plus the model-level correction, and writes the
    predictor JSON. The error on held-out models is printed before the final fit on all models.
    """
    import yaml

    from .compression.apply import build_compressed
    from .hardware_profiles.lut_build import measure_models, sample_candidates
    from .hardware_profiles.lut_table import LatencyLUT
    from .hardware_profiles.lut_trace import model_layers
    from .hardware_profiles.predictor import (
        CORRECTION_FEATURES,
        calibrate_analytic,
        fit_predictor,
        host_device_spec,
        latency_fidelity,
    )

    _check_device(device)
    _check_backend(backend)
    config, shape, classes = _load(config_path, input_shape, num_classes)
    seed = config.seed if seed is None else seed
    candidates = sample_candidates(
        config.space, data_shape=shape, num_classes=classes, n_samples=samples, seed=seed
    )
    # Bits do not change host kernels: candidates that build the same float model are one model.
    models: dict[Any, Any] = {}
    for candidate in candidates:
        model = build_compressed(candidate, num_classes=classes, input_shape=shape)
        traced = model_layers(model, input_shape=shape)
        keys = tuple(r.key for r in traced.layers)
        models.setdefault((keys, traced.uncosted_ops, traced.uncosted_elems), (model, keys))
    pairs = [(model, shape) for model, _ in models.values()]
    layer_keys = [keys for _, keys in models.values()]
    with console.status("measuring models") as status:
        timings = measure_models(
            pairs,
            backend=backend,  # type: ignore[arg-type]
            threads=threads,
            warmup=warmup,
            repeats=repeats,
            rounds=rounds,
            seed=seed,
            progress=lambda done, total: status.update(f"measuring models {done}/{total}"),
        )
    measured = [min(t) for t in timings]  # best round, as in build_lut
    console.print(f"measured {len(pairs)} distinct models of {samples} sampled candidates")
    if lut_path is not None:
        try:
            lut = LatencyLUT.load(lut_path)
        except ValueError as err:
            _fail(str(err))
        if lut.backend != backend or lut.threads != threads:
            _fail(
                f"The LUT {lut_path} was measured with {lut.backend}, {lut.threads} thread(s); "
                f"this fit measures with {backend}, {threads} thread(s). Use matching settings."
            )
    else:
        lut = _measure_layers(
            pairs, backend=backend, threads=threads, warmup=warmup, repeats=repeats, rounds=rounds
        )
    use_models = len(pairs) >= len(CORRECTION_FEATURES) + 1
    if not use_models:
        console.print(
            f"[yellow]only {len(pairs)} distinct models: no model-level correction "
            "(sample more candidates with --samples)[/]"
        )
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    n_test = round(holdout * len(pairs))
    train = sorted(order[n_test:])
    # Held-out models are judged like new candidates: only training models' layers are known
    # to this trial predictor, the held-out ones' other layers are estimated.
    known = {k for i in train for k in layer_keys[i] if k in lut}
    if use_models and n_test >= 2 and len(train) > len(CORRECTION_FEATURES) and len(known) > 1:
        trial = fit_predictor(
            layers={k: lut.layer_ms(k) for k in known},
            overhead_ms=lut.overhead_ms,
            models=[pairs[i] for i in train],
            measured_ms=[measured[i] for i in train],
        )
        test = order[:n_test]
        fidelity = latency_fidelity(
            predicted_ms=[trial.predict(pairs[i][0], input_shape=pairs[i][1]) for i in test],
            measured_ms=[measured[i] for i in test],
        )
        console.print(f"held-out models ({len(test)}): {_describe(fidelity)}")
    predictor = fit_predictor(
        layers=lut,
        models=pairs if use_models else (),
        measured_ms=measured if use_models else (),
    )
    path = predictor.save(out)
    console.print(f"wrote {path}: trained on {len(lut)} layers and {len(pairs)} models")
    if len(pairs) >= 2:
        calibration = calibrate_analytic(
            host_device_spec(threads=threads), models=pairs, measured_ms=measured
        )
        console.print(
            f"analytic host spec before calibration (measured models): "
            f"{_describe(calibration.before)}"
        )
        console.print(
            f"analytic host spec after calibration (measured models):  "
            f"{_describe(calibration.after)}"
        )
        text = yaml.safe_dump(calibration.spec.model_dump(mode="json"), sort_keys=False)
        console.print(text, highlight=False, markup=False)
        if spec_out is not None:
            spec_out.parent.mkdir(parents=True, exist_ok=True)
            spec_out.write_text(text, encoding="utf-8")
            console.print(f"wrote {spec_out}")


def _describe(f: Any) -> str:
    return (
        f"{f.within_10pct:.0%} within 10%, RMSE {f.rmse_ms:.4g} ms, Kendall tau "
        f"{f.kendall_tau:.3f}, median |error| {f.median_abs_pct:.1f}%"
    )


def _check_device(device: str) -> None:
    if device not in SUPPORTED_DEVICES:
        _fail(
            f"The 'DEVICE' argument must be one of {list(SUPPORTED_DEVICES)} ('host' measures "
            "this machine; remote devices such as an agent URL are not supported by this "
            f"command yet). Got {device!r} instead."
        )


def _check_backend(backend: str) -> None:
    if backend not in ("onnxruntime", "torch"):
        _fail(f"The '--backend' option must be onnxruntime or torch. Got {backend!r} instead.")


def _load(
    config_path: Path, input_shape: str | None, num_classes: int | None
) -> tuple[Any, tuple[int, ...], int]:
    """The config, the per-sample input shape and the class count (from --input-shape and
    --num-classes when given, else by loading the config's dataset)."""
    import optuna

    from .config import ConfigError, load_config

    # The samplers are created per command; their INFO lines would drown the output.
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        config = load_config(config_path)
    except ConfigError as err:
        _fail(str(err))
    shape: tuple[int, ...] | None = None
    if input_shape is not None:
        try:
            shape = tuple(int(d) for d in input_shape.split(","))
        except ValueError:
            shape = None
        if not shape or min(shape) < 1:
            _fail(
                "The '--input-shape' option must be comma-separated positive ints such as "
                f"3,32,32. Got {input_shape!r} instead."
            )
    if shape is None or num_classes is None:
        from .evaluators.data import load_data

        try:
            bundle = load_data(config.data, seed=config.seed)
        except (ValueError, FileNotFoundError, RuntimeError) as err:
            _fail(f"{err} (or pass --input-shape and --num-classes)")
        shape = shape or tuple(bundle.input_shape)
        num_classes = num_classes or bundle.num_classes
    return config, shape, num_classes  # type: ignore[return-value]


def _measure_layers(items, *, backend: str, threads: int, warmup: int, repeats: int, rounds: int):
    """``build_lut`` with a live "measuring layers i/n" status line."""
    from .hardware_profiles.lut_build import build_lut

    with console.status("measuring layers") as status:
        return build_lut(
            items,
            backend=backend,  # type: ignore[arg-type]
            threads=threads,
            warmup=warmup,
            repeats=repeats,
            rounds=rounds,
            progress=lambda done, total: status.update(f"measuring layers {done}/{total}"),
        )
