"""The orchestrator: Optuna study, samplers, constraints, storage, resume, results."""

from .results import load_trials, trials_dataframe, write_results
from .run import SearchResult, run_search

__all__ = ["SearchResult", "load_trials", "run_search", "trials_dataframe", "write_results"]
