"""Training evaluator: the fp32 teacher once per run, then QAT + distillation per candidate."""

from __future__ import annotations

import copy
import math
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from itertools import islice
from typing import Any, ClassVar, Self

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn
from torch.utils.data import DataLoader

from ..compression.calibration import (
    observe_activations_,
    post_training_quantize_,
    recalibrate_batchnorm_,
)
from ..compression.feature_distillation import (
    FeatureDistiller,
    feature_distiller,
    match_layers,
)
from ..compression.quantization import enable_lsq_
from ..compression.sparsity import GradualSparsity
from ..core.models import OmitAtDefault
from ..data import DataBundle, make_loaders
from ..spaces import Candidate
from ..tasks import Classification, Task, to_device
from ._base import CandidateError, Evaluator, EvaluatorContext, TaskMetrics, register_evaluator


class FeatureKDConfig(BaseModel):
    """``train.feature_kd``: feature distillation (FitNets) of the candidate's fine-tune."""

    model_config = ConfigDict(extra="forbid")

    layers: list[str] = Field(
        min_length=1, description="globs of module names, matched in the teacher"
    )
    weight: float = Field(default=1.0, gt=0, allow_inf_nan=False)


class TrainConfig(OmitAtDefault):
    """How a network is trained (a run's ``teacher:`` and ``train:`` sections): the teacher from
    scratch, a candidate by QAT + distillation."""

    model_config = ConfigDict(extra="forbid")
    # Fields that came later, left out of every dump while at their defaults, so configs, run
    # fingerprints and the teacher's cache key stay those of runs made before they existed.
    omit_at_default: ClassVar[tuple[str, ...]] = (
        "feature_kd",
        "lsq",
        "ptq_fallback",
        "bn_batches",
    )

    epochs: int = Field(default=3, ge=0)
    lr: float = Field(default=3e-3, gt=0)
    weight_decay: float = Field(default=1e-4, ge=0)
    batch_size: int | None = Field(default=None, gt=0, description="defaults to data.batch_size")
    kd_alpha: float = Field(default=0.7, ge=0, le=1, description="weight of the distillation term")
    kd_temperature: float = Field(default=4.0, gt=0)
    device: str = Field(default="auto", description="auto | cpu | cuda | cuda:N")
    feature_kd: FeatureKDConfig | None = None
    lsq: bool = Field(
        default=False,
        description="train only: learned step size (LSQ) for uniform weight scales",
    )
    ptq_fallback: bool = Field(
        default=False,
        description="train only: also score each candidate post-training quantized (no "
        "training) and keep that model when the fine-tune ends worse",
    )
    bn_batches: int = Field(
        default=64,
        ge=0,
        description="train only: training batches (at most; the whole split when it has fewer) "
        "BatchNorm statistics are re-estimated on after the fine-tune (0: keep the running "
        "averages)",
    )

    @field_validator("device")
    @classmethod
    def _known_device(cls, device: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", device):
            raise ValueError(f"must be auto, cpu, cuda, cuda:N or mps. Got {device!r}")
        return device


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"The 'train.device' field asks for {name!r} but CUDA is not available.")
    return device


