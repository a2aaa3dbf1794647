"""Saved models: a JSON spec (candidate + input/output shape) beside a state_dict.

Never a pickled module: the spec rebuilds the architecture through the family registry, and the
weights load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.rundir import MODEL_SPEC_FILE as SPEC_FILE
from ..core.rundir import MODEL_WEIGHTS_FILE as WEIGHTS_FILE
from ..spaces import Candidate
from .apply import build_compressed

__all__ = ["SPEC_FILE", "WEIGHTS_FILE", "load_model", "read_spec", "save_model"]


def save_model(
    directory: Path,
    model: nn.Module,
    *,
    candidate: Candidate,
    num_classes: int,
    input_shape: tuple[int, ...],
    metrics: Mapping[str, Any] | None = None,
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    spec = {
        "candidate": candidate.to_dict(),
        "num_classes": num_classes,
        "input_shape": list(input_shape),
        "metrics": dict(metrics or {}),
    }
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save(state, directory / WEIGHTS_FILE)
    # The spec is written last: its presence marks a complete save.
    (directory / SPEC_FILE).write_text(json.dumps(spec, indent=2, sort_keys=True))
    return directory


def read_spec(directory: Path) -> dict[str, Any]:
    path = directory / SPEC_FILE
    if not path.is_file():
        raise FileNotFoundError(f"No saved model in {str(directory)!r}: {SPEC_FILE} is missing.")
    return json.loads(path.read_text())


def load_model(
    directory: Path, *, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, dict]:
    """Rebuild a saved (compressed) model: architecture from the spec, then its weights."""
    spec = read_spec(directory)
    candidate = Candidate.from_dict(spec["candidate"])
    # Pruning here only reproduces the saved shapes (which channels go does not matter: the
    # loaded state_dict overwrites every weight).
    model = build_compressed(
        candidate, num_classes=spec["num_classes"], input_shape=tuple(spec["input_shape"])
    )
    state = torch.load(directory / WEIGHTS_FILE, map_location=map_location, weights_only=True)
    model.load_state_dict(state)
    return model, spec
