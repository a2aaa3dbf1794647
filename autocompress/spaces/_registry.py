"""Registry of searchable model families (timm-style: ``@register_family``, ``create_family``)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

import optuna
from pydantic import BaseModel
from torch import nn

from ..core.registry import Registry


class ModelFamily(ABC):
    """A parametrised network family: which architecture knobs exist and how to build one.

    Contract:
    - ``space_model`` is the pydantic model of the family's ``space.arch`` config section: the
      *choices* each knob may take, plus fixed parts (strides, stage widths).
    - ``suggest_arch`` asks the Optuna trial for each knob and returns a self-contained, JSON-able
      ``arch`` dict: ``build(arch, ...)`` needs nothing else, so an exported candidate rebuilds
      without the run config.
    - ``largest_arch`` is the biggest point of the space; it becomes the teacher, and every other
      point is a sub-network of it (names match, shapes are smaller or equal), which is what lets
      a candidate inherit the teacher's weights.
    - ``build`` returns a float, unpruned ``nn.Module``; the Conv2d/Linear that runs last is its
      output layer (the classifier), which is never pruned.
    - ``prepare(num_classes=..., input_shape=...)`` (optional) runs once before the space is
      searched, with the data's shapes: a family checks there that it can serve them and
      resolves what depends on them.
    """

    name: ClassVar[str]
    space_model: ClassVar[type[BaseModel]]

    def __init__(self, space: BaseModel) -> None:
        self.space = space

    @abstractmethod
    def suggest_arch(self, trial: optuna.Trial) -> dict[str, Any]: ...

    @abstractmethod
    def largest_arch(self) -> dict[str, Any]: ...

    @staticmethod
    @abstractmethod
    def build(
        arch: Mapping[str, Any], *, num_classes: int, input_shape: tuple[int, ...]
    ) -> nn.Module: ...

    def prepare(self, *, num_classes: int, input_shape: tuple[int, ...]) -> None:
        """Check the family against the data's shapes before a search (default: nothing)."""
        return None


_FAMILIES: Registry[type[ModelFamily]] = Registry("model family")


def register_family(cls: type[ModelFamily]) -> type[ModelFamily]:
    """Class decorator: make a :class:`ModelFamily` available as ``space.family: <cls.name>``."""
    return _FAMILIES.register(cls.name)(cls)


def list_families(pattern: str = "*") -> list[str]:
    return _FAMILIES.names(pattern)


def get_family(name: str) -> type[ModelFamily]:
    return _FAMILIES.get(name, where="The 'space.family' field")


def create_family(name: str, space: Mapping[str, Any] | BaseModel | None = None) -> ModelFamily:
    """Instantiate a family with its ``space.arch`` settings (validated by its pydantic model)."""
    family_cls = get_family(name)
    if not isinstance(space, BaseModel):
        space = family_cls.space_model.model_validate(dict(space or {}))
    return family_cls(space)
