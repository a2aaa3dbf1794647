"""What every dataset hands to an evaluator: :class:`DataBundle`, and :class:`Preprocessing`, the
record of how a raw input becomes the model's input tensor (what a deployer must repeat)."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from torch.utils.data import Dataset

__all__ = ["DataBundle", "Preprocessing"]

_COLORS = ("RGB", "grayscale")


@dataclass(frozen=True)
class Preprocessing:
    """How one raw input becomes the ``input_shape`` float tensor the model was trained on.

    The steps, in this order (a step whose field is None is not applied):

    1. ``resize``: scale the image so that its shorter side is ``resize`` pixels, aspect ratio
       kept, with ``interpolation`` (torchvision's ``Resize`` on a PIL image: antialiased).
    2. ``center_crop``: cut the central ``center_crop`` x ``center_crop`` pixels.
    3. arrange the values as ``channel_order`` (``"CHW"``: channels, rows, columns) in float32;
       ``color`` says which raw image they come from: ``"RGB"`` (channels R, G, B) or
       ``"grayscale"`` (one channel), None for inputs that are not images.
    4. ``scale``: divide the raw values (which lie in ``raw_range``) by it, e.g. 255 for uint8
       pixels.
    5. ``mean``/``std``: per channel, ``(x - mean[c]) / std[c]`` with the statistics actually
       used (for digits and synthetic, those of the seed's train split); None when
       ``data.normalize`` is false.

    ``class_names``: the name of each class index, or None when the dataset has none. Every
    field is a plain value, so :meth:`to_dict` is JSON as it stands.
    """

    input_shape: tuple[int, int, int]
    channel_order: str = "CHW"
    color: str | None = None
    raw_range: tuple[float, float] | None = None
    scale: float | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    resize: int | None = None
    center_crop: int | None = None
    interpolation: str | None = None
    class_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        self._check_layout()
        self._check_values()
        self._check_geometry()

    def _check_layout(self) -> None:
        shape = self.input_shape
        valid = _is_sequence(shape) and len(shape) == 3
        if not (valid and all(_is_positive_int(d) for d in shape)):
            raise self._error("input_shape", "three positive ints (channels, height, width)")
        self._set("input_shape", tuple(int(d) for d in shape))
        if not isinstance(self.channel_order, str) or sorted(self.channel_order) != ["C", "H", "W"]:
            raise self._error("channel_order", "an ordering of the letters 'C', 'H' and 'W'")
        channels = self.input_shape[0]
        if self.color is not None and self.color not in _COLORS:
            raise self._error("color", f"one of {list(_COLORS)} or None")
        if self.color is not None and channels != (3 if self.color == "RGB" else 1):
            raise self._error("color", f"consistent with the {channels} input channel(s)")
        names = self.class_names
        if names is not None:
            if not _is_sequence(names) or not all(isinstance(n, str) for n in names):
                raise self._error("class_names", "a sequence of str or None")
            self._set("class_names", tuple(names))

    def _check_values(self) -> None:
        if self.raw_range is not None:
            wanted = "two floats (low, high) with low < high, or None"
            low_high = self._floats("raw_range", wanted)
            if len(low_high) != 2 or not low_high[0] < low_high[1]:
                raise self._error("raw_range", wanted)
        if self.scale is not None:
            if not _is_positive(self.scale):
                raise self._error("scale", "a positive finite float or None")
            self._set("scale", float(self.scale))
        if (self.mean is None) != (self.std is None):
            raise self._error("std", "None exactly when mean is None")
        if self.mean is None:
            return
        channels = self.input_shape[0]
        wanted = f"{channels} finite floats (one per channel) or None"
        if len(self._floats("mean", wanted)) != channels:
            raise self._error("mean", wanted)
        wanted = f"{channels} positive floats (one per channel) or None"
        std = self._floats("std", wanted)
        if len(std) != channels or not all(s > 0 for s in std):
            raise self._error("std", wanted)

    def _check_geometry(self) -> None:
        for name in ("resize", "center_crop"):
            value = getattr(self, name)
            if value is not None and not _is_positive_int(value):
                raise self._error(name, "a positive int or None")
        if self.interpolation is not None and not isinstance(self.interpolation, str):
            raise self._error("interpolation", "a str or None")

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON-able values (tuples become lists)."""
        return {
            key: list(value) if isinstance(value, tuple) else value
            for key, value in asdict(self).items()
        }

    def _set(self, name: str, value: object) -> None:
        # Normalising a frozen dataclass's fields has to bypass its __setattr__.
        object.__setattr__(self, name, value)

    def _floats(self, name: str, wanted: str) -> tuple[float, ...]:
        """Field ``name`` as a tuple of Python floats (stored back so it stays JSON-able)."""
        value = getattr(self, name)
        if not _is_sequence(value) or not all(_is_real(v) for v in value):
            raise self._error(name, wanted)
        floats = tuple(float(v) for v in value)
        self._set(name, floats)
        return floats

    def _error(self, name: str, wanted: str) -> ValueError:
        return ValueError(
            f"The '{name}' parameter of Preprocessing must be {wanted}. "
            f"Got {getattr(self, name)!r} instead."
        )


@dataclass(frozen=True)
class DataBundle:
    """What a dataset provides to an evaluator: map-style datasets yielding (CHW float tensor,
    int label) pairs, the class count, and the (channels, height, width) of one input.

    ``preprocessing`` records how a raw input becomes such a tensor, for the export; None when
    the dataset does not say (a user dataset, unless its loader fills it in).
    """

    train: Dataset
    val: Dataset
    num_classes: int
    input_shape: tuple[int, int, int]
    name: str
    preprocessing: Preprocessing | None = field(default=None, kw_only=True)


def _is_sequence(value: object) -> bool:
    if isinstance(value, np.ndarray):
        return value.ndim == 1
    return isinstance(value, Sequence) and not isinstance(value, str | bytes)


def _is_positive_int(value: object) -> bool:
    # numbers.Integral admits numpy integers; bool is excluded on purpose.
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value > 0


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _is_positive(value: object) -> bool:
    return _is_real(value) and value > 0
