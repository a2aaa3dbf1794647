"""Command line: ``autocompress profile build-lut | fit | import-lut | calibrate`` (latency
tables, predictors and calibrated analytic specs).

Registered in :mod:`autocompress.cli.main` as the ``profile`` command group. Heavy imports
(torch, onnxruntime, scikit-learn) happen inside the commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .common import console, fail, reported_errors

if TYPE_CHECKING:
    from ..hardware_profiles.calibration import AnalyticCalibration
    from ..hardware_profiles.lut_calibration import TableCalibration

profile_app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help=(
        "Measure a device: per-layer latency tables (LUTs) measured here or imported, learned "
        "latency predictors and analytic specs calibrated on a table."
    ),
)

Device = Annotated[
    str,
    typer.Argument(
        metavar="DEVICE",
        help="'host' (this machine) or the URL of an `autocompress agent` on the device, e.g. "
        "http://192.168.1.20:8765.",
    ),
]
Token = Annotated[
    str | None,
    typer.Option(
        envvar="AUTOCOMPRESS_AGENT_TOKEN",
        help="The agent's token, for a URL DEVICE (env AUTOCOMPRESS_AGENT_TOKEN keeps it out of "
        "the process list).",
    ),
]
Journal = Annotated[
    Path | None,
    typer.Option(
        help="Keep every timing here as it is made; after an interruption (a dropped "
        "connection, Ctrl-C) the same command measures only the rest. Default: OUT.journal, "
        "deleted once OUT is written.",
    ),
]
ConfigPath = Annotated[Path, typer.Option("--config", help="Run config YAML (its space: section).")]
Out = Annotated[Path, typer.Option("--out", help="Output JSON file.")]
Samples = Annotated[int, typer.Option(min=1, help="Candidates sampled from the search space.")]
Backend = Annotated[
    str,
    typer.Option(
        help="onnxruntime | executorch (XNNPACK .pte) | litert (.tflite) | torch (eager, float)"
    ),
]
Repeats = Annotated[int, typer.Option(min=1, help="Timed runs per measurement (median kept).")]
Warmup = Annotated[int, typer.Option(min=0, help="Untimed runs before each measurement.")]
Threads = Annotated[int, typer.Option(min=1, help="Intra-op threads of the runtime.")]
Quantized = Annotated[
    bool | None,
    typer.Option(
        "--quantized/--float",
        help="Time layers as deployed (int8 kernels where the bits allow; the default, and the "
        "only choice with executorch and litert) or as float (the default with torch).",
    ),
]
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


@profile_app.command("build-lut")
def build_lut_command(
    device: Device,
    config_path: ConfigPath,
    out: Out,
    samples: Samples = 50,
    backend: Backend = "onnxruntime",
    quantized: Quantized = None,
    repeats: Repeats = 30,
    warmup: Warmup = 10,
    threads: Threads = 1,
    rounds: Rounds = 3,
    seed: Seed = None,
    input_shape: InputShape = None,
    num_classes: NumClasses = None,
    token: Token = None,
    journal: Journal = None,
) -> None:
    """Measure every distinct layer of the config's search space on DEVICE into a LUT JSON."""
    from ..hardware_profiles.lut_build import build_lut, layer_shapes_of_space
    from ..hardware_profiles.lut_table import DEPLOYED, HOST_PRECISION

    _check_backend(backend)
    quantized = _check_quantized(quantized, backend)
    remote = _remote(device, token, backend, quantized, warmup, repeats, threads)
    journal = _journal_path(out, journal)
    config, shape, classes = _load(config_path, input_shape, num_classes)
    with reported_errors():
        keys = layer_shapes_of_space(
            config.space,
            data_shape=shape,
            num_classes=classes,
            n_samples=samples,
            seed=config.seed if seed is None else seed,
            precision=DEPLOYED if quantized else HOST_PRECISION,
        )
        console.print(
            f"{len(keys)} distinct layers in {samples} sampled candidates of space "
            f"'{config.space.family}' at input {shape}; measuring on {device} with {backend} "
            f"({'int8 where the bits allow' if quantized else 'float'}), {threads} thread(s)"
        )
        with console.status("measuring layers") as status:
            lut = build_lut(
                keys,
                backend=backend,  # type: ignore[arg-type]
                quantized=quantized,
                remote=remote,
                journal=journal,
                threads=threads,
                warmup=warmup,
                repeats=repeats,
                rounds=rounds,
                progress=lambda done, total: status.update(f"measuring layers {done}/{total}"),
            )
        path = lut.save(out)
        journal.unlink(missing_ok=True)
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
    quantized: Quantized = None,
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
    token: Token = None,
    journal: Journal = None,
) -> None:
    """Train the learned latency predictor for DEVICE and calibrate an analytic spec.

    Samples candidates of the config's space, measures each whole model, fits per-layer trees on
    a LUT (measured here unless --lut is given) plus the model-level correction, and writes the
    predictor JSON. Also prints the error on held-out models of a predictor fitted without
    them (the final fit uses all models).
    """
    from ..hardware_profiles.predictor_fit import fit_latency_predictor

    _check_backend(backend)
    quantized = _check_quantized(quantized, backend)
    remote = _remote(device, token, backend, quantized, warmup, repeats, threads)
    journal = _journal_path(out, journal)
    config, shape, classes = _load(config_path, input_shape, num_classes)
    with reported_errors():
        with console.status("measuring models") as status:
            fit = fit_latency_predictor(
                space=config.space,
                input_shape=shape,
                num_classes=classes,
                samples=samples,
                seed=config.seed if seed is None else seed,
                lut=lut_path,
                backend=backend,  # type: ignore[arg-type]
                quantized=quantized,
                remote=remote,
                journal=journal,
                threads=threads,
                warmup=warmup,
                repeats=repeats,
                rounds=rounds,
                holdout=holdout,
                progress=lambda stage, done, total: status.update(
                    f"measuring {stage} {done}/{total}"
                ),
            )
        console.print(f"measured {fit.n_models} distinct models of {samples} sampled candidates")
        if not fit.corrected:
            console.print(
                f"[yellow]only {fit.n_models} distinct models: no model-level correction "
                "(sample more candidates with --samples)[/]"
            )
        if fit.holdout is not None:
            console.print(f"held-out models ({fit.holdout.n}): {_describe(fit.holdout)}")
        path = fit.predictor.save(out)
        journal.unlink(missing_ok=True)
        console.print(f"wrote {path}: trained on {len(fit.lut)} layers and {fit.n_models} models")
        if fit.calibration is not None:
            _print_calibration(fit.calibration, spec_out=spec_out)


