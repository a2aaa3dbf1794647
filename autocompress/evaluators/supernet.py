"""Weight-sharing evaluator (Once-for-All style): train one supernet, score candidates cheaply.

The supernet is the family's largest architecture (the space's teacher point). Every other point
of the space is a sub-network of it with matching parameter names, so weights are shared
generically, with no per-family code: a sub-network is built from its ``arch``, takes its slices
of the supernet (:func:`~autocompress.compression.inherit.inherit_weights_`: leading channels,
kernel centres), runs forward/backward on its own, and its gradients are added back into the
same slices (:func:`~autocompress.compression.inherit.scatter_grads_`, the exact adjoint).

Training follows the *sandwich rule* (BigNAS / slimmable networks): every step trains the
largest network, the smallest, and ``n_random`` random sub-networks on the same batch, the
sub-networks optionally distilled in place from the largest's logits, and sums their gradients
into one optimizer step. Compression is not part of supernet training; it is applied when a
candidate is scored:

inherit the supernet's weights -> prune -> fake-quant (``build_compressed``) -> recalibrate
BatchNorm statistics (and activation ranges) on a few training batches -> a short QAT fine-tune
(``qat_steps``, distilled from the supernet) -> validation accuracy.

The supernet is trained once per run and cached on disk (JSON spec + state_dict, see
``compression.serialization``); :func:`rank_correlation` measures how well its accuracies rank
candidates against full fine-tuning. In a run config: ``evaluator: {name: supernet, options:
{supernet: {...SupernetConfig fields}, qat_steps: 20, calib_batches: 8, ...}}``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from ..compression.apply import build_compressed
from ..compression.inherit import inherit_weights_, scatter_grads_
from ..compression.serialization import SPEC_FILE, load_model, read_spec, save_model
from ..data import DataBundle, make_loaders
from ..spaces import Candidate, JointSearchSpace, build_model
from ..spaces.sampling import sample_arch, smallest_arch
from ..tasks import Classification, Task, to_device
from ._base import CandidateError, Evaluator, EvaluatorContext, TaskMetrics, register_evaluator
from .train import candidate_failures, recalibrate_bn_, train_step_, validation_metrics

__all__ = [
    "SUPERNET_CONFIG_VERSION",
    "RankCorrelation",
    "SupernetConfig",
    "SupernetEvaluator",
    "get_supernet",
    "rank_correlation",
    "supernet_fingerprint",
    "train_supernet",
]

logger = logging.getLogger(__name__)

SUPERNET_CONFIG_VERSION = 1
_FINAL_CALIB_BATCHES = 8  # BN recalibration of the trained supernet and its smallest sub-network


@dataclass(frozen=True)
class SupernetConfig:
    """How the supernet is trained; all of it is part of the cache fingerprint.

    ``epochs``/``lr``/``weight_decay``/``batch_size``: AdamW with one cosine schedule over all
    steps. ``n_random``: random sub-networks per step on top of the largest and the smallest
    (the sandwich rule). ``kd_alpha``/``kd_temperature``: in-place distillation of the
    sub-networks from the largest network's logits on the same batch (``kd_alpha=0``: labels
    only). ``seed``: initialisation, architecture sampling and batch order.
    """

    epochs: int = 10
    lr: float = 0.003
    weight_decay: float = 0.0
    batch_size: int = 64
    n_random: int = 2
    kd_alpha: float = 0.5
    kd_temperature: float = 1.0
    seed: int = 0
    version: int = SUPERNET_CONFIG_VERSION

    def __post_init__(self) -> None:
        for name, minimum in (("epochs", 1), ("batch_size", 1), ("n_random", 0), ("seed", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(
                    f"The '{name}' parameter of SupernetConfig must be an int >= {minimum}. "
                    f"Got {value!r} instead."
                )
        checks: tuple[tuple[str, Callable[[float], bool], str], ...] = (
            ("lr", lambda v: v > 0, "> 0"),
            ("weight_decay", lambda v: v >= 0, ">= 0"),
            ("kd_alpha", lambda v: 0 <= v <= 1, "in [0, 1]"),
            ("kd_temperature", lambda v: v > 0, "> 0"),
        )
        for name, ok, rule in checks:
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or not ok(value)
            ):
                raise ValueError(
                    f"The '{name}' parameter of SupernetConfig must be a finite number {rule}. "
                    f"Got {value!r} instead."
                )
        if self.version != SUPERNET_CONFIG_VERSION:
            raise ValueError(
                f"The 'version' parameter of SupernetConfig must be {SUPERNET_CONFIG_VERSION}. "
                f"Got {self.version!r} instead."
            )


# --- supernet training -------------------------------------------------------------------------


def train_supernet(
    space: JointSearchSpace,
    *,
    data: DataBundle,
    config: SupernetConfig,
    device: torch.device,
    num_workers: int = 0,
    task: Task | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train the weight-sharing supernet of ``space`` with the sandwich rule (module docstring)
    for ``task`` (default: classification).

    Returns the supernet (the float largest network, BatchNorm recalibrated on the final weights,
    in eval mode) and its metrics: the task's primary metric on the validation split for the
    largest network and the smallest sub-network (also recalibrated; ``largest_<metric>``,
    ``smallest_<metric>``), training time, parameter count.
    The caller's global RNG is left untouched; the result depends only on the arguments.
    """
    task = task or Classification()
    family = space.family
    shapes = {"num_classes": data.num_classes, "input_shape": tuple(data.input_shape)}
    bottom = smallest_arch(family)
    rng = np.random.default_rng(config.seed)
    train_loader, val_loader = make_loaders(
        data, batch_size=config.batch_size, num_workers=num_workers, seed=config.seed
    )
    start = time.perf_counter()
    # Sub-networks are rebuilt every step, and building initialises weights from torch's global
    # RNG (inherit_weights_ then overwrites them all); fork it so the caller's stream is unmoved.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        supernet = build_model(space.teacher(), **shapes).to(device).train()
        optimizer = torch.optim.AdamW(
            supernet.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        steps = max(1, config.epochs * len(train_loader))
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
        for epoch in range(config.epochs):
            for step, batch in enumerate(train_loader):
                x, y = task.split(batch)
                x, y = to_device(x, device), to_device(y, device)
                optimizer.zero_grad(set_to_none=True)
                logits = supernet(x)
                _backward(task.loss(logits, y), where=f"epoch {epoch}, step {step}")
                state = supernet.state_dict()  # detached views: the current shared weights
                archs = [bottom] + [sample_arch(family, rng=rng) for _ in range(config.n_random)]
                for arch in archs:
                    sub = family.build(arch, **shapes).to(device).train()
                    inherit_weights_(sub, state)
                    sub_logits = sub(x)
                    if config.kd_alpha > 0:
                        loss = task.distillation_loss(
                            sub_logits,
                            logits.detach(),
                            y,
                            alpha=config.kd_alpha,
                            temperature=config.kd_temperature,
                        )
                    else:
                        loss = task.loss(sub_logits, y)
                    _backward(loss, where=f"epoch {epoch}, step {step}, sub-network {arch}")
                    scatter_grads_(supernet, sub)
                optimizer.step()
                schedule.step()
        # The running stats were tracked while the weights moved fast; re-estimate them on the
        # final weights, as for every sub-network (the supernet is also the KD teacher).
        calib = {"batches": _FINAL_CALIB_BATCHES, "device": device, "task": task}
        recalibrate_bn_(supernet, train_loader, **calib)
        largest = task.evaluate(supernet, val_loader, device=device)[task.primary]
        smallest = family.build(bottom, **shapes).to(device)
        inherit_weights_(smallest, supernet.state_dict())
        recalibrate_bn_(smallest, train_loader, **calib)
        smallest_score = task.evaluate(smallest, val_loader, device=device)[task.primary]
    metrics = {
        f"largest_{task.primary}": largest,
        f"smallest_{task.primary}": smallest_score,
        "train_seconds": time.perf_counter() - start,
        "params": sum(p.numel() for p in supernet.parameters()),
    }
    return supernet, metrics


def _backward(loss: torch.Tensor, *, where: str) -> None:
    if not torch.isfinite(loss):
        raise RuntimeError(f"non-finite supernet training loss at {where}")
    loss.backward()


def supernet_fingerprint(
    space: JointSearchSpace,
    *,
    data: DataBundle,
    config: SupernetConfig,
    extra: Mapping[str, Any] | None = None,
) -> str:
    """What the cached supernet depends on: family and its knob choices, the dataset's name and
    shapes, the training config, and ``extra`` (e.g. the run's data config, which the bundle
    alone does not fully identify)."""
    relevant = {
        "family": space.family.name,
        "space": space.family.space.model_dump(mode="json"),
        "data": {
            "name": data.name,
            "num_classes": data.num_classes,
            "input_shape": list(data.input_shape),
            "train": len(data.train),
            "val": len(data.val),
        },
        "config": asdict(config),
        "extra": dict(extra or {}),
    }
    text = json.dumps(relevant, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def get_supernet(
    space: JointSearchSpace,
    *,
    data: DataBundle,
    config: SupernetConfig,
    directory: Path,
    device: torch.device,
    num_workers: int = 0,
    extra: Mapping[str, Any] | None = None,
    task: Task | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Load the supernet cached in ``directory`` or train and save it there (for ``task``,
    default classification).

    The cache is a JSON spec + state_dict (``compression.serialization``; loaded with
    ``weights_only=True``, never a pickled module). A cache whose fingerprint (see
    :func:`supernet_fingerprint`) differs is retrained and overwritten. Returns (supernet in
    eval mode, its metrics).
    """
    task = task or Classification()
    if not isinstance(task, Classification):  # classification caches predate tasks
        extra = {**(extra or {}), "task": type(task).__qualname__}
    fingerprint = supernet_fingerprint(space, data=data, config=config, extra=extra)
    if (directory / SPEC_FILE).is_file():
        if read_spec(directory)["metrics"].get("fingerprint") == fingerprint:
            model, spec = load_model(directory, map_location=device)
            return model.to(device).eval(), spec["metrics"]
        logger.warning("Cached supernet in %s does not match this setup: retraining.", directory)
    supernet, metrics = train_supernet(
        space, data=data, config=config, device=device, num_workers=num_workers, task=task
    )
    metrics = {**metrics, "fingerprint": fingerprint, "config": asdict(config)}
    save_model(
        directory,
        supernet,
        candidate=space.teacher(),
        num_classes=data.num_classes,
        input_shape=data.input_shape,
        metrics=metrics,
    )
    return supernet, metrics


# --- scoring a candidate -----------------------------------------------------------------------


class SupernetEvaluator(Evaluator):
    """Scores a candidate with the supernet's weights instead of a full fine-tune.

    ``evaluate(model, candidate)`` rebuilds the candidate from the supernet's weights
    (``build_compressed`` with ``teacher_state`` = the supernet's state: inherit, prune, fake-
    quant), recalibrates BatchNorm and activation ranges on ``calib_batches`` training batches,
    fine-tunes for ``qat_steps`` steps (AdamW, cosine; distilled from the supernet when
    ``kd_alpha > 0``) and measures validation accuracy. ``model`` must be the candidate's
    compressed network (as the search builds it, so with the same shapes); its weights are
    replaced by the scored network's, so what the search saves is what was scored. Thread-safe:
    the supernet is only read (eval mode, no gradients).
    """

    def __init__(
        self,
        *,
        supernet: nn.Module,
        data: DataBundle,
        device: torch.device,
        calib_batches: int = 8,
        qat_steps: int = 20,
        lr: float = 0.001,
        weight_decay: float = 0.0,
        batch_size: int = 64,
        num_workers: int = 0,
        kd_alpha: float = 0.5,
        kd_temperature: float = 4.0,
        seed: int = 0,
        task: Task | None = None,
    ) -> None:
        for name, value, minimum in (
            ("calib_batches", calib_batches, 1),
            ("qat_steps", qat_steps, 0),
            ("batch_size", batch_size, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(
                    f"The '{name}' parameter of SupernetEvaluator must be an int >= {minimum}. "
                    f"Got {value!r} instead."
                )
        self.supernet = supernet.to(device).eval()
        self.supernet_state = {k: v.detach() for k, v in supernet.state_dict().items()}
        self.data = data
        self.device = device
        self.calib_batches, self.qat_steps = calib_batches, qat_steps
        self.lr, self.weight_decay = lr, weight_decay
        self.batch_size, self.num_workers = batch_size, num_workers
        self.kd_alpha, self.kd_temperature = kd_alpha, kd_temperature
        self.seed = seed
        self.task = task or Classification()

    def evaluate(self, model: nn.Module, candidate: Candidate) -> TaskMetrics:
        train_loader, val_loader = make_loaders(
            self.data, batch_size=self.batch_size, num_workers=self.num_workers, seed=self.seed
        )
        start = time.perf_counter()
        # Weights come from the supernet; the init that build_compressed draws is overwritten.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            try:
                scored = build_compressed(
                    candidate,
                    num_classes=self.data.num_classes,
                    input_shape=self.data.input_shape,
                    teacher_state=self.supernet_state,
                ).to(self.device)
            except ValueError as err:
                raise CandidateError(f"invalid compression plan: {err}") from err
        with candidate_failures():
            recalibrate_bn_(
                scored, train_loader, batches=self.calib_batches, device=self.device, task=self.task
            )
            if self.qat_steps > 0:
                self._fine_tune(scored, train_loader)
            metrics = validation_metrics(scored, val_loader, device=self.device, task=self.task)
        try:
            model.load_state_dict(scored.state_dict())
        except RuntimeError as err:
            raise ValueError(
                "The 'model' parameter of SupernetEvaluator.evaluate must be the candidate's "
                f"compressed network (build_compressed of the same candidate). Got {err}"
            ) from err
        loss = metrics.pop("loss")
        return TaskMetrics(
            metrics=metrics,
            loss=loss,
            # partial epochs count as started ones
            epochs=math.ceil(self.qat_steps / max(1, len(train_loader))),
            train_seconds=time.perf_counter() - start,
        )

    def _fine_tune(self, model: nn.Module, loader: Any) -> None:
        model.train()
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=self.lr, weight_decay=self.weight_decay
        )
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.qat_steps)
        step = 0
        while step < self.qat_steps:
            for batch in loader:
                if step == self.qat_steps:
                    break
                x, y = self.task.split(batch)
                x, y = to_device(x, self.device), to_device(y, self.device)
                train_step_(
                    model,
                    x,
                    y,
                    task=self.task,
                    teacher=self.supernet,
                    kd_alpha=self.kd_alpha,
                    kd_temperature=self.kd_temperature,
                    optimizer=optimizer,
                    schedule=schedule,
                    where=f"fine-tuning loss at step {step}",
                )
                step += 1


# --- fidelity ----------------------------------------------------------------------------------


class RankCorrelation(NamedTuple):
    """Kendall's tau-b between two evaluators' accuracies on the same candidates, its two-sided
    p-value (scipy), and the accuracies as ``(n, 2)`` rows ``[evaluator_a, evaluator_b]``."""

    kendall_tau: float
    p_value: float
    accuracies: np.ndarray


def rank_correlation(
    evaluator_a: Evaluator,
    evaluator_b: Evaluator,
    candidates: Sequence[Candidate],
    *,
    num_classes: int,
    input_shape: tuple[int, ...],
    teacher_state: Mapping[str, torch.Tensor] | None = None,
    seed: int = 0,
) -> RankCorrelation:
    """How well ``evaluator_a`` ranks ``candidates`` like ``evaluator_b`` (e.g. the supernet vs
    full fine-tuning with :class:`~autocompress.evaluators.train.TrainEvaluator`).

    Each evaluator gets its own freshly built compressed model per candidate, as the search
    builds it (``build_compressed`` with ``teacher_state``, initialised from ``seed`` + the
    candidate's index). Tau is NaN when either side is constant.
    """
    from scipy.stats import kendalltau

    if len(candidates) < 2:
        raise ValueError(
            "The 'candidates' parameter of rank_correlation must hold at least 2 candidates. "
            f"Got {len(candidates)} instead."
        )
    rows = []
    for index, candidate in enumerate(candidates):
        row = []
        for evaluator in (evaluator_a, evaluator_b):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed + index)
                model = build_compressed(
                    candidate,
                    num_classes=num_classes,
                    input_shape=input_shape,
                    teacher_state=teacher_state,
                )
            row.append(evaluator.evaluate(model, candidate).accuracy)
        rows.append(row)
    accuracies = np.asarray(rows, dtype=float)
    result = kendalltau(accuracies[:, 0], accuracies[:, 1])
    return RankCorrelation(
        kendall_tau=float(result.statistic), p_value=float(result.pvalue), accuracies=accuracies
    )


@register_evaluator("supernet")
def supernet_evaluator(
    context: EvaluatorContext, *, supernet: Mapping[str, Any] | None = None, **options: Any
) -> SupernetEvaluator:
    """``evaluator: {name: supernet, options: {...}}``: trains the space's supernet once per run
    folder (``supernet``: :class:`SupernetConfig` fields; seeded with the run's seed), cached in
    the run folder, then scores each candidate with :class:`SupernetEvaluator` (``options``: its
    keyword arguments, e.g. ``qat_steps``, ``calib_batches``, ``lr``; batch size and distillation
    default to the run's ``train`` section)."""
    if context.run_dir is None:
        raise ValueError("The supernet evaluator needs a run folder to cache its supernet in.")
    config = SupernetConfig(**{"seed": context.seed, **dict(supernet or {})})
    model, _ = get_supernet(
        context.space,
        data=context.data,
        config=config,
        directory=context.run_dir.supernet_dir,
        device=context.device,
        num_workers=context.num_workers,
        task=context.task,
    )
    settings = {
        "batch_size": context.train.batch_size,
        "kd_alpha": context.train.kd_alpha,
        "kd_temperature": context.train.kd_temperature,
        **options,
    }
    return SupernetEvaluator(
        supernet=model,
        data=context.data,
        device=context.device,
        num_workers=context.num_workers,
        seed=context.seed,
        task=context.task,
        **settings,
    )
