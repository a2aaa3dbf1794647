"""Saved models: a JSON spec (candidate + input/output shape) beside a state_dict.

Never a pickled module: the spec rebuilds the architecture through the family registry, and the
weights load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.errors import DamagedFileError
from ..core.files import atomic_path, write_text_atomic
from ..core.rundir import MODEL_SPEC_FILE as SPEC_FILE
from ..core.rundir import MODEL_WEIGHTS_FILE as WEIGHTS_FILE
from ..spaces import Candidate
from .apply import build_compressed
from .quantization import prepare_for_state_

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
    for key, mask in list(state.items()):
        # The weights a sparsity mask drops are stored as the zeros they act as.
        if key.endswith("weight_mask") and mask.dtype == torch.bool:
            weight_key = key.removesuffix("_mask")
            state[weight_key] = state[weight_key].masked_fill(~mask, 0.0)
    # Each file is whole or absent, and the spec comes last: its presence marks a complete save
    # (a save cut short by kill -9 leaves the previous files or none).
    with atomic_path(directory / WEIGHTS_FILE) as tmp:
        torch.save(state, tmp)
    write_text_atomic(directory / SPEC_FILE, json.dumps(spec, indent=2, sort_keys=True))
    return directory


def read_spec(directory: Path) -> dict[str, Any]:
    path = directory / SPEC_FILE
    if not path.is_file():
        raise FileNotFoundError(f"No saved model in {str(directory)!r}: {SPEC_FILE} is missing.")
    try:
        spec = json.loads(path.read_text())
    except (ValueError, OSError) as err:
        raise DamagedFileError(f"{path} cannot be read ({err}): the file is damaged.") from None
    if not isinstance(spec, dict) or not {"candidate", "num_classes", "input_shape"} <= set(spec):
        raise DamagedFileError(f"{path} is not a saved model's spec: the file is damaged.")
    return spec


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
    path = directory / WEIGHTS_FILE
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
        prepare_for_state_(model, state)
        model.load_state_dict(state)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DamagedFileError(
            f"{path} cannot be loaded ({reason}): the file is damaged or does not belong to "
            f"the {SPEC_FILE} beside it."
        ) from None
    return model, spec