@profile_app.command("import-lut")
def import_lut_command(
    table: Annotated[
        Path,
        typer.Argument(
            metavar="FILE.csv", help="Per-layer latency table measured or simulated elsewhere."
        ),
    ],
    out: Out,
) -> None:
    """Import a per-layer latency table (CSV) as a LUT JSON keyed by layer geometry and bits.

    Columns: in_channels, out_channels, kernel_size, stride, padding, groups, in_height,
    in_width, w_bits, a_bits, latency_ms, and optionally energy_mj (a Linear layer is kernel 1
    on a 1x1 input).
    """
    from ..hardware_profiles.lut_import import import_lut_csv

    with reported_errors():
        lut = import_lut_csv(table)
        path = lut.save(out)
    source = lut.source or {}
    bits = sorted({(k.w_bits, k.a_bits) for k in lut.keys()})
    console.print(
        f"wrote {path}: {len(lut)} layers from {source.get('rows')} rows of {table} "
        f"(sha256 {str(source.get('sha256'))[:12]}...), bits (w, a) {bits}"
    )


@profile_app.command("calibrate")
def calibrate_command(
    device: Annotated[
        str,
        typer.Argument(
            metavar="DEVICE",
            help="The spec to start from: a built-in device (autocompress devices) or a YAML.",
        ),
    ],
    lut_path: Annotated[
        Path, typer.Option("--lut", help="LUT JSON to fit (from import-lut or build-lut).")
    ],
    out: Annotated[Path, typer.Option("--out", help="Output device spec YAML.")],
    holdout: Annotated[
        float,
        typer.Option(min=0.0, max=0.9, help="Share of the LUT's layers held out to report error."),
    ] = 0.5,
    seed: Annotated[int, typer.Option(help="Seed of the held-out draw.")] = 0,
) -> None:
    """Fit DEVICE's analytic spec to a per-layer LUT and write the calibrated spec YAML.

    Fits efficiency per precision and for depthwise/grouped convs, bit scaling, channel tiling,
    per-layer overhead and memory bandwidth, then prints the fit on the held-out layers next to
    DEVICE's own figures.
    """
    from ..hardware_profiles.device_spec import load_device
    from ..hardware_profiles.lut_calibration import calibrate_to_lut

    if out.suffix not in (".yaml", ".yml"):
        fail(f"The '--out' option must be a .yaml or .yml file. Got {str(out)!r} instead.")
    with reported_errors():
        spec = load_device(device)
        result = calibrate_to_lut(spec, lut_path, holdout=holdout, seed=seed, name=out.stem)
    _print_table_calibration(result, base=spec.name)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(_spec_yaml(result), encoding="utf-8")
    console.print(
        f"wrote {out}; price a search with it: hardware: {{profile: analytic, device: {out}}}"
    )


