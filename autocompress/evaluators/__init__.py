"""Evaluators turn a compressed model into task metrics (accuracy)."""

from ._base import CandidateError, Evaluator, TaskMetrics

__all__ = ["CandidateError", "Evaluator", "TaskMetrics"]