def train_epochwise(
    model: nn.Module,
    loader: Iterable,
    *,
    epochs: int,
    lr: float,
    weight_decay: float,
    device: torch.device,
    teacher: nn.Module | None = None,
    kd_alpha: float = 0.0,
    kd_temperature: float = 4.0,
    task: Task | None = None,
    features: FeatureDistiller | None = None,
    sparsity_importance: str = "magnitude",
) -> Iterator[int]:
    """AdamW + one cosine schedule over all ``epochs``, with KD from ``teacher`` when given;
    yields the number of epochs done after each epoch (so a caller can evaluate between epochs,
    e.g. early stopping, without restarting the schedule or the AdamW moments). ``task``: the
    losses (default: classification). ``features``: feature distillation from ``teacher`` (its
    adapters train with ``model``), its hooks active while this runs. The sparse layers of
    ``model`` are pruned gradually over the steps (:class:`GradualSparsity`, by
    ``sparsity_importance``) and end at exactly their target sparsity, also when the loop is
    left early.

    Raises CandidateError on a non-finite loss.
    """
    task = task or Classification()
    if features is not None and teacher is None:
        raise ValueError(
            "The 'features' parameter of train_epochwise needs a 'teacher' to distil from."
        )
    model.to(device).train()
    if teacher is not None:
        teacher.to(device).eval()
    params = list(model.parameters())
    if features is not None:
        params += features.parameters()
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    steps = max(1, epochs * len(loader))
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    distil = {"teacher": teacher, "kd_alpha": kd_alpha, "kd_temperature": kd_temperature}
    if features is not None:
        distil["features"] = features
    gradual = GradualSparsity(
        model, total_steps=epochs * len(loader), importance=sparsity_importance
    )
    done = 0
    try:
        for epoch in range(epochs):
            for step, batch in enumerate(loader):
                x, y = task.split(batch)
                x, y = to_device(x, device), to_device(y, device)
                where = f"training loss at epoch {epoch}, step {step}"
                step_settings = {"optimizer": optimizer, "schedule": schedule, "where": where}
                train_step_(model, x, y, task=task, **step_settings, **distil)
                done += 1
                gradual.after_step(done)
            yield epoch + 1
    finally:
        gradual.finish()


def train_step_(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    teacher: nn.Module | None,
    kd_alpha: float,
    kd_temperature: float,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    where: str,
    task: Task | None = None,
    features: FeatureDistiller | None = None,
) -> None:
    """One optimizer step on a batch: the task's distillation loss against ``teacher`` when it
    is given and ``kd_alpha > 0``, its plain loss otherwise (``task`` default: classification),
    plus the feature distillation loss of ``features`` (whose hooks must be active) when given.
    Raises CandidateError on a non-finite loss (``where`` says which, e.g. "training loss at
    epoch 0, step 3")."""
    task = task or Classification()
    outputs = model(x)
    if teacher is not None and (kd_alpha > 0 or features is not None):
        with torch.no_grad():
            teacher_outputs = teacher(x)
    if teacher is not None and kd_alpha > 0:
        loss = task.distillation_loss(
            outputs, teacher_outputs, y, alpha=kd_alpha, temperature=kd_temperature
        )
    else:
        loss = task.loss(outputs, y)
    if features is not None:
        loss = loss + features.loss()
    if not torch.isfinite(loss):
        raise CandidateError(f"non-finite {where}")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    schedule.step()


def train_epochs(model: nn.Module, loader: Iterable, *, epochs: int, **kwargs) -> int:
    """All epochs of :func:`train_epochwise` at once. Returns the number of epochs run."""
    for _ in train_epochwise(model, loader, epochs=epochs, **kwargs):
        pass
    return epochs


@contextmanager
def candidate_failures() -> Iterator[None]:
    """Report what ends one candidate's evaluation but not the search as a CandidateError: GPU
    memory running out inside the block (the cache is emptied for the next candidate)."""
    try:
        yield
    except torch.cuda.OutOfMemoryError as err:
        torch.cuda.empty_cache()
        raise CandidateError(f"out of GPU memory: {err}") from err


def validation_metrics(
    model: nn.Module, loader: Iterable, *, device: torch.device, task: Task | None = None
) -> dict[str, float]:
    """``task.evaluate`` (default: classification), with a non-finite validation loss a
    CandidateError."""
    metrics = (task or Classification()).evaluate(model, loader, device=device)
    if not math.isfinite(metrics["loss"]):
        raise CandidateError("non-finite validation loss")
    return metrics


def evaluate_accuracy(
    model: nn.Module, loader: Iterable, *, device: torch.device
) -> tuple[float, float]:
    """(top-1 accuracy, mean cross-entropy) of a classifier ``model`` on ``loader``."""
    metrics = Classification().evaluate(model, loader, device=device)
    return metrics["accuracy"], metrics["loss"]


