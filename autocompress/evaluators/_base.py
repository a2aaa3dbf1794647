"""Evaluator contract: turn a compressed model into task metrics."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from torch import nn

from ..spaces import Candidate


class CandidateError(RuntimeError):
    """A candidate that cannot be evaluated (NaN loss, invalid plan, out of memory).

    The search records it as a failed trial with this message as the reason and goes on.
    """


@dataclass(frozen=True)
class TaskMetrics:
    accuracy: float  # top-1 on the validation split, in [0, 1]
    loss: float  # mean cross-entropy on the validation split
    epochs: int  # epochs actually trained
    train_seconds: float


class Evaluator(ABC):
    """Contract:
    - ``evaluate`` may train ``model`` in place (it owns it for the call) and returns metrics on
      data the model was not trained on.
    - It raises :class:`CandidateError` for a candidate-specific failure; any other exception is
      also recorded as a failed trial, but signals a bug or an environment problem.
    - One evaluator may be called from several threads at once (``--n-jobs``), each with its own
      model: it must not keep per-call state on ``self``.
    """

    @abstractmethod
    def evaluate(self, model: nn.Module, candidate: Candidate) -> TaskMetrics: ...
