"""One call for a network and data you hold as Python objects: ``compress(model, train_data=...,
val_data=..., config={...})`` searches bits, pruning ratios and droppable blocks on ``model`` and
returns the run (front, trials, export). It is ``run_search`` on a config whose ``model`` and
``data`` sections name the objects, so the CLI and this call run the same code.

The objects live in this process: the run folder records them by name, and commands in another
process (``autocompress export RUN``) cannot rebuild a candidate of such a run. Export from the
result instead, or name the network by a factory (``model: {factory: ...}``) to use the CLI.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import torch
from optuna.trial import FrozenTrial
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .config import RunConfig, load_config, parse_config
from .core.files import atomic_path
from .core.rundir import RunDir
from .core.trials import load_trials
from .data import DataBundle, register_dataset
from .export import ExportResult, export_trial, pick_trial
from .search import SearchResult, run_search
from .tasks import Task, create_task, register_task

__all__ = ["CompressResult", "compress", "given_model"]

# Networks handed to compress(), by run name: the "model" family rebuilds candidates from them.
_GIVEN: dict[str, nn.Module] = {}


def given_model(name: str) -> nn.Module:
    """A fresh copy of the network that ``compress(..., name=name)`` was given in this process
    (the factory that runs of ``compress`` record)."""
    if name not in _GIVEN:
        raise ValueError(
            f"The network of run {name!r} was given to compress() as a Python object, in another "
            "process: rebuild its candidates where compress() runs (CompressResult.export), or "
            "name the network by a factory (model.factory) to read the run from the CLI."
        )
    return copy.deepcopy(_GIVEN[name])


@dataclass(frozen=True)
class CompressResult:
    """What ``compress`` returns: the run (see :class:`~autocompress.search.SearchResult`), its
    front as a DataFrame, and :meth:`export`."""

    search: SearchResult

    @property
    def front(self) -> pd.DataFrame:
        return self.search.front

    @property
    def trials(self) -> pd.DataFrame:
        return self.search.trials

    @property
    def run_dir(self) -> Path:
        return self.search.run_dir

    def export(
        self,
        trial: int | None = None,
        *,
        pick: str | None = None,
        format: str = "onnx",
        out_dir: Path | None = None,
    ) -> ExportResult:
        """Export ``trial``, or the one ``pick`` chooses (e.g. ``"fastest with accuracy >=
        0.9"``; default: the best by the task's primary metric, e.g. the most accurate),
        verified against PyTorch (see ``export_trial``)."""
        if trial is None:
            score = load_config(RunDir(self.run_dir).config_file).make_task().score
            best = f"{score.direction.removesuffix('imize')} {score.name}"  # e.g. max accuracy
            trial = pick_trial(load_trials(self.run_dir), pick or best).trial
        return export_trial(self.run_dir, trial=trial, format=format, out_dir=out_dir)


def compress(
    model: nn.Module,
    *,
    train_data: Dataset | DataLoader,
    val_data: Dataset | DataLoader,
    config: Mapping[str, Any] | None = None,
    task: str | Task = "classification",
    name: str = "compress",
    runs_dir: str | Path = "runs",
    on_trial: Callable[[optuna.Study, FrozenTrial, int], None] | None = None,
) -> CompressResult:
    """Search compressed versions of ``model`` (a trained network: its weights are the teacher)
    on ``train_data`` / ``val_data`` (map-style datasets of ``(input, target)`` pairs or of
    dicts with an input and a target key, or DataLoaders over them), and return the run.

    ``task``: what the network does, a :class:`~autocompress.tasks.Task` or a task name
    (``classification``, ``regression``, ``segmentation``, ``"module:TaskClass"``); objectives
    name its metrics (e.g. ``miou``). ``config``: the rest of a run config as a mapping
    (``space``, ``train``, ``hardware``, ``search``; ``model`` settings such as
    ``droppable_blocks`` or ``head`` too), validated as a config file is. Re-running with the
    same ``name`` resumes the run."""
    train, val = _dataset(train_data, "train_data"), _dataset(val_data, "val_data")
    task_spec = task
    if isinstance(task, Task):  # an object of this process, named for the run's config
        task_spec = f"given-{name}"
        register_task(task_spec)(lambda: task)
    _GIVEN[name] = copy.deepcopy(model).cpu().eval()
    bundle = _bundle(train, val, model=_GIVEN[name], name=name, task=create_task(task_spec))
    register_dataset(f"given-{name}")(lambda config, *, seed: bundle)
    run = RunDir(Path(runs_dir) / name)
    run.path.mkdir(parents=True, exist_ok=True)
    checkpoint = run.given_model
    with atomic_path(checkpoint) as tmp:
        torch.save(_GIVEN[name].state_dict(), tmp)
    settings = dict(config or {})
    settings["model"] = {
        **dict(settings.get("model", {})),
        "factory": f"{__name__}:given_model",
        "kwargs": {"name": name},
        "checkpoint": str(checkpoint),
    }
    settings["data"] = {**dict(settings.get("data", {})), "dataset": f"given-{name}"}
    settings["task"] = task_spec
    run_config: RunConfig = parse_config({**settings, "name": name}, source="compress(config=...)")
    return CompressResult(run_search(run_config, runs_dir=Path(runs_dir), on_trial=on_trial))


def _dataset(data: Dataset | DataLoader, parameter: str) -> Dataset:
    dataset = data.dataset if isinstance(data, DataLoader) else data
    if not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")) or not len(dataset):
        raise ValueError(
            f"The '{parameter}' parameter of compress must be a non-empty map-style dataset of "
            f"(input, label) pairs, or a DataLoader over one. Got {type(data).__name__} instead."
        )
    return dataset


def _bundle(train: Dataset, val: Dataset, *, model: nn.Module, name: str, task: Task) -> DataBundle:
    """``model``: the given network's copy, on the CPU in eval mode."""
    inputs = torch.as_tensor(task.split(train[0])[0])
    # The class count is the network's: one score (map) per class, dimension 1 of its output
    # (model.head: replace changes it).
    with torch.no_grad():
        scores = model(inputs.unsqueeze(0).float())
    return DataBundle(
        train=train,
        val=val,
        num_classes=int(scores.shape[1]) if scores.ndim > 1 else 1,
        input_shape=tuple(int(d) for d in inputs.shape),
        name=f"given-{name}",
    )
