"""The ``"learned"`` hardware profile: latency from a trained :class:`LatencyPredictor`."""

from __future__ import annotations

import math
import os

from torch import nn

from autocompress.hardware_profiles._base import (
    HardwareMetrics,
    HardwareProfile,
    register_hardware_profile,
)
from autocompress.hardware_profiles.checks import check_loaded
from autocompress.hardware_profiles.graph import check_input_shape, layer_costs, metrics_with_memory
from autocompress.hardware_profiles.predictor import LatencyPredictor

__all__ = ["LearnedProfile"]


@register_hardware_profile("learned")
class LearnedProfile(HardwareProfile):
    """Latency predicted by a :class:`LatencyPredictor` trained on this host's measurements.

    ``predictor``: a LatencyPredictor or the path of one saved as JSON. Energy is unknown
    (NaN); size and peak memory use the bits. ``details`` holds the per-layer predictions, their
    sum, the op counts and the host the predictor was trained on. Thread-safe (read-only).
    """

    def __init__(self, *, predictor: LatencyPredictor | str | os.PathLike[str]) -> None:
        self.predictor = check_loaded(
            predictor,
            LatencyPredictor,
            name="predictor",
            where="LearnedProfile",
            rule="a LatencyPredictor or the path of a predictor JSON file",
        )

    def __repr__(self) -> str:
        return f"LearnedProfile(predictor={self.predictor!r})"

    def profile(self, model: nn.Module, *, input_shape: tuple[int, ...]) -> HardwareMetrics:
        shape = check_input_shape(input_shape, caller="LearnedProfile.profile")
        parts = self.predictor.explain(model, input_shape=shape)
        costs = layer_costs(model, input_shape=shape)
        return metrics_with_memory(
            model,
            costs,
            latency_ms=parts.pop("latency_ms"),
            energy_mj=math.nan,
            details={
                **parts,
                "trained_on": self.predictor.host,
                "energy_note": "Energy unknown: the latency predictor holds no power figures.",
            },
        )
