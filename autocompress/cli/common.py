"""What every command shares: the consoles, logging, and one error path (a user's mistake is
printed as one line and exits with code 2; ``AUTOCOMPRESS_DEBUG=1`` shows the traceback)."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from ..core.errors import AutocompressError

# Errors that describe the user's input or environment; anything else is a bug and keeps its
# traceback. RuntimeError is here because torch and the remote profile report bad input with it.
USER_ERRORS = (AutocompressError, ValueError, OSError, ImportError, RuntimeError)


def make_console(*, stderr: bool = False) -> Console:
    """A console that wraps lines only on a terminal: in a pipe or a CI log (where rich would
    assume 80 columns) each line stays whole, and tables get room for their columns."""
    stream = sys.stderr if stderr else sys.stdout
    interactive = stream.isatty()
    width = None if interactive or "COLUMNS" in os.environ else 160
    return Console(stderr=stderr, soft_wrap=not interactive, width=width)


console = make_console()
err_console = make_console(stderr=True)


def fail(message: str) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    raise typer.Exit(code=2)


@contextmanager
def reported_errors() -> Iterator[None]:
    """Turn the user errors raised inside the block into one ``error:`` line and exit code 2."""
    try:
        yield
    except (typer.Exit, typer.Abort):  # click's exits subclass RuntimeError
        raise
    except USER_ERRORS as err:
        if os.environ.get("AUTOCOMPRESS_DEBUG"):
            raise
        fail(str(err))


def setup_logging(*, debug: bool = False) -> None:
    """INFO lines of autocompress as plain messages. Optuna's own lines (one per trial, and a
    traceback per failed trial) are left to the progress printer, which reports every trial
    with its reason. ``debug``: show tracebacks of user errors, and Optuna's lines too."""
    if debug:
        os.environ["AUTOCOMPRESS_DEBUG"] = "1"
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.INFO if debug else optuna.logging.ERROR)
