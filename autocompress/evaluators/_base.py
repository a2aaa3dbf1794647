"""Evaluator contract: turn a compressed model into task metrics."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field

from torch import nn

from ..spaces import Candidate


class CandidateError(RuntimeError):
    """A candidate that cannot be evaluated (NaN loss, invalid plan, out of memory).

    The search records it as a failed trial with this message as the reason and goes on.
    """


class CandidateStopped(Exception):
    """An evaluation ended early by a stopping rule: the candidate is not worth its full budget.

    Not a failure (hence not a :class:`CandidateError`): the search records the trial as stopped
    (e.g. Optuna's PRUNED state) with ``accuracy`` measured after ``epochs`` epochs, the budget of
    rung ``rung`` (0-based).
    """

    def __init__(self, *, rung: int, epochs: int, accuracy: float) -> None:
        super().__init__(
            f"stopped at rung {rung} after {epochs} epoch(s) with accuracy {accuracy:.4f}"
        )
        self.rung = rung
        self.epochs = epochs
        self.accuracy = accuracy


@dataclass(frozen=True)
class TaskMetrics:
    accuracy: float  # top-1 on the validation split, in [0, 1]
    loss: float  # mean cross-entropy on the validation split
    epochs: int  # epochs actually trained
    train_seconds: float


@dataclass(frozen=True)
class TrialContext:
    """What the search knows about a candidate before it is evaluated.

    ``number``: the trial number (unique within a study). ``costs``: the candidate's hardware
    costs by name (e.g. ``{"latency_ms": 1.3, "size_kb": 12.0}``), every one to be minimised;
    they are computed before training, so evaluators that compare candidates at equal cost (early
    stopping) can use them.
    """

    number: int
    costs: Mapping[str, float] = field(default_factory=dict)


class Evaluator(ABC):
    """Contract:
    - ``evaluate`` may train ``model`` in place (it owns it for the call) and returns metrics on
      data the model was not trained on.
    - It raises :class:`CandidateError` for a candidate-specific failure; any other exception is
      also recorded as a failed trial, but signals a bug or an environment problem.
    - An evaluator with a stopping rule raises :class:`CandidateStopped` from ``evaluate_trial``
      when it gives up on a candidate early; that is a result, not a failure.
    - One evaluator may be called from several threads at once (``--n-jobs``), each with its own
      model: it must not keep per-call state on ``self``.
    """

    @abstractmethod
    def evaluate(self, model: nn.Module, candidate: Candidate) -> TaskMetrics: ...

    def evaluate_trial(
        self, model: nn.Module, candidate: Candidate, *, context: TrialContext
    ) -> TaskMetrics:
        """``evaluate`` with what the search knows about the trial; the search calls this one.

        The default ignores ``context``. Evaluators that need the trial number or the hardware
        costs (early stopping) override it; they may then also raise
        :class:`CandidateStopped`.
        """
        return self.evaluate(model, candidate)
