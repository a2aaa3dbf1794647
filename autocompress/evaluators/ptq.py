"""Post-training quantization evaluator: calibrate the candidate as the search built it (teacher
weights inherited, pruned, fake-quant layers) on a few training batches, optionally match the
teacher's outputs on those batches for a few steps, then score it. No fine-tune on the training
split: seconds per candidate."""

from __future__ import annotations

import time
from itertools import cycle, islice
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from ..compression.calibration import (
    CALIBRATIONS,
    post_training_quantize_,
    recalibrate_batchnorm_,
)
from ..compression.sparsity import apply_masks_, sparse_layers, sparsify_, taylor_scores
from ..data import DataBundle, make_loaders
from ..spaces import Candidate
from ..tasks import Classification, Task, to_device
from ._base import Evaluator, EvaluatorContext, TaskMetrics, register_evaluator
from .train import candidate_failures, train_step_, validation_metrics


class PTQOptions(BaseModel):
    """``evaluator.options`` of ``evaluator: {name: ptq}``."""

    model_config = ConfigDict(extra="forbid")

    calib_batches: int = Field(default=8, ge=1, description="training batches calibrated on")
    calibration: Literal["minmax", "percentile", "mse"] = "mse"
    percentile: float = Field(default=99.99, gt=50, le=100)
    bias_correction: bool = True
    adaround_iterations: int = Field(
        default=0, ge=0, description="AdaRound optimizer steps per layer (0: round to nearest)"
    )
    distill_steps: int = Field(
        default=0,
        ge=0,
        description="optimizer steps matching the teacher's outputs on the calibration batches "
        "after calibration (0: none)",
    )
    distill_lr: float | None = Field(default=None, gt=0, description="default: train.lr")
    batch_size: int | None = Field(default=None, gt=0, description="default: train.batch_size")


def ptq_options(options: dict[str, Any]) -> PTQOptions:
    """``options`` validated, with errors that name the config field (``evaluator.options.X``)."""
    try:
        return PTQOptions.model_validate(options)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(part) for part in ("evaluator", "options", *first["loc"]))
        if first["type"] == "extra_forbidden":
            raise ValueError(
                f"The {field!r} field is not an option of the ptq evaluator, whose options are "
                f"{', '.join(PTQOptions.model_fields)}."
            ) from None
        if first["loc"] == ("calibration",):
            rule = f"must be one of {', '.join(CALIBRATIONS)}"
        else:
            rule = f"is invalid ({first['msg']})"
        raise ValueError(
            f"The {field!r} field {rule}. Got {first.get('input')!r} instead."
        ) from None