def _print_table_calibration(result: TableCalibration, *, base: str) -> None:
    """The base and the calibrated spec's fit on the fitted and the held-out layers, then the
    fitted terms."""
    if result.skipped:
        console.print(f"[yellow]{result.skipped} LUT entries with latency <= 0 left out[/]")
    groups = [("fitted", result.fit_before, result.fit_after)]
    if result.heldout_before is not None and result.heldout_after is not None:
        groups.append(("held-out", result.heldout_before, result.heldout_after))
    width = max(len(base), len("calibrated"))
    for label, before, after in groups:
        console.print(f"{label} layers ({before.n}):")
        console.print(f"  {base:<{width}}  {_describe(before)}", highlight=False)
        console.print(f"  {'calibrated':<{width}}  {_describe(after)}", highlight=False)
    spec = result.spec
    scaling = spec.bit_scaling
    efficiency = {p: round(e, 3) for p, e in spec.compute_efficiency_by_bits.items()}
    factors = {c: round(f, 3) for c, f in spec.layer_efficiency.items()}
    terms = [
        f"efficiency by bits {efficiency}",
        f"depthwise/grouped factors {factors or 'none'}",
        "bit scaling "
        + (
            f"exponent {scaling.exponent:.3g}, saturating at {scaling.saturation_bits} bits"
            if scaling is not None
            else "none"
        ),
        f"channel tile {spec.channel_tile or 'none'}",
        f"per-layer overhead {spec.layer_overhead_s * 1e6:.3g} us",
        f"memory bandwidth {spec.memory_bandwidth_bytes_per_s / 1e9:.3g} GB/s",
    ]
    console.print("fitted: " + "; ".join(terms), highlight=False)


def _spec_yaml(result: TableCalibration) -> str:
    """The calibrated spec as YAML, behind a comment saying where it comes from."""
    import yaml

    data = result.spec.model_dump()
    record = data["calibration"]
    header = (
        f"# Written by autocompress profile calibrate: {record['base_device']} fitted to the "
        f"per-layer table\n# {record['table']}, sha256 {record['table_sha256']}.\n"
        "# The calibration: section at the end says how.\n"
    )
    return header + yaml.safe_dump(data, sort_keys=False)


def _print_calibration(calibration: AnalyticCalibration, *, spec_out: Path | None) -> None:
    """The analytic host spec's error before and after calibration, then the spec as YAML
    (also written to ``spec_out`` when given)."""
    import yaml

    console.print(
        f"analytic host spec before calibration (measured models): {_describe(calibration.before)}"
    )
    console.print(
        f"analytic host spec after calibration (measured models):  {_describe(calibration.after)}"
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


def _check_quantized(quantized: bool | None, backend: str) -> bool:
    if quantized is None:
        return backend != "torch"
    if quantized and backend == "torch":
        fail(
            "The '--quantized' option needs '--backend onnxruntime', executorch or litert "
            "(eager torch has no integer kernels for these layers); use --float."
        )
    if not quantized and backend in ("executorch", "litert"):
        fail(
            f"The '--float' option needs '--backend onnxruntime' or torch: {backend} times the "
            "converted program as deployed; drop --float."
        )
    return quantized


def _remote(
    device: str,
    token: str | None,
    backend: str,
    quantized: bool,
    warmup: int,
    repeats: int,
    threads: int,
) -> Any:
    """None for 'host'; the RemoteProfile of an agent URL."""
    if device == "host":
        return None
    if not device.startswith(("http://", "https://")):
        fail(
            "The 'DEVICE' argument must be 'host' (this machine) or the URL of an "
            f"`autocompress agent`, e.g. http://192.168.1.20:8765. Got {device!r} instead."
        )
    if backend == "torch":
        fail(
            "A URL DEVICE times with onnxruntime, executorch or litert (as its agent runs "
            "them): drop '--backend torch'."
        )
    from ..hardware_profiles.remote import RemoteProfile

    with reported_errors():
        return RemoteProfile(
            url=device,
            token=token,
            warmup=warmup,
            repeats=repeats,
            threads=threads,
            quantized=quantized,
            runtime=backend,
        )


def _journal_path(out: Path, journal: Path | None) -> Path:
    return journal if journal is not None else out.with_name(out.name + ".journal")


def _check_backend(backend: str) -> None:
    from ..hardware_profiles.lut_table import LUT_BACKENDS

    if backend not in LUT_BACKENDS:
        fail(
            f"The '--backend' option must be one of {', '.join(LUT_BACKENDS)}. "
            f"Got {backend!r} instead."
        )


def _load(
    config_path: Path, input_shape: str | None, num_classes: int | None
) -> tuple[Any, tuple[int, ...], int]:
    """The config, the per-sample input shape and the class count (from --input-shape and
    --num-classes when given, else by loading the config's dataset)."""
    import optuna

    from ..config import load_config

    # The samplers are created per command; their INFO lines would drown the output.
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with reported_errors():
        config = load_config(config_path)
    shape: tuple[int, ...] | None = None
    if input_shape is not None:
        try:
            shape = tuple(int(d) for d in input_shape.split(","))
        except ValueError:
            shape = None
        if not shape or min(shape) < 1:
            fail(
                "The '--input-shape' option must be comma-separated positive ints such as "
                f"3,32,32. Got {input_shape!r} instead."
            )
    if shape is None or num_classes is None:
        from ..data import load_data

        try:
            bundle = load_data(config.data, seed=config.seed)
        except (ValueError, FileNotFoundError, RuntimeError) as err:
            fail(f"{err} (or pass --input-shape and --num-classes)")
        shape = shape or tuple(bundle.input_shape)
        num_classes = num_classes or bundle.num_classes
    return config, shape, num_classes  # type: ignore[return-value]
