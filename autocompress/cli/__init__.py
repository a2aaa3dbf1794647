"""The command line: thin typer commands over the same API a Python user calls.

``autocompress search | worker | pareto | refit | export | report | devices | agent | profile``.
"""

from .main import app

__all__ = ["app"]
