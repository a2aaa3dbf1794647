"""Evaluators turn a compressed model into task metrics (accuracy): a registry of them
(``evaluator: {name: ...}`` in a run config), QAT + distillation (``train``), post-training
quantization (``ptq``), a weight-sharing supernet (``supernet``), a table lookup that sleeps the
recorded training time (``simulated``, for scaling benchmarks), multi-objective early stopping
and an accuracy predictor."""

from . import ptq as _ptq  # noqa: F401  (registers the "ptq" evaluator)
from . import simulated as _simulated  # noqa: F401  (registers the "simulated" evaluator)
from . import supernet as _supernet  # noqa: F401  (registers the "supernet" evaluator)
from ._base import (
    CandidateError,
    CandidateStopped,
    Evaluator,
    EvaluatorContext,
    TaskMetrics,
    TrialContext,
    create_evaluator,
    list_evaluators,
    register_evaluator,
)
from .train import TrainConfig, TrainEvaluator, resolve_device

__all__ = [
    "CandidateError",
    "CandidateStopped",
    "Evaluator",
    "EvaluatorContext",
    "TaskMetrics",
    "TrainConfig",
    "TrainEvaluator",
    "TrialContext",
    "create_evaluator",
    "list_evaluators",
    "register_evaluator",
    "resolve_device",
]