PTQ_CALIB_BATCHES = 8  # training batches the post-training quantized start is calibrated on


@dataclass(frozen=True)
class PTQStart:
    """A candidate post-training quantized before its fine-tune: its validation ``metrics``
    (with ``loss``) and its ``state`` (see :meth:`TrainEvaluator.ptq_start`)."""

    metrics: Mapping[str, float]
    state: Mapping[str, torch.Tensor]

    def restore_(self, model: nn.Module) -> dict[str, float]:
        """Load this state into ``model``; a copy of its metrics."""
        model.load_state_dict(self.state)
        return dict(self.metrics)


@torch.no_grad()
def recalibrate_bn_(
    model: nn.Module,
    loader: Iterable,
    *,
    batches: int,
    device: torch.device,
    task: Task | None = None,
    observe_ranges: bool = True,
) -> int:
    """Re-estimate every BatchNorm's running statistics on ``batches`` training batches.

    Inherited running stats belong to a larger network (the teacher's or the supernet's
    activations), and the running averages of a fine-tune lag its weights; a pruned, quantized
    or fine-tuned network has its own. The stats are reset and replaced by the exact average
    over the batches (``momentum=None``), in train mode without gradients; with
    ``observe_ranges``, fake-quant layers observe their input ranges on the same batches (else
    they keep theirs). Ends in eval mode. Returns the
    number of batches used (fewer if the loader is shorter). ``task`` reads the batches
    (default: classification's ``(x, y)`` or a dict batch).
    """
    task = task or Classification()
    if isinstance(batches, bool) or not isinstance(batches, int) or batches < 1:
        raise ValueError(
            "The 'batches' parameter of recalibrate_bn_ must be an int >= 1. "
            f"Got {batches!r} instead."
        )
    inputs = (to_device(task.split(batch)[0], device) for batch in islice(loader, batches))
    return recalibrate_batchnorm_(model.to(device), inputs, observe_ranges=observe_ranges)


