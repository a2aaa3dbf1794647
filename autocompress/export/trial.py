"""Export a chosen trial: its candidate as YAML, its compressed model as JSON spec + state_dict,
and a check that the reloaded model reproduces the accuracy recorded during the search."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from ..config import load_config
from ..evaluators.data import load_data, make_loaders
from ..evaluators.train import evaluate_accuracy, resolve_device
from ..spaces import Candidate
from .artifacts import load_model, save_model


@dataclass(frozen=True)
class ExportResult:
    out_dir: Path
    recorded_accuracy: float
    reproduced_accuracy: float


def trial_dir(run_dir: Path, trial: int) -> Path:
    directory = run_dir / "trials" / str(trial)
    if not (directory / "spec.json").is_file():
        raise FileNotFoundError(
            f"Trial {trial} of {str(run_dir)!r} has no saved model: it failed, was over the "
            "hardware budget (never trained), or the run had search.save_models: false. "
            "`autocompress pareto RUN` lists the trials on the front."
        )
    return directory


def export_trial(run_dir: Path, *, trial: int, out_dir: Path | None = None) -> ExportResult:
    source = trial_dir(run_dir, trial)
    out_dir = out_dir or run_dir / "export" / f"trial_{trial}"
    config = load_config(run_dir / "config.yaml")
    model, spec = load_model(source)

    save_model(
        out_dir,
        model,
        candidate=_candidate(spec),
        num_classes=spec["num_classes"],
        input_shape=tuple(spec["input_shape"]),
        metrics=spec["metrics"],
    )
    (out_dir / "candidate.yaml").write_text(
        yaml.safe_dump(
            {
                "run": config.name,
                "trial": trial,
                "metrics": spec["metrics"],
                "data": config.data.model_dump(mode="json"),
                "candidate": spec["candidate"],
            },
            sort_keys=False,
        )
    )

    # Reload what was written (not the in-memory model) to prove the export stands on its own.
    reloaded, _ = load_model(out_dir)
    data = load_data(config.data, seed=config.seed)
    _, val_loader = make_loaders(
        data, batch_size=config.data.batch_size, num_workers=0, seed=config.seed
    )
    accuracy, _ = evaluate_accuracy(
        reloaded, val_loader, device=resolve_device(config.train.device)
    )
    return ExportResult(
        out_dir=out_dir,
        recorded_accuracy=float(spec["metrics"]["accuracy"]),
        reproduced_accuracy=accuracy,
    )


def _candidate(spec: dict) -> Candidate:
    return Candidate.from_dict(spec["candidate"])


__all__ = ["ExportResult", "export_trial", "trial_dir"]
