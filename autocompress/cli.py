"""Command line: ``autocompress search | pareto | export | devices``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Joint architecture / mixed-precision / pruning search for edge devices.",
)
console = Console()
err_console = Console(stderr=True)

RunsDir = Annotated[Path, typer.Option("--runs-dir", help="Folder that holds run folders.")]


def _fail(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code=2)


@app.command()
def search(
    config_path: Annotated[Path, typer.Argument(metavar="CONFIG", help="Run config YAML.")],
    runs_dir: RunsDir = Path("runs"),
    n_trials: Annotated[int | None, typer.Option(help="Override search.n_trials.")] = None,
    n_jobs: Annotated[int | None, typer.Option(help="Parallel trials (threads).")] = None,
    name: Annotated[str | None, typer.Option(help="Override the run name.")] = None,
) -> None:
    """Run (or resume) a search; writes runs/<name>/{trials,pareto}.csv and pareto.png."""
    from .config import ConfigError, load_config, parse_config

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        config = load_config(config_path)
        overrides = {"search": {**config.search.model_dump()}}
        if n_trials is not None:
            overrides["search"]["n_trials"] = n_trials
        if n_jobs is not None:
            overrides["search"]["n_jobs"] = n_jobs
        data = {**config.model_dump(mode="json"), **overrides}
        if name is not None:
            data["name"] = name
        config = parse_config(data, source=f"{config_path} (with command-line overrides)")
    except ConfigError as err:
        _fail(str(err))

    from .search import run_search
    from .search.progress import TrialPrinter

    console.print(f"[bold]autocompress[/] run [cyan]{config.name}[/] -> {runs_dir / config.name}")
    try:
        result = run_search(config, runs_dir=runs_dir, on_trial=TrialPrinter(config, console))
    except (ConfigError, FileNotFoundError, RuntimeError) as err:
        _fail(str(err))
    teacher = result.teacher_metrics
    console.print(f"teacher (fp32) accuracy {teacher['accuracy']:.2%}, {teacher['params']} params")
    _print_front(result.run_dir)


def _print_front(run_dir: Path) -> None:
    from .config import load_config
    from .report.pareto import pareto_front
    from .report.tables import format_front_table
    from .search import load_trials

    config = load_config(run_dir / "config.yaml")
    trials = load_trials(run_dir)
    front = pareto_front(trials, config.objectives())
    console.print(format_front_table(front, config.objectives()))
    done = int((trials["state"] == "COMPLETE").sum())
    failed = int((trials["state"] == "FAIL").sum())
    console.print(
        f"{len(front)} Pareto-optimal of {done} completed trials ({failed} failed). "
        f"Files: {run_dir}/trials.csv, pareto.csv, pareto.png, hypervolume.png"
    )


@app.command()
def pareto(run: Annotated[Path, typer.Argument(metavar="RUN", help="A run folder.")]) -> None:
    """Print the Pareto front of a run as a table."""
    from .config import ConfigError

    try:
        _print_front(run)
    except (ConfigError, FileNotFoundError) as err:
        _fail(str(err))


@app.command()
def export(
    run: Annotated[Path, typer.Argument(metavar="RUN", help="A run folder.")],
    trial: Annotated[int, typer.Option(help="Trial number (see `autocompress pareto RUN`).")],
    out: Annotated[Path | None, typer.Option(help="Output folder.")] = None,
) -> None:
    """Write a trial's candidate YAML and compressed model, reload it and re-check its accuracy."""
    from .config import ConfigError
    from .export.trial import export_trial

    try:
        result = export_trial(run, trial=trial, out_dir=out)
    except (ConfigError, FileNotFoundError) as err:
        _fail(str(err))
    console.print(f"exported trial {trial} to {result.out_dir}")
    console.print(
        f"accuracy recorded {result.recorded_accuracy:.2%}, "
        f"reproduced from the export {result.reproduced_accuracy:.2%}"
    )


@app.command()
def devices() -> None:
    """List the hardware device specs the analytic profile knows."""
    from rich.table import Table

    from .hardware_profiles.analytic import list_devices, load_device

    table = Table("device", "kind", "native bits", "description")
    for name in list_devices():
        spec = load_device(name)
        table.add_row(name, spec.kind, ",".join(map(str, spec.supported_bits)), spec.description)
    console.print(table)


if __name__ == "__main__":
    app()
