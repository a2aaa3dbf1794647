"""The bottom room, imported by every other: objectives and directions, dominance, Pareto
fronts, reference points and hypervolume; the trials table; the run-folder layout (``RunDir``);
errors; locks and atomic writes; the registries' type and the sampler registry; shared argument
checks. It imports no other autocompress room.
"""

from .errors import AutocompressError, ConfigError, DamagedFileError, RunLockedError
from .objectives import (
    MAXIMIZE,
    METRIC_DIRECTIONS,
    MINIMIZE,
    Objective,
    check_trial_metric,
    parse_objective,
)
from .pareto import (
    greedy_hypervolume_order,
    hypervolume,
    hypervolume_history,
    nadir_reference,
    non_dominated_mask,
    pareto_front,
    reference_from_values,
    reference_point,
)
from .rundir import RunDir
from .samplers import create_sampler, list_samplers, register_sampler
from .trials import load_trials, retried_trials, trials_dataframe

__all__ = [
    "MAXIMIZE",
    "METRIC_DIRECTIONS",
    "MINIMIZE",
    "AutocompressError",
    "ConfigError",
    "DamagedFileError",
    "Objective",
    "RunDir",
    "RunLockedError",
    "check_trial_metric",
    "create_sampler",
    "greedy_hypervolume_order",
    "hypervolume",
    "hypervolume_history",
    "list_samplers",
    "load_trials",
    "nadir_reference",
    "non_dominated_mask",
    "pareto_front",
    "parse_objective",
    "reference_from_values",
    "reference_point",
    "register_sampler",
    "retried_trials",
    "trials_dataframe",
]
