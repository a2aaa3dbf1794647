"""Command line: ``autocompress search | worker | pareto | refit | export | devices | report |
agent`` (``profile`` lives in :mod:`autocompress.cli.profile`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import console, err_console, fail, reported_errors, setup_logging
from .profile import profile_app

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Joint architecture / mixed-precision / pruning search for edge devices.",
)
app.add_typer(profile_app, name="profile")


@app.callback()
def main(
    debug: Annotated[
        bool,
        typer.Option(
            "--debug",
            envvar="AUTOCOMPRESS_DEBUG",
            help="Show the traceback of an error, and Optuna's own log lines.",
        ),
    ] = False,
    imports: Annotated[
        list[str] | None,
        typer.Option(
            "--import",
            metavar="MODULE_OR_FILE",
            help="Import a plugin (a module, or a .py file) first: your model families, "
            "datasets, evaluators, samplers or hardware profiles. Repeatable; a search records "
            "it in the run's config, so later commands on the run import it too.",
        ),
    ] = None,
) -> None:
    """Joint architecture / mixed-precision / pruning search for edge devices."""
    setup_logging(debug=debug)
    from ..config import import_plugins

    with reported_errors():
        PLUGINS[:] = import_plugins(imports or [], source="--import")


# The plugins given with --import, recorded in the configs of the runs a command starts.
PLUGINS: list[str] = []


RunsDir = Annotated[Path, typer.Option("--runs-dir", help="Folder that holds run folders.")]
Overrides = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        metavar="FIELD=VALUE",
        help="Override a config field, e.g. --set train.epochs=1 (repeatable; VALUE is YAML).",
    ),
]


@app.command()
def search(
    config_path: Annotated[Path, typer.Argument(metavar="CONFIG", help="Run config YAML.")],
    runs_dir: RunsDir = Path("runs"),
    n_trials: Annotated[int | None, typer.Option(help="Override search.n_trials.")] = None,
    n_jobs: Annotated[int | None, typer.Option(help="Parallel trials (threads).")] = None,
    name: Annotated[str | None, typer.Option(help="Override the run name.")] = None,
    backend: Annotated[
        str | None,
        typer.Option(
            help="optuna: trials in this process | ray: trials on a Ray cluster "
            "(pip install autocompress[ray]). Overrides search.backend."
        ),
    ] = None,
    address: Annotated[
        str | None,
        typer.Option(
            help="Ray cluster to join: auto or HOST:PORT (default: start a private local one)."
        ),
    ] = None,
    workers: Annotated[
        int | None, typer.Option(help="Ray backend: trials at once (search.ray.workers).")
    ] = None,
    gpus_per_trial: Annotated[
        float | None, typer.Option(help="Ray backend: GPUs per trial, may be fractional.")
    ] = None,
    storage: Annotated[
        str | None,
        typer.Option(help="Optuna storage URL (default: RUNS_DIR/NAME/study.db)."),
    ] = None,
    overrides: Overrides = None,
) -> None:
    """Run (or resume) a search; writes runs/<name>/{trials,pareto}.csv and pareto.png."""
    ray_overrides = {"address": address, "workers": workers, "gpus_per_trial": gpus_per_trial}
    config = _config_with_overrides(
        config_path,
        name=name,
        overrides=overrides,
        n_trials=n_trials,
        n_jobs=n_jobs,
        backend=backend,
        storage=storage,
        ray={k: v for k, v in ray_overrides.items() if v is not None},
    )

    from ..search import run_search
    from ..search.progress import TrialPrinter

    console.print(f"[bold]autocompress[/] run [cyan]{config.name}[/] -> {runs_dir / config.name}")
    with reported_errors(), TrialPrinter(config.objectives(), console) as printer:
        result = run_search(config, runs_dir=runs_dir, on_trial=printer)
    from ..report.tables import format_metric

    teacher, primary = result.teacher_metrics, config.make_task().primary
    score = format_metric(primary, teacher.get(primary))
    console.print(f"teacher (fp32) {primary} {score}, {teacher['params']} params")
    _print_front(result.run_dir)


def _config_with_overrides(
    config_path: Path, *, name: str | None, overrides: list[str] | None = None, **search: object
):
    """The config file with ``--set`` ``overrides``, then the given ``search.*`` values (those
    not None) and run name."""
    from ..config import apply_overrides, load_config, parse_config

    with reported_errors():
        config = load_config(config_path)
        data = apply_overrides(config.model_dump(mode="json"), overrides or [])
        data["plugins"] = list(dict.fromkeys([*data["plugins"], *PLUGINS]))
        for key, value in search.items():
            if isinstance(value, dict):
                data["search"][key] = {**data["search"][key], **value}
            elif value is not None:
                data["search"][key] = value
        if name is not None:
            data["name"] = name
        return parse_config(data, source=f"{config_path} (with command-line overrides)")


@app.command()
def worker(
    config_path: Annotated[Path, typer.Argument(metavar="CONFIG", help="Run config YAML.")],
    storage: Annotated[
        str | None,
        typer.Option(
            help="The study all workers share: postgresql://USER@HOST/DB, sqlite:///PATH or "
            "journal:PATH (default: search.storage)."
        ),
    ] = None,
    n_trials: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Trials this worker runs (default: until the study holds search.n_trials "
            "finished trials, counting every worker's).",
        ),
    ] = None,
    runs_dir: RunsDir = Path("runs"),
    name: Annotated[str | None, typer.Option(help="Override the run name.")] = None,
    overrides: Overrides = None,
) -> None:
    """Join a study shared by several processes or machines and evaluate its trials.

    Start one per process/machine with the same CONFIG and --storage. A worker that dies
    mid-trial is detected by heartbeats and its trial is retried by another worker.
    """
    config = _config_with_overrides(config_path, name=name, overrides=overrides, storage=storage)

    from ..search import run_worker
    from ..search.progress import TrialPrinter

    console.print(f"[bold]autocompress[/] worker for run [cyan]{config.name}[/]")
    # Lines only: the count is the whole study's, which other workers move too.
    printer = TrialPrinter(config.objectives(), console, live=False)
    with reported_errors():
        result = run_worker(config, n_trials=n_trials, runs_dir=runs_dir, on_trial=printer)
    console.print(
        f"this worker ran {result.ran} trial(s); the study holds {len(result.trials)}. "
        f"Files: {result.run_dir}/trials.csv, pareto.csv"
    )


def _print_front(run_dir: Path) -> None:
    from ..config import load_config
    from ..core import RunDir, load_trials, pareto_front
    from ..report.tables import format_front_table

    run = RunDir(run_dir)
    config = load_config(run.config_file)
    trials = load_trials(run_dir)
    front = pareto_front(trials, config.objectives())
    console.print(format_front_table(front, config.objectives()))
    done = int((trials["state"] == "COMPLETE").sum())
    failed = int((trials["state"] == "FAIL").sum())
    # A live search has only its study so far: name only the files a reader can open.
    written = [
        path.name
        for path in (run.trials_table, run.front_table, run.front_plot, run.hypervolume_plot)
        if path.is_file()
    ]
    files = (
        f"Files: {run_dir}/{', '.join(written)}"
        if written
        else "No result files yet (the search writes them when it stops)."
    )
    console.print(
        f"{len(front)} Pareto-optimal of {done} completed trials ({failed} failed). {files}"
    )


@app.command()
def pareto(run: Annotated[Path, typer.Argument(metavar="RUN", help="A run folder.")]) -> None:
    """Print the Pareto front of a run as a table."""
    with reported_errors():
        _print_front(run)


@app.command()
def refit(
    run: Annotated[Path, typer.Argument(metavar="RUN", help="A finished run folder.")],
    epochs: Annotated[
        int, typer.Option(min=1, help="Fine-tuning epochs of each refit trial (its train.epochs).")
    ],
    trials: Annotated[
        str | None,
        typer.Option(help="Comma-separated trial numbers to refit (default: the run's front)."),
    ] = None,
    slack: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Also refit trials within this accuracy (a fraction, e.g. 0.02) of the front.",
        ),
    ] = 0.0,
    budget: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Refit at most this many of the front (and --slack) trials: the best of each "
            "objective first, then those adding the most hypervolume (by their search values).",
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Refit run folder (default: RUN-refit beside RUN).")
    ] = None,
    n_jobs: Annotated[int | None, typer.Option(min=1, help="Parallel trials (threads).")] = None,
) -> None:
    """Fine-tune a run's Pareto front again for --epochs epochs, as a run of its own.

    For the two-stage workflow: search with a short fine-tune (train.epochs: 1), then refit the
    front. The refit folder works with pareto, export and report; refit.csv compares each
    trial's accuracy in the search with its accuracy after the refit. Re-running resumes.
    """
    import math

    from ..config import load_config
    from ..core import RunDir
    from ..report.tables import format_refit_lines
    from ..search.progress import TrialPrinter
    from ..search.refit import refit_run

    numbers = None
    if trials is not None:
        try:
            numbers = [int(part) for part in trials.split(",") if part.strip()]
        except ValueError:
            fail(f"--trials must be comma-separated trial numbers, e.g. 3,7,12. Got {trials!r}")
    with reported_errors():
        source_config = load_config(RunDir(run).config_file)
        with TrialPrinter(source_config.objectives(), console) as printer:
            result = refit_run(
                run,
                epochs=epochs,
                out=out,
                trials=numbers,
                slack=slack,
                budget=budget,
                n_jobs=n_jobs,
                on_trial=printer,
            )
    console.print(f"refit of {run}, {epochs} epoch(s) each:", highlight=False)
    for line in format_refit_lines(result.table):
        console.print(line, highlight=False, markup=False)
    if not math.isnan(result.tau):
        console.print(
            f"rank agreement of search and refit accuracies: Kendall tau {result.tau:.2f}",
            highlight=False,
        )
    console.print(f"table: {RunDir(result.run_dir).refit_table}", soft_wrap=True)
    _print_front(result.run_dir)


@app.command()
def export(
    run: Annotated[Path, typer.Argument(metavar="RUN", help="A run folder.")],
    trial: Annotated[
        int | None, typer.Option(help="Trial number (see `autocompress pareto RUN`).")
    ] = None,
    pick: Annotated[
        str | None,
        typer.Option(
            # Help text is rich markup: a bracket that opens a word ("[and") would be read as a
            # style tag and vanish, so the grammar's brackets are escaped.
            help="Choose the trial by a rule instead of --trial: RANKING \\[with METRIC OP "
            "NUMBER \\[and METRIC OP NUMBER ...]], e.g. 'fastest with accuracy >= 0.95', "
            "'smallest with accuracy >= 0.9', 'most accurate with latency_ms <= 0.05', "
            "'lowest energy', 'min size_kb with accuracy > 0.9 and latency_ms < 0.1'."
        ),
    ] = None,
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            help="onnx (QDQ, integer weights) | torchscript | state-dict (JSON spec + "
            "state_dict + bit-packed weights) | executorch (XNNPACK .pte, int8 where <= 8 bits; "
            "needs the executorch extra) | litert (.tflite: int8 where <= 8 bits, float32 "
            "elsewhere; needs the litert extra).",
        ),
    ] = "state-dict",
    out: Annotated[Path | None, typer.Option(help="Output folder.")] = None,
    finetune_epochs: Annotated[
        int,
        typer.Option(
            min=0, help="Continue QAT + distillation for this many epochs before exporting."
        ),
    ] = 0,
) -> None:
    """Export a trial (pruned, quantized) and verify the artefact against the PyTorch model.

    Writes candidate.yaml, spec.json + model.pt, the artefact of --format and
    export_report.json (output difference, accuracy, size, measured vs predicted latency).
    Exits with code 1 when the artefact misses its tolerance.
    """
    from ..core import load_trials
    from ..export.pick import pick_trial
    from ..export.trial import EXPORT_FORMATS, REPORT_FILE, export_trial
    from ..report.tables import format_metric

    if (trial is None) == (pick is None):
        fail("Give exactly one of --trial N and --pick RULE.")
    if fmt not in EXPORT_FORMATS:
        fail(f"--format must be one of {', '.join(EXPORT_FORMATS)}. Got {fmt!r} instead.")
    with reported_errors():
        if pick is not None:
            chosen = pick_trial(load_trials(run), pick)
            trial = chosen.trial
            row = chosen.row
            shown = [chosen.rule.metric, "latency_ms", "size_kb"]
            values = ", ".join(
                f"{name} {format_metric(name, row.get(name))}" for name in dict.fromkeys(shown)
            )
            console.print(
                f"picked trial {trial} by '{chosen.rule}' (of {chosen.eligible} eligible): "
                f"{values}",
                highlight=False,
            )
        result = export_trial(
            run, trial=trial, out_dir=out, format=fmt, finetune_epochs=finetune_epochs
        )
    console.print(f"exported trial {trial} ({fmt}) to {result.out_dir}")
    if result.finetune is not None:
        tune = result.finetune
        console.print(
            f"fine-tuned {tune.epochs} epoch(s): {tune.metric} "
            f"{format_metric(tune.metric, tune.score_before)} -> "
            f"{format_metric(tune.metric, tune.score_after)}"
        )
    console.print(
        f"{result.metric} recorded {format_metric(result.metric, result.recorded_score)}, "
        f"reproduced from the export {format_metric(result.metric, result.reproduced_score)}"
    )
    report = result.report
    for line in report.summary_lines():
        console.print(line, highlight=False, markup=False)
    for layer in report.layers:
        console.print(
            f"  {layer['name']}: weights {layer['w_bits']} bits -> {layer['weight_format']}, "
            f"input {layer['a_bits']} bits -> {layer['activation_format']}"
            + (f"  ({layer['note']})" if layer["note"] else ""),
            highlight=False,
            markup=False,
        )
    console.print(f"report: {result.out_dir / REPORT_FILE}")
    if not report.passed:
        err_console.print("[bold red]verification failed:[/] the artefact misses its tolerance.")
        raise typer.Exit(code=1)


@app.command()
def devices() -> None:
    """List the hardware device specs the analytic profile knows."""
    from rich.table import Table

    from ..hardware_profiles.analytic import list_devices, load_device

    table = Table(
        "device", "kind", "native bits", "fallback bits", "peak MAC/s (8-bit)", "description"
    )
    for name in list_devices():
        spec = load_device(name)
        native = [b for b in spec.supported_bits if b not in spec.fallback_bits]
        peak = spec.mac_cost(w_bits=8, a_bits=8).peak_macs_per_s
        table.add_row(
            name,
            spec.kind,
            ",".join(map(str, native)),
            ",".join(map(str, spec.fallback_bits)) or "-",
            f"{peak:.2g}",
            spec.description,
        )
    console.print(table)


@app.command()
def report(
    run: Annotated[Path, typer.Argument(metavar="RUN", help="A run folder.")],
    trial: Annotated[
        int | None,
        typer.Option(help="Trial of the per-layer chart (default: most accurate front point)."),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Output folder (default: RUN/report).")] = None,
) -> None:
    """Write a self-contained HTML report of a run (plots, front, trials) and its PNGs."""
    import shlex

    from ..core import RunDir
    from ..report.html import write_report

    # ValueError: a --trial that the run does not have (or that has no candidate).
    with reported_errors():
        result = write_report(run, trial=trial, out_dir=out)
    # soft_wrap: long paths stay on one line, so they can be copied.
    console.print(f"report written to {result.html}", soft_wrap=True)
    study_url = shlex.quote(RunDir(run.resolve()).study_url)
    console.print(f"browse the study: optuna-dashboard {study_url}", soft_wrap=True)


@app.command()
def agent(
    host: Annotated[
        str,
        typer.Option(
            help="Address to listen on. The default accepts this machine only; pass the "
            "device's LAN address (or 0.0.0.0) to let the search machine connect."
        ),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port (0: any free port).")] = 8765,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="AUTOCOMPRESS_AGENT_TOKEN",
            help="Require 'Authorization: Bearer TOKEN' on every request "
            "(env AUTOCOMPRESS_AGENT_TOKEN keeps it out of the process list).",
        ),
    ] = None,
) -> None:
    """Serve ONNX Runtime timings of this device to the 'remote' hardware profile, until Ctrl-C."""
    from ..hardware_profiles.agent import serve

    def ready(server) -> None:
        auth = "token required" if token else "no token"
        console.print(f"autocompress agent listening on {server.url} ({auth})", soft_wrap=True)
        url = server.url
        if host in ("0.0.0.0", "::"):  # all interfaces: clients need one of this device's names
            url = f"http://<this-device>:{server.server_address[1]}"
        console.print(
            f"profile with create_hardware_profile('remote', url='{url}'); Ctrl-C stops it",
            soft_wrap=True,
        )

    with reported_errors():  # port in use, unknown host, bad token
        serve(host=host, port=port, token=token, block=True, on_ready=ready)
    console.print("agent stopped")


if __name__ == "__main__":
    app()
