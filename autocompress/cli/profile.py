"""Command line: ``autocompress profile build-lut | fit`` (latency tables and predictors).

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

profile_app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Measure a device: per-layer latency tables (LUTs) and learned latency predictors.",
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
Backend = Annotated[str, typer.Option(help="onnxruntime | torch")]
Repeats = Annotated[int, typer.Option(min=1, help="Timed runs per measurement (median kept).")]
Warmup = Annotated[int, typer.Option(min=0, help="Untimed runs before each measurement.")]
Threads = Annotated[int, typer.Option(min=1, help="Intra-op threads of the runtime.")]
Quantized = Annotated[
    bool | None,
    typer.Option(
        "--quantized/--float",
        help="Time layers as deployed (int8 kernels where the bits allow; the default with "
        "onnxruntime) or as float (the default with torch).",
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
        return backend == "onnxruntime"
    if quantized and backend != "onnxruntime":
        fail(
            f"The '--quantized' option needs '--backend onnxruntime' (eager {backend} has no "
            "integer kernels for these layers); use --float."
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
    if backend != "onnxruntime":
        fail(f"A URL DEVICE times with onnxruntime: drop '--backend {backend}'.")
    from ..hardware_profiles.remote import RemoteProfile

    with reported_errors():
        return RemoteProfile(
            url=device,
            token=token,
            warmup=warmup,
            repeats=repeats,
            threads=threads,
            quantized=quantized,
        )


def _journal_path(out: Path, journal: Path | None) -> Path:
    return journal if journal is not None else out.with_name(out.name + ".journal")


def _check_backend(backend: str) -> None:
    if backend not in ("onnxruntime", "torch"):
        fail(f"The '--backend' option must be onnxruntime or torch. Got {backend!r} instead.")


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
