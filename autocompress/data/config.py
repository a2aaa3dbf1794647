"""The ``data:`` section of a run config. Its fields and defaults are part of every run's
fingerprint (``model_dump(mode="json")``), so they change only on purpose."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from .registry import DatasetSpec, get_dataset, list_datasets

__all__ = ["DataConfig"]


class DataConfig(BaseModel):
    """The ``data:`` section of a run config. Errors are located at the offending field.

    ``dataset``: a registered name (``list_datasets()``: digits, synthetic, cifar10, mnist,
    imagefolder, and any added with ``register_dataset``) or ``"package.module:function"``, a
    function called as ``function(root=root, seed=seed)`` that returns ``(train_dataset,
    val_dataset, num_classes, input_shape)``. ``root``: the local directory of cifar10 / mnist /
    imagefolder. ``val_fraction``: share held out for validation where a dataset has no official
    split (digits, synthetic, a single imagefolder tree). ``batch_size``/``num_workers``: for
    :func:`make_loaders`. ``image_size``: imagefolder images are resized and center-cropped to
    it (default 32). ``limit_train``/``limit_val``: keep a seeded random subset of at most this
    many samples. ``normalize``: standardize inputs per channel. ``synthetic_*``: size of the
    synthetic task. ``augment``: seeded random crop + horizontal flip of cifar10/imagefolder
    training images.
    """

    model_config = ConfigDict(extra="forbid")

    dataset: str = "digits"
    # validate_default: a missing root must be reported even though None is the default.
    root: Path | None = Field(default=None, validate_default=True)
    val_fraction: float = 0.2
    batch_size: int = 64
    num_workers: int = 0
    image_size: int | None = None
    limit_train: int | None = None
    limit_val: int | None = None
    normalize: bool = True
    synthetic_classes: int = 10
    synthetic_samples: int = 2000
    synthetic_shape: tuple[int, int, int] = (1, 8, 8)
    augment: bool = False

    @field_validator("dataset")
    @classmethod
    def _check_dataset(cls, value: str) -> str:
        get_dataset(value)  # an unknown name raises, listing the registered ones
        return value

    @field_validator("root")
    @classmethod
    def _check_root(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        dataset = info.data.get("dataset")
        if value is None and dataset is not None and get_dataset(dataset).needs_root:
            raise ValueError(
                f"The 'data.root' parameter of DataConfig must be a directory path when "
                f"data.dataset is {dataset!r}. Got None instead."
            )
        return None if value is None else value.expanduser()

    @field_validator("val_fraction")
    @classmethod
    def _check_val_fraction(cls, value: float) -> float:
        if not 0.0 < value < 1.0:
            raise ValueError(
                "The 'data.val_fraction' parameter of DataConfig must be a float in (0, 1). "
                f"Got {value!r} instead."
            )
        return value

    @field_validator("batch_size", "synthetic_samples", "limit_train", "limit_val")
    @classmethod
    def _check_positive(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and value <= 0:
            raise ValueError(
                f"The 'data.{info.field_name}' parameter of DataConfig must be a positive int. "
                f"Got {value!r} instead."
            )
        return value

    @field_validator("num_workers")
    @classmethod
    def _check_num_workers(cls, value: int) -> int:
        if value < 0:
            raise ValueError(
                "The 'data.num_workers' parameter of DataConfig must be a non-negative int. "
                f"Got {value!r} instead."
            )
        return value

    @field_validator("image_size")
    @classmethod
    def _check_image_size(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is None:
            return value
        if value <= 0:
            raise ValueError(
                "The 'data.image_size' parameter of DataConfig must be a positive int. "
                f"Got {value!r} instead."
            )
        dataset = info.data.get("dataset")
        # Silently ignoring a resize would leave the model with an unexpected input shape.
        if dataset is not None and not get_dataset(dataset).resizable:
            raise ValueError(
                "The 'data.image_size' parameter of DataConfig must be left unset unless "
                f"data.dataset is {_one_of(lambda spec: spec.resizable)} (got dataset "
                f"{dataset!r}). Got {value!r} instead."
            )
        return value

    @field_validator("synthetic_classes")
    @classmethod
    def _check_synthetic_classes(cls, value: int) -> int:
        if value < 2:
            raise ValueError(
                "The 'data.synthetic_classes' parameter of DataConfig must be an int >= 2. "
                f"Got {value!r} instead."
            )
        return value

    @field_validator("synthetic_samples")
    @classmethod
    def _check_synthetic_samples(cls, value: int, info: ValidationInfo) -> int:
        classes = info.data.get("synthetic_classes")
        # Two samples per class put every class on both sides of the train/val split.
        if classes is not None and value < 2 * classes:
            raise ValueError(
                "The 'data.synthetic_samples' parameter of DataConfig must be at least "
                f"2 * data.synthetic_classes = {2 * classes}. Got {value!r} instead."
            )
        return value

    @field_validator("synthetic_shape")
    @classmethod
    def _check_synthetic_shape(cls, value: tuple[int, int, int]) -> tuple[int, int, int]:
        if any(d <= 0 for d in value):
            raise ValueError(
                "The 'data.synthetic_shape' parameter of DataConfig must be three positive ints "
                f"(channels, height, width). Got {value!r} instead."
            )
        return value

    @field_validator("augment")
    @classmethod
    def _check_augment(cls, value: bool, info: ValidationInfo) -> bool:
        dataset = info.data.get("dataset")
        # Crops and flips are wrong for digits (a flipped 2 is no 2) and unknown for user code.
        if value and dataset is not None and not get_dataset(dataset).augmentable:
            raise ValueError(
                "The 'data.augment' parameter of DataConfig must be false unless data.dataset "
                f"is {_one_of(lambda spec: spec.augmentable)} (got dataset {dataset!r}). "
                "Got True instead."
            )
        return value


def _one_of(supports: Callable[[DatasetSpec], bool]) -> str:
    """The registered names whose spec ``supports`` a field, as "'a', 'b' or 'c'"."""
    names = [repr(name) for name in list_datasets() if supports(get_dataset(name))]
    if len(names) < 2:
        return "".join(names) or "a dataset that supports it"
    return f"{', '.join(names[:-1])} or {names[-1]}"
