"""The orchestrator: Optuna study, samplers, constraints, storage, resume, results.

``run_search`` runs a search in this process (``search.backend: optuna``) or on a Ray cluster
(``ray``, an optional extra imported only then); ``run_worker`` joins a study that several
processes or machines share; ``refit_run`` trains a run's front again with a longer fine-tune.

Modules, in the order a trial meets them: ``samplers`` (the config's sampler), ``setup`` (data,
space, profile, teacher, evaluator), ``study`` and ``storage`` (the study, its storage and the
trial budget), ``objective`` (one trial: price, then train), ``prescreen`` and ``surrogate``
(model-based skipping and proposals), ``driver`` (the Optuna backend), ``ray_backend``,
``worker``, ``results`` (the files a run writes), ``progress`` and ``refit``.
"""

from .driver import run_search
from .results import SearchResult, write_results
from .setup import SearchSetup, prepare_setup
from .worker import WorkerResult, run_worker

__all__ = [
    "SearchResult",
    "SearchSetup",
    "WorkerResult",
    "prepare_setup",
    "run_search",
    "run_worker",
    "write_results",
]
