"""The orchestrator: Optuna study, samplers, constraints, storage, resume, results.

``run_search`` runs a search in this process (``search.backend: optuna``) or on a Ray cluster
(``ray``, an optional extra imported only then); ``run_worker`` joins a study that several
processes or machines share.
"""

from .results import load_trials, trials_dataframe, write_results
from .run import SearchResult, run_search
from .worker import WorkerResult, run_worker

__all__ = [
    "SearchResult",
    "WorkerResult",
    "load_trials",
    "run_search",
    "run_worker",
    "trials_dataframe",
    "write_results",
]
