"""Built-in tasks: classification (top-1), regression (MSE) and semantic segmentation (mIoU)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..compression.distillation import kd_loss
from ._base import Task, register_task


@register_task("classification")
class Classification(Task):
    """Class logits ``(N, C)`` against class indices ``(N,)``: cross-entropy, top-1 accuracy;
    distillation is KL between temperature-softened distributions plus cross-entropy."""

    name = "classification"
    metrics = {"accuracy": "maximize"}
    primary = "accuracy"
    ranges = {"accuracy": (0.0, 1.0)}

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(outputs, targets)

    def distillation_loss(self, outputs, teacher_outputs, targets, *, alpha, temperature):
        return kd_loss(outputs, teacher_outputs, targets, alpha=alpha, temperature=temperature)

    def statistics(self, outputs: Tensor, targets: Tensor) -> dict[str, Any]:
        return {"correct": int((outputs.argmax(1) == targets).sum()), "count": targets.numel()}

    def compute(self, totals: Mapping[str, Any]) -> dict[str, float]:
        return {"accuracy": totals["correct"] / totals["count"]}


@register_task("regression")
class Regression(Task):
    """Real-valued outputs against targets of the same shape (a 1-D target is read as one
    output per sample): mean squared error; distillation matches the teacher's outputs."""

    name = "regression"
    metrics = {"mse": "minimize", "mae": "minimize", "r2": "maximize"}
    primary = "mse"
    ranges = {"mse": (0.0, math.inf), "mae": (0.0, math.inf), "r2": (-math.inf, 1.0)}

    @staticmethod
    def _aligned(outputs: Tensor, targets: Tensor) -> Tensor:
        targets = targets.to(outputs.dtype)
        return targets.reshape(outputs.shape) if targets.numel() == outputs.numel() else targets

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return F.mse_loss(outputs, self._aligned(outputs, targets))

    def statistics(self, outputs: Tensor, targets: Tensor) -> dict[str, Any]:
        y = self._aligned(outputs, targets)
        error = outputs - y
        return {
            "sse": float((error**2).sum()),
            "sae": float(error.abs().sum()),
            "sum": float(y.sum()),
            "sum_sq": float((y**2).sum()),
            "count": y.numel(),
        }

    def compute(self, totals: Mapping[str, Any]) -> dict[str, float]:
        n = totals["count"]
        variance = totals["sum_sq"] / n - (totals["sum"] / n) ** 2
        mse = totals["sse"] / n
        return {
            "mse": mse,
            "mae": totals["sae"] / n,
            "r2": 1.0 - mse / variance if variance > 0 else 0.0,
        }


@register_task("segmentation")
class Segmentation(Task):
    """Per-pixel class logits ``(N, C, H, W)`` against label maps ``(N, H, W)`` (pixels labelled
    ``ignore_index``, 255, are left out): cross-entropy, mean IoU over the classes present in
    prediction or label, pixel accuracy; distillation is per-pixel KL plus cross-entropy."""

    name = "segmentation"
    metrics = {"miou": "maximize", "pixel_accuracy": "maximize"}
    primary = "miou"
    ranges = {"miou": (0.0, 1.0), "pixel_accuracy": (0.0, 1.0)}
    ignore_index = 255

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(outputs, targets.long(), ignore_index=self.ignore_index)

    def distillation_loss(self, outputs, teacher_outputs, targets, *, alpha, temperature):
        # Per pixel: pixels become samples, so the KL term is on the scale of the CE term.
        channels = outputs.shape[1]
        flat = outputs.movedim(1, -1).reshape(-1, channels)
        teacher = teacher_outputs.movedim(1, -1).reshape(-1, channels)
        soft = F.kl_div(
            F.log_softmax(flat / temperature, dim=1),
            F.log_softmax(teacher.detach() / temperature, dim=1),
            reduction="batchmean",
            log_target=True,
        )
        return alpha * temperature**2 * soft + (1 - alpha) * self.loss(outputs, targets)

    def statistics(self, outputs: Tensor, targets: Tensor) -> dict[str, Any]:
        channels = outputs.shape[1]
        predicted = outputs.argmax(1).reshape(-1)
        labels = targets.long().reshape(-1)
        valid = labels != self.ignore_index
        index = labels[valid] * channels + predicted[valid]
        confusion = torch.bincount(index, minlength=channels * channels)
        return {"confusion": confusion.reshape(channels, channels).cpu().double()}

    def compute(self, totals: Mapping[str, Any]) -> dict[str, float]:
        confusion = totals["confusion"]
        hits = confusion.diag()
        union = confusion.sum(0) + confusion.sum(1) - hits
        present = union > 0
        miou = (hits[present] / union[present]).mean() if present.any() else torch.tensor(0.0)
        total = confusion.sum()
        return {
            "miou": float(miou),
            "pixel_accuracy": float(hits.sum() / total) if total > 0 else 0.0,
        }
