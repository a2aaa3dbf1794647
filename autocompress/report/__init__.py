"""Reporting on a finished (or running) search: Pareto fronts, hypervolume, plots and tables.

Everything works on the trials DataFrame described in ``autocompress.report.pareto``. Importing
this package does not import matplotlib, rich or Optuna; the functions that need them do.
"""

from autocompress.report.pareto import (
    MAXIMIZE,
    METRIC_DIRECTIONS,
    MINIMIZE,
    Objective,
    greedy_hypervolume_order,
    hypervolume,
    hypervolume_history,
    nadir_reference,
    non_dominated_mask,
    pareto_front,
    parse_objective,
    reference_point,
)
from autocompress.report.plots import (
    ParetoPlotData,
    ProjectionData,
    pareto_plot_data,
    plot_hypervolume,
    plot_pareto,
)
from autocompress.report.tables import format_front_table, format_metric

__all__ = [
    "MAXIMIZE",
    "METRIC_DIRECTIONS",
    "MINIMIZE",
    "Objective",
    "ParetoPlotData",
    "ProjectionData",
    "format_front_table",
    "format_metric",
    "greedy_hypervolume_order",
    "hypervolume",
    "hypervolume_history",
    "nadir_reference",
    "non_dominated_mask",
    "parse_objective",
    "pareto_front",
    "pareto_plot_data",
    "plot_hypervolume",
    "plot_pareto",
    "reference_point",
]
