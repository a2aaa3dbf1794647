"""Task contract (what a network is trained and scored for) and the task registry.

A :class:`Task` says how to read a batch, the training loss, the loss against a teacher's
outputs, and the metrics a validation pass reports (each with the direction in which it
improves; one of them is primary: what the search's accuracy-like machinery compares).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..core.objectives import DIRECTIONS, MAXIMIZE, Objective
from ..core.plugins import import_object, is_import_string
from ..core.registry import Registry

# Keys under which a dict batch holds the network's input and its target, in order of preference.
INPUT_KEYS = ("input", "inputs", "image", "images", "x")
TARGET_KEYS = ("target", "targets", "label", "labels", "mask", "masks", "y")


class Task(ABC):
    """Contract (subclass it and register it, or name it as ``task: "module:Class"``):

    - ``metrics``: every metric :meth:`compute` returns, with its direction ("maximize" or
      "minimize"); ``primary``: one of them, the one the search compares candidates by;
      ``ranges`` (optional): the bounds of those metrics that have them. Names
      must not clash with the hardware metrics (latency_ms, energy_mj, size_kb, peak_mem_kb,
      params) or with ``loss``.
    - :meth:`loss`: the training loss of a batch (a scalar tensor); :meth:`distillation_loss`:
      the loss of a student against its teacher's outputs on the same batch (default: the
      ``alpha``-weighted sum of the MSE to the teacher's outputs and :meth:`loss`).
    - :meth:`statistics`: additive sums of one batch (floats or tensors); :meth:`compute` turns
      their totals over the validation split into the metrics.
    - :meth:`split`: a batch into (inputs, targets); tuples/lists ``(x, y)`` and dicts with an
      input and a target key (see ``INPUT_KEYS``/``TARGET_KEYS``) are understood.
    """

    name: ClassVar[str] = ""
    metrics: ClassVar[Mapping[str, str]] = {}
    primary: ClassVar[str] = ""
    # The values a metric can take, where bounded (e.g. accuracy in [0, 1]): predictions of it
    # are clipped to them.
    ranges: ClassVar[Mapping[str, tuple[float, float]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if getattr(cls, "__abstractmethods__", None):
            return  # an intermediate base: checked where it is made concrete
        for metric, direction in cls.metrics.items():
            if direction not in DIRECTIONS:
                raise TypeError(
                    f"{cls.__qualname__}.metrics[{metric!r}] must be 'maximize' or 'minimize'. "
                    f"Got {direction!r} instead."
                )
        if cls.primary not in cls.metrics:
            raise TypeError(
                f"{cls.__qualname__}.primary must be one of its metrics {list(cls.metrics)}. "
                f"Got {cls.primary!r} instead."
            )

    @property
    def score(self) -> Objective:
        """The primary metric and its direction."""
        return Objective(self.primary, self.metrics[self.primary])

    def split(self, batch: Any) -> tuple[Any, Tensor]:
        """(inputs, targets) of a batch from the data loader."""
        if isinstance(batch, Mapping):
            x = _first_key(batch, INPUT_KEYS, what="input")
            y = _first_key(batch, TARGET_KEYS, what="target")
            return batch[x], batch[y]
        if isinstance(batch, list | tuple) and len(batch) >= 2:
            return batch[0], batch[1]
        raise ValueError(
            f"A batch must be a tuple (inputs, targets) or a dict with an input key {INPUT_KEYS} "
            f"and a target key {TARGET_KEYS}. Got {type(batch).__name__}."
        )

    @abstractmethod
    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor: ...

    def distillation_loss(
        self,
        outputs: Tensor,
        teacher_outputs: Tensor,
        targets: Tensor,
        *,
        alpha: float,
        temperature: float,
    ) -> Tensor:
        """``alpha * MSE(outputs, teacher_outputs) + (1 - alpha) * loss``; ``temperature`` is
        for tasks whose outputs are logits."""
        matched = nn.functional.mse_loss(outputs, teacher_outputs.detach())
        return alpha * matched + (1 - alpha) * self.loss(outputs, targets)

    @abstractmethod
    def statistics(self, outputs: Tensor, targets: Tensor) -> dict[str, Any]: ...

    @abstractmethod
    def compute(self, totals: Mapping[str, Any]) -> dict[str, float]: ...

    @torch.no_grad()
    def evaluate(
        self, model: nn.Module, loader: Iterable, *, device: torch.device
    ) -> dict[str, float]:
        """The metrics of ``model`` on ``loader``, plus ``loss`` (mean loss per sample)."""
        model.to(device).eval()
        totals: dict[str, Any] = {}
        loss_sum, n = 0.0, 0
        for batch in loader:
            x, y = self.split(batch)
            x, y = to_device(x, device), to_device(y, device)
            outputs = model(x)
            size = len(y)
            loss_sum += float(self.loss(outputs, y)) * size
            n += size
            self.accumulate(totals, outputs, y)
        if n == 0:
            raise ValueError(
                "The validation split is empty: check 'data.val_fraction' / 'data.limit_val'."
            )
        metrics = {name: float(value) for name, value in self.compute(totals).items()}
        missing = set(self.metrics) - set(metrics)
        if missing:
            raise ValueError(
                f"{type(self).__qualname__}.compute must return every metric it declares; "
                f"{sorted(missing)} missing."
            )
        return {**metrics, "loss": loss_sum / n}

    def accumulate(self, totals: dict[str, Any], outputs: Tensor, targets: Tensor) -> None:
        """Add the :meth:`statistics` of one batch into ``totals``, in place."""
        for key, value in self.statistics(outputs, targets).items():
            totals[key] = totals[key] + value if key in totals else value

    def range_of(self, metric: str) -> tuple[float, float]:
        """The bounds of ``metric`` (``ranges``), unbounded when it declares none."""
        return self.ranges.get(metric, (-math.inf, math.inf))

    def worst(self) -> float:
        """The primary metric's value for a candidate that was not trained (it never enters
        the front; the value only completes the objective vector; plots leave infinite values
        out)."""
        return 0.0 if self.score.direction == MAXIMIZE else math.inf


def _first_key(batch: Mapping, keys: tuple[str, ...], *, what: str) -> str:
    for key in keys:
        if key in batch:
            return key
    raise ValueError(
        f"A dict batch must hold its {what} under one of {list(keys)}. Got keys {list(batch)}."
    )


def to_device(value: Any, device: torch.device) -> Any:
    """``value`` moved to ``device`` when it is a tensor (inputs may be other objects)."""
    return value.to(device, non_blocking=True) if isinstance(value, Tensor) else value


_TASKS: Registry[Callable[[], Task]] = Registry("task")


def register_task(name: str) -> Callable[[type[Task]], type[Task]]:
    """Decorator: make a :class:`Task` subclass available as ``task: <name>``."""
    return _TASKS.register(name)


def list_tasks(pattern: str = "*") -> list[str]:
    """Names accepted by :func:`create_task`, sorted."""
    return _TASKS.names(pattern)


def create_task(spec: str | Task, *, field: str = "task") -> Task:
    """The task named ``spec`` (a registered name or ``"package.module:TaskClass"``), or ``spec``
    itself when it already is a :class:`Task`. ``field`` names the config field in errors."""
    if isinstance(spec, Task):
        return spec
    if isinstance(spec, str) and is_import_string(spec):
        made = import_object(spec, field=field)
        made = made() if isinstance(made, type) else made
        if not isinstance(made, Task):
            raise ValueError(
                f"The {field!r} field must name a Task subclass (autocompress.tasks.Task). "
                f"Got {spec!r}, which gives {type(made).__name__}."
            )
        return made
    where = f"The {field!r} field"
    return _TASKS.get(spec, where=where, alternative="an import string 'package.module:Class'")()
