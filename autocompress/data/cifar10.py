"""``cifar10``: CIFAR-10 in its python format (``cifar-10-batches-py/``) under ``data.root``,
read through torchvision without downloading."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .bundle import DataBundle
from .registry import register_dataset
from .sampling import augment_seed
from .vision import (
    RandomCropFlip,
    existing_root,
    image_preprocessing,
    image_transforms,
    import_torchvision,
)

if TYPE_CHECKING:
    from torchvision.datasets import CIFAR10

    from .config import DataConfig

__all__ = ["load_cifar10"]

# Per-channel statistics of the training split.
_STATS = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
_SHAPE = (3, 32, 32)
_DIR = "cifar-10-batches-py"
_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")


@register_dataset("cifar10", needs_root=True, augmentable=True)
def load_cifar10(config: DataConfig, *, seed: int) -> DataBundle:
    tv = import_torchvision()
    root = existing_root(config)
    folder = root / _DIR
    missing = [f"{_DIR}/{f}" for f in _FILES if not (folder / f).is_file()]
    if missing:
        hint = ""
        if (root / "data_batch_1").is_file():
            hint = f" The batch files sit directly in it: set data.root to {str(root.parent)!r}."
        raise ValueError(
            "The 'data.root' parameter of load_data must be a directory holding CIFAR-10 in its "
            f"python format: {_DIR}/data_batch_1..5, test_batch and batches.meta. Got "
            f"{str(root)!r} instead, which lacks {', '.join(missing)}.{hint}"
        )
    val_tf = image_transforms(tv, _STATS, normalize=config.normalize)
    train_tf = val_tf
    if config.augment:
        augment = RandomCropFlip(size=32, padding=4, seed=augment_seed(seed))
        train_tf = image_transforms(tv, _STATS, normalize=config.normalize, augment=augment)
    cls = __getattr__("_LocalCIFAR10")
    train = cls.read(root, train=True, transform=train_tf)
    val = cls.read(root, train=False, transform=val_tf)
    preprocessing = image_preprocessing(
        _STATS,
        normalize=config.normalize,
        input_shape=_SHAPE,
        color="RGB",
        class_names=list(train.classes),  # batches.meta's label_names
    )
    return DataBundle(
        train=train,
        val=val,
        num_classes=10,
        input_shape=_SHAPE,
        name="cifar10",
        preprocessing=preprocessing,
    )


def _make_local_cifar10() -> type:
    """torchvision's CIFAR10 reader, minus its md5 check against the official files.

    The check makes any other copy (a re-pickled, truncated or test-sized one) fail with
    "Dataset not found or corrupted". Here the files must exist and unpickle into consistent
    images and labels; an unreadable one is reported by name. The checksums are not verified.
    """
    from torchvision.datasets import CIFAR10

    class _LocalCIFAR10(CIFAR10):
        train_list = [[name, None] for name, _ in CIFAR10.train_list]
        test_list = [[name, None] for name, _ in CIFAR10.test_list]
        meta = {**CIFAR10.meta, "md5": None}  # check_integrity(path, None) tests existence only

        @classmethod
        def read(cls, root: Path, *, train: bool, transform: Callable) -> CIFAR10:
            try:
                dataset = cls(str(root), train=train, transform=transform, download=False)
            except Exception as err:
                raise ValueError(_read_error(root, train=train, cause=err)) from err
            labels = np.asarray(dataset.targets)
            out_of_range = labels.size > 0 and (labels.min() < 0 or labels.max() > 9)
            if len(labels) != len(dataset.data) or out_of_range:
                raise ValueError(
                    _read_error(
                        root,
                        train=train,
                        cause="image and label counts differ or a label is outside 0..9",
                    )
                )
            return dataset

    # Pickle (DataLoader workers under the spawn start method) finds the class by this name
    # through the module-level __getattr__ below.
    _LocalCIFAR10.__module__ = __name__
    _LocalCIFAR10.__qualname__ = "_LocalCIFAR10"
    return _LocalCIFAR10


def _read_error(root: Path, *, train: bool, cause: object) -> str:
    names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    culprit = next((n for n in names + ["batches.meta"] if _unreadable(root / _DIR / n)), "")
    which = f"{_DIR}/{culprit}" if culprit else f"{_DIR}/{', '.join(names)}"
    return (
        "The 'data.root' parameter of load_data must hold readable CIFAR-10 python batches. Got "
        f"{str(root)!r} instead, where {which} could not be read ({cause}). Re-extract "
        "cifar-10-python.tar.gz."
    )


def _unreadable(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            entry = pickle.load(f, encoding="latin1")
    except Exception:
        return True
    if path.name == "batches.meta":
        return not isinstance(entry, dict) or "label_names" not in entry
    return not isinstance(entry, dict) or "data" not in entry or "labels" not in entry


_LAZY_CLASSES: dict[str, Callable[[], type]] = {"_LocalCIFAR10": _make_local_cifar10}
_lazy_cache: dict[str, type] = {}


def __getattr__(name: str) -> type:
    # Classes that subclass torchvision ones are built on first use, so importing this module
    # does not import torchvision.
    if name not in _LAZY_CLASSES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if name not in _lazy_cache:
        import_torchvision()
        _lazy_cache[name] = _LAZY_CLASSES[name]()
    return _lazy_cache[name]
