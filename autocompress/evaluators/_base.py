"""Evaluator contract (turn a compressed model into task metrics) and the evaluator registry."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..core.errors import AutocompressError
from ..core.registry import Registry
from ..data import DataBundle
from ..spaces import Candidate, JointSearchSpace
from ..tasks import Classification, Task

if TYPE_CHECKING:
    from ..core.rundir import RunDir
    from .early_stopping import RungTable
    from .train import TrainConfig


class CandidateError(AutocompressError, RuntimeError):
    """A candidate that cannot be evaluated (NaN loss, invalid plan, out of memory).

    The search records it as a failed trial with this message as the reason and goes on.
    """


class CandidateStopped(Exception):
    """An evaluation ended early by a stopping rule: the candidate is not worth its full budget.

    Not a failure (hence not a :class:`CandidateError`): the search records the trial as stopped
    (e.g. Optuna's PRUNED state) with ``value``, the task's primary metric ``metric``, measured
    after ``epochs`` epochs, the budget of rung ``rung`` (0-based).
    """

    def __init__(self, *, rung: int, epochs: int, value: float, metric: str = "accuracy") -> None:
        super().__init__(
            f"stopped at rung {rung} after {epochs} epoch(s) with {metric} {value:.4f}"
        )
        self.rung = rung
        self.epochs = epochs
        self.value = value
        self.metric = metric


@dataclass(frozen=True)
class TaskMetrics:
    """What an evaluation measured on the validation split: ``metrics``, the task's metrics by
    name (e.g. ``{"accuracy": 0.93}`` or ``{"miou": 0.61, "pixel_accuracy": 0.9}``), ``loss``
    (the task's mean loss), the ``epochs`` actually trained and the seconds they took.
    ``accuracy=`` is shorthand for a classification's ``metrics={"accuracy": accuracy}``.
    ``kept_ptq``: the model scored is the post-training quantized one, which beat the
    fine-tuned one (see ``TrainEvaluator.ptq_start``)."""

    metrics: Mapping[str, float] = field(default_factory=dict)
    loss: float = math.nan
    epochs: int = 0
    train_seconds: float = 0.0
    accuracy: float | None = None
    kept_ptq: bool = False

    def __post_init__(self) -> None:
        if self.accuracy is not None and not self.metrics:
            object.__setattr__(self, "metrics", {"accuracy": float(self.accuracy)})
        elif self.accuracy is None and "accuracy" in self.metrics:
            object.__setattr__(self, "accuracy", float(self.metrics["accuracy"]))


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

    def with_early_stopping(
        self, table: RungTable, *, cost_names: Sequence[str]
    ) -> Evaluator | None:
        """This evaluator judged at ``table``'s rungs (``search.early_stopping``), its records
        holding the costs ``cost_names`` of ``TrialContext.costs``; or None (the default) when
        it cannot stop a candidate early. The search calls it once, when building the evaluator.
        """
        return None


@dataclass(frozen=True)
class EvaluatorContext:
    """What the search hands every evaluator factory (see :func:`register_evaluator`).

    ``train``: the run's ``train:`` section, with ``batch_size`` resolved (it defaults to
    ``data.batch_size``); ``num_workers``: DataLoader workers; ``teacher``: the uncompressed
    network to distil from (eval mode), if any; ``run_dir``: the run folder, where an evaluator may
    cache what it trains once (e.g. the supernet), or None for no cache; ``task``: what the
    network is trained and scored for (loss, distillation loss, metrics); ``teacher_metrics``:
    the teacher's metrics on the validation split, when known (the reference a compressed
    candidate is compared with).
    """

    data: DataBundle
    space: JointSearchSpace
    train: TrainConfig
    device: torch.device
    teacher: nn.Module | None = None
    num_workers: int = 0
    seed: int = 0
    run_dir: RunDir | None = None
    task: Task = field(default_factory=Classification)
    teacher_metrics: Mapping[str, float] | None = None

    def __post_init__(self) -> None:
        if self.train.batch_size is None:
            raise ValueError(
                "The 'train' parameter of EvaluatorContext must have its batch_size set (the "
                "run's train.batch_size, or data.batch_size when that is unset). Got None."
            )


EvaluatorFactory = Callable[..., Evaluator]
_EVALUATORS: Registry[EvaluatorFactory] = Registry("evaluator")


def register_evaluator(name: str) -> Callable[[EvaluatorFactory], EvaluatorFactory]:
    """Decorator: make ``factory(context: EvaluatorContext, **options) -> Evaluator`` available
    as ``evaluator: {name: <name>, options: {...}}`` in a run config. ``options`` are the
    config's ``evaluator.options``; a factory rejects unknown ones with a TypeError or
    ValueError, which the search reports as a config error."""
    return _EVALUATORS.register(name)


def create_evaluator(name: str, *, context: EvaluatorContext, **options: Any) -> Evaluator:
    """The evaluator registered as ``name``, built for ``context`` with ``options``."""
    return _EVALUATORS.get(name, where="The 'evaluator.name' field")(context, **options)


def list_evaluators(pattern: str = "*") -> list[str]:
    """Names accepted by :func:`create_evaluator`, sorted."""
    return _EVALUATORS.names(pattern)