class PTQEvaluator(Evaluator):
    """Scores a candidate after post-training quantization
    (:func:`~autocompress.compression.calibration.post_training_quantize_` on ``calib_batches``
    training batches, seeded like the train evaluator's loader) with the task's metrics on the
    validation split. The calibrated model is what the search saves and exports."""

    def __init__(
        self,
        *,
        data: DataBundle,
        batch_size: int,
        device: torch.device,
        options: PTQOptions | None = None,
        num_workers: int = 0,
        seed: int = 0,
        task: Task | None = None,
        sparsity_importance: str = "magnitude",
        teacher: nn.Module | None = None,
        lr: float = 1e-3,
        kd_temperature: float = 4.0,
    ) -> None:
        self.data = data
        self.teacher, self.lr, self.kd_temperature = teacher, lr, kd_temperature
        if teacher is not None:
            teacher.to(device).eval()
        self.sparsity_importance = sparsity_importance
        self.batch_size, self.num_workers = batch_size, num_workers
        self.options = options or PTQOptions()
        self.device = device
        self.seed = seed
        self.task = task or Classification()
        if self.options.distill_steps and teacher is None:
            raise ValueError(
                "The 'evaluator.options.distill_steps' field needs the teacher's outputs to "
                f"match; this run has no teacher. Got {self.options.distill_steps} instead of 0."
            )

    def evaluate(self, model: nn.Module, candidate: Candidate) -> TaskMetrics:
        options = self.options
        # Loaders are made per call: a shared iterator would not survive --n-jobs threads.
        train_loader, val_loader = make_loaders(
            self.data, batch_size=self.batch_size, num_workers=self.num_workers, seed=self.seed
        )
        start = time.perf_counter()
        with candidate_failures():
            batches = [
                tuple(to_device(part, self.device) for part in self.task.split(batch))
                for batch in islice(train_loader, options.calib_batches)
            ]
            inputs = [x for x, _ in batches]
            self._sparsify(model.to(self.device), batches)
            post_training_quantize_(
                model.to(self.device),
                inputs,
                method=options.calibration,
                percentile=options.percentile,
                # The distillation steps move every layer's mean output, the biases included.
                bias_correction=options.bias_correction and not options.distill_steps,
                adaround_iterations=options.adaround_iterations,
                seed=self.seed,
            )
            if options.distill_steps:
                self._distill(model, batches)
            metrics = validation_metrics(model, val_loader, device=self.device, task=self.task)
        loss = metrics.pop("loss")
        return TaskMetrics(
            metrics=metrics, loss=loss, epochs=0, train_seconds=time.perf_counter() - start
        )

    def _distill(self, model: nn.Module, batches: list) -> None:
        """``distill_steps`` AdamW steps (cosine schedule, no weight decay) that move the
        weights so the quantized outputs match the teacher's on the calibration batches, in
        turn: the outputs only, no labels, as a network-wise PTQ reconstruction. The whole model
        stays in eval mode, so the calibrated activation ranges, the codebooks and the
        BatchNorm statistics hold while the weights learn through the quantizers'
        straight-through gradients; the statistics are then re-estimated on the moved weights
        and the sparse layers' dropped weights zeroed again."""
        steps = self.options.distill_steps
        model.eval()
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=self.options.distill_lr or self.lr, weight_decay=0.0
        )
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
        for step, (x, y) in zip(range(steps), cycle(batches), strict=False):
            train_step_(
                model,
                x,
                y,
                teacher=self.teacher,
                kd_alpha=1.0,
                kd_temperature=self.kd_temperature,
                optimizer=optimizer,
                schedule=schedule,
                where=f"distillation loss at step {step}",
                task=self.task,
            )
        optimizer.zero_grad(set_to_none=True)
        recalibrate_batchnorm_(model, [x for x, _ in batches])
        apply_masks_(model)

    def _sparsify(self, model: nn.Module, batches: list) -> None:
        """One-shot sparsity before calibration (no training to prune gradually in): the masks
        at their targets, by Taylor scores of the task loss on the calibration batches when
        ``space.sparsity_importance`` is taylor, and the masked weights zeroed, so that the
        weight ranges calibrated are those of the sparse weights."""
        layers = sparse_layers(model)
        if layers and self.sparsity_importance == "taylor":
            training = model.training
            model.eval()
            scores = taylor_scores(
                model, batches, lambda m, b: self.task.loss(m(b[0]), b[1]), names=list(layers)
            )
            model.train(training)
            sparsify_(model, {n: m.sparsity for n, m in layers.items()}, scores=scores, zero=True)
        apply_masks_(model)


@register_evaluator("ptq")
def ptq_evaluator(context: EvaluatorContext, **options: Any) -> PTQEvaluator:
    """``evaluator: {name: ptq, options: {...}}``: post-training quantization, no training
    (``options``: :class:`PTQOptions`)."""
    checked = ptq_options(options)
    return PTQEvaluator(
        data=context.data,
        batch_size=checked.batch_size or context.train.batch_size,
        device=context.device,
        options=checked,
        num_workers=context.num_workers,
        seed=context.seed,
        task=context.task,
        sparsity_importance=context.space.config.sparsity_importance,
        teacher=context.teacher,
        lr=context.train.lr,
        kd_temperature=context.train.kd_temperature,
    )