class TrainEvaluator(Evaluator):
    """QAT fine-tuning of a compressed candidate, distilled from the uncompressed teacher."""

    def __init__(
        self,
        *,
        data: DataBundle,
        epochs: int,
        lr: float,
        weight_decay: float,
        batch_size: int,
        num_workers: int = 0,
        kd_alpha: float = 0.7,
        kd_temperature: float = 4.0,
        device: torch.device,
        teacher: nn.Module | None = None,
        seed: int = 0,
        task: Task | None = None,
        feature_kd: FeatureKDConfig | None = None,
        lsq: bool = False,
        sparsity_importance: str = "magnitude",
        ptq_fallback: bool = False,
        bn_batches: int = 0,
        teacher_metrics: Mapping[str, float] | None = None,
    ) -> None:
        self.data = data
        self.teacher_metrics = teacher_metrics
        self.bn_batches = bn_batches
        self.lsq = lsq
        # LSQ learns the weight steps: a post-training quantized state has none to keep.
        self.ptq_fallback = ptq_fallback and not lsq
        self.sparsity_importance = sparsity_importance
        self.task = task or Classification()
        self.epochs, self.lr, self.weight_decay = epochs, lr, weight_decay
        self.batch_size, self.num_workers = batch_size, num_workers
        self.kd_alpha, self.kd_temperature = kd_alpha, kd_temperature
        self.device = device
        self.teacher = teacher
        self.seed = seed
        if teacher is not None:
            teacher.to(device).eval()
        self.feature_kd = feature_kd
        if feature_kd is not None:
            if teacher is None:
                raise ValueError(
                    "The 'train.feature_kd' field needs a teacher to distil from; this "
                    "evaluator has none."
                )
            match_layers(teacher, feature_kd.layers)  # a bad glob fails here, not per trial

    @classmethod
    def from_context(
        cls, context: EvaluatorContext, *, epochs: int | None = None, **extra: Any
    ) -> Self:
        """The evaluator a run's ``train`` section describes (``epochs`` overrides its count;
        ``extra``: the keyword arguments a subclass adds, e.g. early stopping's ``table``)."""
        train = context.train
        # Read field by field: a dump leaves out the fields at their defaults (OmitAtDefault).
        settings = {
            key: getattr(train, key)
            for key in (
                "lr",
                "weight_decay",
                "batch_size",
                "kd_alpha",
                "kd_temperature",
                "lsq",
                "ptq_fallback",
                "bn_batches",
            )
        }
        return cls(
            data=context.data,
            epochs=train.epochs if epochs is None else epochs,
            num_workers=context.num_workers,
            device=context.device,
            teacher=context.teacher,
            seed=context.seed,
            task=context.task,
            feature_kd=train.feature_kd,
            sparsity_importance=context.space.config.sparsity_importance,
            teacher_metrics=context.teacher_metrics,
            **settings,
            **extra,
        )

    def evaluate(self, model: nn.Module, candidate: Candidate) -> TaskMetrics:
        return self.fine_tune(model)

    def ptq_start(self, model: nn.Module, *, always: bool = False) -> PTQStart | None:
        """With ``ptq_fallback`` (or ``always``): ``model`` post-training quantized on
        ``PTQ_CALIB_BATCHES`` training batches, scored on the validation split; else None.
        Two calibrations are tried and the better kept: the activation ranges alone, as QAT's
        observer sets them (:func:`~autocompress.compression.calibration.observe_activations_`;
        the weights and BatchNorm statistics as inherited, which for an unpruned checkpoint were
        estimated on more data than a few batches), and ``post_training_quantize_`` (BatchNorm
        re-estimated, as a pruned network needs, weights clipped and ranges set by MSE, biases
        corrected). ``model``, its mode and the random number generators are left as they
        were, so the fine-tune that follows is the one it would have been.

        A well-trained checkpoint at mild compression loses nothing to PTQ, while a few epochs
        of QAT on a small training split can cost it a point or two: the fine-tune then keeps
        the post-training quantized model instead (:meth:`fine_tune`)."""
        if not (self.ptq_fallback or always):
            return None
        before = copy.deepcopy(model.state_dict())
        train_loader, val_loader = make_loaders(
            self.data, batch_size=self.batch_size, num_workers=self.num_workers, seed=self.seed
        )
        model.to(self.device)
        best: PTQStart | None = None
        try:
            with torch.random.fork_rng(devices=[]), candidate_failures():
                inputs = [
                    to_device(self.task.split(batch)[0], self.device)
                    for batch in islice(train_loader, PTQ_CALIB_BATCHES)
                ]
                for full in (False, True):
                    model.load_state_dict(before)
                    if full:
                        post_training_quantize_(model, inputs, seed=self.seed)
                    else:
                        observe_activations_(model, inputs)
                    metrics = validation_metrics(
                        model, val_loader, device=self.device, task=self.task
                    )
                    if best is None or self.better(metrics, than=best.metrics):
                        best = PTQStart(metrics=metrics, state=copy.deepcopy(model.state_dict()))
        except CandidateError:  # nothing to fall back to: the fine-tune says what is wrong
            return None
        finally:
            model.load_state_dict(before)
            model.train()
        return best

    def fine_tune(
        self,
        model: nn.Module,
        *,
        after_epoch: Callable[[int, DataLoader], None] | None = None,
        start: PTQStart | None = None,
    ) -> TaskMetrics:
        """Train ``model`` for ``epochs`` and score it on the validation split.

        ``after_epoch(epochs_done, val_loader)`` runs between epochs, inside the one schedule
        (e.g. early stopping's rung checks); it must leave ``model`` in train mode and may raise
        to end the fine-tune. ``start``: the post-training quantized model (default: made here
        with ``ptq_fallback``); ``model`` ends as that one when it scores better than the
        fine-tuned one (``TaskMetrics.kept_ptq``). A start that already scores at least as well
        as the teacher (``teacher_metrics``) is kept without a fine-tune: there is nothing left
        for it to recover, and on a mild candidate the fine-tune costs as much as any other."""
        if start is None:
            start = self.ptq_start(model)
        if start is not None and self.lossless(start.metrics):
            metrics = start.restore_(model)
            return TaskMetrics(metrics=metrics, loss=metrics.pop("loss"), epochs=0, kept_ptq=True)
        # Loaders are made per call: a shared iterator would not survive --n-jobs threads.
        train_loader, val_loader = make_loaders(
            self.data, batch_size=self.batch_size, num_workers=self.num_workers, seed=self.seed
        )
        if self.lsq:  # before the optimizer is made: the steps are among its parameters
            enable_lsq_(model)
        began = time.perf_counter()
        with candidate_failures():
            with self._feature_distiller(model) as features:
                for epoch in train_epochwise(
                    model,
                    train_loader,
                    epochs=self.epochs,
                    lr=self.lr,
                    weight_decay=self.weight_decay,
                    device=self.device,
                    teacher=self.teacher,
                    kd_alpha=self.kd_alpha,
                    kd_temperature=self.kd_temperature,
                    task=self.task,
                    features=features,
                    sparsity_importance=self.sparsity_importance,
                ):
                    if after_epoch is not None:
                        after_epoch(epoch, val_loader)
            self.recalibrate_bn(model, train_loader)
            metrics = validation_metrics(model, val_loader, device=self.device, task=self.task)
        seconds = time.perf_counter() - began
        kept = start is not None and self.better(start.metrics, than=metrics)
        if kept:
            metrics = start.restore_(model)
        loss = metrics.pop("loss")
        return TaskMetrics(
            metrics=metrics, loss=loss, epochs=self.epochs, train_seconds=seconds, kept_ptq=kept
        )

    def recalibrate_bn(self, model: nn.Module, loader: Iterable) -> None:
        """Re-estimate ``model``'s BatchNorm statistics on ``bn_batches`` training batches,
        for the weights the fine-tune ended with. The running averages lag them, by a lot with
        a low momentum: torchvision's MobileNetV3 (0.01) would keep mostly the teacher's
        statistics after a short fine-tune of a pruned network."""
        norms = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
        if norms and self.bn_batches and self.epochs:
            recalibrate_bn_(
                model,
                loader,
                batches=self.bn_batches,
                device=self.device,
                task=self.task,
                observe_ranges=False,  # QAT learned them
            )

    def lossless(self, metrics: Mapping[str, float]) -> bool:
        """Whether ``metrics`` score at least the teacher's (False when that is unknown)."""
        reference = self.teacher_metrics or {}
        if self.task.score.name not in reference:
            return False
        return not self.better(reference, than=metrics)

    def better(self, metrics: Mapping[str, float], *, than: Mapping[str, float]) -> bool:
        """Whether ``metrics`` beat ``than`` on the task's primary metric (ties do not)."""
        score = self.task.score
        return score.maximised(metrics[score.name]) > score.maximised(than[score.name])

    def _feature_distiller(self, model: nn.Module) -> AbstractContextManager:
        """The fine-tune's feature distillation (``train.feature_kd``), fresh adapters and
        all; a context that does nothing when it is off."""
        if self.feature_kd is None or self.teacher is None:
            return nullcontext()
        example = torch.zeros(1, *self.data.input_shape, device=self.device)
        try:
            return feature_distiller(
                model.to(self.device),
                self.teacher,
                self.feature_kd.layers,
                weight=self.feature_kd.weight,
                example=example,
            )
        except ValueError as err:
            raise CandidateError(f"feature distillation: {err}") from err


@register_evaluator("train")
def train_evaluator(context: EvaluatorContext) -> TrainEvaluator:
    """``evaluator: {name: train}`` (the default): QAT + distillation for ``train.epochs``; it
    takes no options, the ``train:`` section configures it."""
    return TrainEvaluator.from_context(context)
