"""Reporting on a finished (or running) search: plots, tables and the HTML report.

Everything works on the trials DataFrame described in ``autocompress.core.trials`` (fronts and
hypervolume come from ``autocompress.core``). Each figure's data is computed by one function and
drawn by another. Importing this package does not import matplotlib, rich or Optuna; the
functions that need them do.
"""

from autocompress.report.plots import (
    ParetoPlotData,
    ProjectionData,
    pareto_plot_data,
    plot_hypervolume,
    plot_pareto,
)
from autocompress.report.tables import (
    format_front_table,
    format_metric,
    format_refit_lines,
    rank_agreement,
)

__all__ = [
    "ParetoPlotData",
    "ProjectionData",
    "format_front_table",
    "format_metric",
    "format_refit_lines",
    "pareto_plot_data",
    "plot_hypervolume",
    "plot_pareto",
    "rank_agreement",
]
