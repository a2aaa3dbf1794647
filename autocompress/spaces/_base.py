"""The joint search space: architecture knobs x per-layer bits x per-layer pruning ratios."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from typing import Any

import optuna
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from ._registry import create_family
from .candidate import FLOAT_BITS, MIN_BITS, Candidate, LayerChoice
from .groups import prunable_layers


class SpaceConfig(BaseModel):
    """The ``space:`` section of a run config."""

    model_config = ConfigDict(extra="forbid")

    family: str = "small_cnn"
    arch: dict[str, Any] = Field(default_factory=dict)
    w_bits: list[int] = Field(default=[2, 3, 4, 5, 6, 8], min_length=1)
    a_bits: list[int] = Field(default=[4, 6, 8], min_length=1)
    prune_ratios: list[float] = Field(default=[0.0, 0.25, 0.5], min_length=1)

    @field_validator("family")
    @classmethod
    def _known_family(cls, family: str) -> str:
        from ._registry import list_families

        if family not in list_families():
            raise ValueError(f"must be one of {list_families()}. Got {family!r}")
        return family

    @field_validator("w_bits", "a_bits")
    @classmethod
    def _bits_in_range(cls, bits: list[int]) -> list[int]:
        bad = [b for b in bits if not MIN_BITS <= b <= FLOAT_BITS]
        if bad:
            raise ValueError(
                f"bit-widths must lie in [{MIN_BITS}, {FLOAT_BITS}] ({FLOAT_BITS} = float). "
                f"Got {bad}"
            )
        return sorted(set(bits))

    @field_validator("prune_ratios")
    @classmethod
    def _ratios_in_range(cls, ratios: list[float]) -> list[float]:
        bad = [r for r in ratios if not 0.0 <= r < 1.0]
        if bad:
            raise ValueError(f"pruning ratios must lie in [0, 1). Got {bad}")
        return sorted(set(ratios))


class SearchSpace(ABC):
    """What a search explores. ``suggest`` must only call ``trial.suggest_*`` (no training), so it
    stays cheap; the returned candidate must rebuild with :func:`build_model`."""

    @abstractmethod
    def suggest(self, trial: optuna.Trial) -> Candidate: ...

    @abstractmethod
    def teacher(self) -> Candidate:
        """The uncompressed, largest point of the space: the distillation teacher."""


def conv_linear_layers(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]


def build_model(
    candidate: Candidate, *, num_classes: int, input_shape: tuple[int, ...]
) -> nn.Module:
    """The float, unpruned network of a candidate (compression is applied by ``compress_``)."""
    from ._registry import get_family

    return get_family(candidate.family).build(
        candidate.arch, num_classes=num_classes, input_shape=tuple(input_shape)
    )


class JointSearchSpace(SearchSpace):
    """Architecture from a registered family, then, for the layers that architecture has, one
    ``w_bits``/``a_bits`` choice per Conv2d/Linear and one pruning ratio per pruning group.

    Layer dimensions are conditional: a layer that the sampled architecture does not have gets
    no parameters (Optuna samplers handle such dynamic spaces).
    """

    def __init__(self, config: SpaceConfig, *, num_classes: int, input_shape: tuple[int, ...]):
        self.config = config
        self.family = create_family(config.family, config.arch)
        self.num_classes = num_classes
        self.input_shape = tuple(input_shape)
        self._dimensions: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}

    def layer_dimensions(self, arch: dict[str, Any]) -> tuple[list[str], list[str]]:
        """(layers that get bits, layers that lead a prunable channel group) of an architecture.

        Cached per architecture: finding the groups builds the model and traces its dependency
        graph, which costs more than the rest of a suggestion (and the search suggests every
        trial, the surrogate whole pools)."""
        key = json.dumps(arch, sort_keys=True, default=str)
        if key not in self._dimensions:
            model = self.family.build(
                arch, num_classes=self.num_classes, input_shape=self.input_shape
            )
            layers = conv_linear_layers(model)
            example = torch.zeros(1, *self.input_shape)
            prunable = prunable_layers(model, example, ignored=[layers[-1]])
            self._dimensions[key] = (tuple(layers), tuple(prunable))
        layers, prunable = self._dimensions[key]
        return list(layers), list(prunable)

    def suggest(self, trial: optuna.Trial) -> Candidate:
        cfg = self.config
        arch = self.family.suggest_arch(trial)
        layers, prunable = self.layer_dimensions(arch)
        prunable_set = set(prunable)
        choices = {}
        for name in layers:
            w_bits = trial.suggest_categorical(f"{name}.w_bits", cfg.w_bits)
            a_bits = trial.suggest_categorical(f"{name}.a_bits", cfg.a_bits)
            ratio = 0.0
            if name in prunable_set and len(cfg.prune_ratios) > 1:
                ratio = trial.suggest_categorical(f"{name}.prune", cfg.prune_ratios)
            elif name in prunable_set:
                ratio = cfg.prune_ratios[0]
            choices[name] = LayerChoice(w_bits=w_bits, a_bits=a_bits, prune_ratio=ratio)
        return Candidate(family=self.family.name, arch=arch, layers=choices)

    def teacher(self) -> Candidate:
        return Candidate(family=self.family.name, arch=self.family.largest_arch(), layers={})
