"""Datasets for evaluating candidates: the ``data:`` section of a run's YAML and its loaders.

``load_data(config, seed=...)`` turns a :class:`DataConfig` into a :class:`DataBundle` (train and
val datasets, class count, input shape); ``make_loaders`` wraps a bundle in seeded DataLoaders.

``digits`` (scikit-learn's bundled 8x8 digits) and ``synthetic`` need nothing beyond the core
dependencies. ``cifar10``, ``mnist`` and ``imagefolder`` read a local directory through
torchvision (the ``vision`` extra), imported only when one of them is asked for; nothing is ever
downloaded. Any other dataset comes from a user entry point ``"package.module:function"``.
"""

from __future__ import annotations

import copy
import importlib
import math
import numbers
import pickle
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    RandomSampler,
    SequentialSampler,
    Subset,
    TensorDataset,
    get_worker_info,
)

__all__ = ["BUILTIN_DATASETS", "DataBundle", "DataConfig", "load_data", "make_loaders"]

BUILTIN_DATASETS = ("digits", "synthetic", "cifar10", "mnist", "imagefolder")
_ROOT_DATASETS = ("cifar10", "mnist", "imagefolder")
_AUGMENT_DATASETS = ("cifar10", "imagefolder")
_ENTRY_POINT = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_DEFAULT_IMAGE_SIZE = 32

# Standard per-channel statistics of each dataset's training split (ImageNet's for imagefolder,
# the usual choice for natural photographs of unknown origin).
_CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
_MNIST_STATS = ((0.1307,), (0.3081,))
_IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

_CIFAR10_DIR = "cifar-10-batches-py"
_CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")
_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

# Independent random streams derived from one seed, so that e.g. changing limit_train does not
# change which samples land in the val split.
_STREAM_SPLIT, _STREAM_LIMIT_TRAIN, _STREAM_LIMIT_VAL, _STREAM_SYNTHETIC, _STREAM_AUGMENT = range(5)

# Synthetic data: each class's prototype is N(0, I); samples add isotropic noise whose projection
# on the line between two prototypes is this many times smaller than half their distance.
# 1.75 leaves the nearest-prototype (Bayes) classifier at roughly 75-80% on 10 classes in 64 dims:
# learnable, yet with room for a compressed model to measurably lose accuracy.
_SYNTHETIC_MARGIN = 1.75


class DataConfig(BaseModel):
    """The ``data:`` section of a run config. Errors are located at the offending field.

    ``dataset``: one of :data:`BUILTIN_DATASETS` or ``"package.module:function"``, a function
    called as ``function(root=root, seed=seed)`` that returns ``(train_dataset, val_dataset,
    num_classes, input_shape)``. ``root``: the local directory of cifar10 / mnist / imagefolder.
    ``val_fraction``: share held out for validation where a dataset has no official split
    (digits, synthetic, a single imagefolder tree). ``batch_size``/``num_workers``: for
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
        if value not in BUILTIN_DATASETS and not _ENTRY_POINT.match(value):
            names = ", ".join(repr(n) for n in BUILTIN_DATASETS)
            raise ValueError(
                f"The 'data.dataset' parameter of DataConfig must be one of {names} or an entry "
                f"point 'package.module:function'. Got {value!r} instead."
            )
        return value

    @field_validator("root")
    @classmethod
    def _check_root(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        dataset = info.data.get("dataset")
        if value is None and dataset in _ROOT_DATASETS:
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
        if dataset is not None and dataset != "imagefolder":
            raise ValueError(
                "The 'data.image_size' parameter of DataConfig must be left unset unless "
                f"data.dataset is 'imagefolder' (got dataset {dataset!r}). "
                f"Got {value!r} instead."
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
        # Crops and flips are wrong for digits (a flipped 2 is no 2) and unknown for entry points.
        if value and dataset is not None and dataset not in _AUGMENT_DATASETS:
            raise ValueError(
                "The 'data.augment' parameter of DataConfig must be false unless data.dataset "
                f"is 'cifar10' or 'imagefolder' (got dataset {dataset!r}). Got True instead."
            )
        return value


@dataclass(frozen=True)
class DataBundle:
    """What a dataset provides to an evaluator: map-style datasets yielding (CHW float tensor,
    int label) pairs, the class count, and the (channels, height, width) of one input."""

    train: Dataset
    val: Dataset
    num_classes: int
    input_shape: tuple[int, int, int]
    name: str


def load_data(config: DataConfig, *, seed: int) -> DataBundle:
    """Build the train/val datasets described by ``config``.

    ``seed`` fixes the train/val split (digits, synthetic, single-folder imagefolder), the
    synthetic data itself, the ``limit_train``/``limit_val`` subsets and the augmentation stream.
    """
    _check_seed(seed, where="load_data")
    loaders: dict[str, Callable[[DataConfig, int], DataBundle]] = {
        "digits": _load_digits,
        "synthetic": _load_synthetic,
        "cifar10": _load_cifar10,
        "mnist": _load_mnist,
        "imagefolder": _load_imagefolder,
    }
    bundle = loaders.get(config.dataset, _load_entry_point)(config, seed)
    return DataBundle(
        train=_limit(bundle.train, config.limit_train, _rng(seed, _STREAM_LIMIT_TRAIN)),
        val=_limit(bundle.val, config.limit_val, _rng(seed, _STREAM_LIMIT_VAL)),
        num_classes=bundle.num_classes,
        input_shape=bundle.input_shape,
        name=bundle.name,
    )


def make_loaders(
    bundle: DataBundle, *, batch_size: int, num_workers: int, seed: int
) -> tuple[DataLoader, DataLoader]:
    """Train loader (shuffled by a generator seeded with ``seed``) and val loader (fixed order).

    In-memory TensorDatasets are served a whole batch per index lookup, which is many times
    faster than collating single samples and yields the same batches. Such loaders report
    ``batch_size=None``; read the batch size from the batches themselves.
    """
    for name, value, minimum in (("batch_size", batch_size, 1), ("num_workers", num_workers, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(
                f"The '{name}' parameter of make_loaders must be an int >= {minimum}. "
                f"Got {value!r} instead."
            )
    _check_seed(seed, where="make_loaders")
    # The val generator only seeds worker processes; without one DataLoader would draw that seed
    # from torch's global RNG.
    train_generator = torch.Generator().manual_seed(seed)
    val_generator = torch.Generator().manual_seed(seed + 1)
    return (
        _loader(bundle.train, batch_size, num_workers, shuffle=True, generator=train_generator),
        _loader(bundle.val, batch_size, num_workers, shuffle=False, generator=val_generator),
    )


def _loader(
    dataset: Dataset,
    batch_size: int,
    num_workers: int,
    *,
    shuffle: bool,
    generator: torch.Generator,
) -> DataLoader:
    # Workers are not persistent: loaders kept alive with persistent workers were seen to stall
    # 10 s at pytest session end (worker join timeouts), and re-forking them costs tens of ms.
    common: dict[str, Any] = {"num_workers": num_workers, "generator": generator}
    if isinstance(dataset, TensorDataset):
        order = (
            RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)
        )
        sampler = BatchSampler(order, batch_size=batch_size, drop_last=False)
        return DataLoader(dataset, sampler=sampler, batch_size=None, **common)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, **common)


# --- in-memory datasets ------------------------------------------------------------------------


def _load_digits(config: DataConfig, seed: int) -> DataBundle:
    from sklearn.datasets import load_digits

    digits = load_digits()
    # Pixel values are counts 0..16 of an 8x8 downsampling grid.
    images = torch.from_numpy(digits.images / 16.0).float().unsqueeze(1)
    labels = torch.from_numpy(digits.target).long()
    return _split_tensors(images, labels, config=config, seed=seed, name="digits")


def _load_synthetic(config: DataConfig, seed: int) -> DataBundle:
    rng = _rng(seed, _STREAM_SYNTHETIC)
    n, classes, shape = config.synthetic_samples, config.synthetic_classes, config.synthetic_shape
    dim = math.prod(shape)
    prototypes = rng.standard_normal((classes, dim))
    labels = rng.permutation(np.arange(n) % classes)  # balanced classes
    # Prototype distances are ~sqrt(2 * dim); see _SYNTHETIC_MARGIN.
    noise_std = math.sqrt(2 * dim) / (2 * _SYNTHETIC_MARGIN)
    images = prototypes[labels] + noise_std * rng.standard_normal((n, dim))
    return _split_tensors(
        torch.from_numpy(images).float().view(n, *shape),
        torch.from_numpy(labels).long(),
        config=config,
        seed=seed,
        name="synthetic",
    )


def _split_tensors(
    images: torch.Tensor, labels: torch.Tensor, *, config: DataConfig, seed: int, name: str
) -> DataBundle:
    train_idx, val_idx = _stratified_split(
        labels.numpy(), val_fraction=config.val_fraction, rng=_rng(seed, _STREAM_SPLIT)
    )
    train_x, val_x = images[train_idx], images[val_idx]
    if config.normalize:
        # Statistics from the train split only, so nothing about val leaks into the inputs.
        mean = train_x.mean(dim=(0, 2, 3), keepdim=True)
        std = train_x.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-8)
        train_x, val_x = (train_x - mean) / std, (val_x - mean) / std
    return DataBundle(
        train=TensorDataset(train_x, labels[train_idx]),
        val=TensorDataset(val_x, labels[val_idx]),
        num_classes=int(labels.max()) + 1,
        input_shape=tuple(images.shape[1:]),
        name=name,
    )


def _stratified_split(
    labels: np.ndarray, *, val_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, val) indices with each class split in the proportion ``val_fraction``."""
    classes, counts = np.unique(labels, return_counts=True)
    quotas = counts * val_fraction
    n_val = np.floor(quotas).astype(int)
    # Largest-remainder rounding: the val split gets round(N * val_fraction) samples in total.
    leftover = int(round(len(labels) * val_fraction)) - int(n_val.sum())
    n_val[np.argsort(-(quotas - n_val), kind="stable")[:leftover]] += 1
    # Every class with two or more samples appears on both sides.
    n_val = np.where(counts >= 2, np.clip(n_val, 1, counts - 1), 0)
    train, val = [], []
    for cls, k in zip(classes, n_val, strict=True):
        members = rng.permutation(np.flatnonzero(labels == cls))
        val.append(members[:k])
        train.append(members[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def _limit(dataset: Dataset, limit: int | None, rng: np.random.Generator) -> Dataset:
    n = len(dataset)  # type: ignore[arg-type]
    if limit is None or limit >= n:
        return dataset
    indices = np.sort(rng.permutation(n)[:limit])
    if isinstance(dataset, TensorDataset):
        # Stay a TensorDataset so make_loaders keeps its batched fast path.
        return TensorDataset(*(t[torch.from_numpy(indices)] for t in dataset.tensors))
    return Subset(dataset, indices.tolist())


# --- torchvision datasets ----------------------------------------------------------------------


def _load_cifar10(config: DataConfig, seed: int) -> DataBundle:
    tv = _import_torchvision()
    root = _existing_root(config)
    folder = root / _CIFAR10_DIR
    missing = [f"{_CIFAR10_DIR}/{f}" for f in _CIFAR10_FILES if not (folder / f).is_file()]
    if missing:
        hint = ""
        if (root / "data_batch_1").is_file():
            hint = f" The batch files sit directly in it: set data.root to {str(root.parent)!r}."
        raise ValueError(
            "The 'data.root' parameter of load_data must be a directory holding CIFAR-10 in its "
            f"python format: {_CIFAR10_DIR}/data_batch_1..5, test_batch and batches.meta. Got "
            f"{str(root)!r} instead, which lacks {', '.join(missing)}.{hint}"
        )
    val_tf = _transforms(tv, _CIFAR10_STATS, normalize=config.normalize)
    train_tf = val_tf
    if config.augment:
        augment = _RandomCropFlip(size=32, padding=4, seed=_augment_seed(seed))
        train_tf = _transforms(tv, _CIFAR10_STATS, normalize=config.normalize, augment=augment)
    cls = __getattr__("_LocalCIFAR10")
    train = cls.read(root, train=True, transform=train_tf)
    val = cls.read(root, train=False, transform=val_tf)
    return DataBundle(train=train, val=val, num_classes=10, input_shape=(3, 32, 32), name="cifar10")


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
                raise ValueError(_cifar_read_error(root, train=train, cause=err)) from err
            labels = np.asarray(dataset.targets)
            out_of_range = labels.size > 0 and (labels.min() < 0 or labels.max() > 9)
            if len(labels) != len(dataset.data) or out_of_range:
                raise ValueError(
                    _cifar_read_error(
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


def _cifar_read_error(root: Path, *, train: bool, cause: object) -> str:
    names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    culprit = next(
        (n for n in names + ["batches.meta"] if _unreadable(root / _CIFAR10_DIR / n)), ""
    )
    which = f"{_CIFAR10_DIR}/{culprit}" if culprit else f"{_CIFAR10_DIR}/{', '.join(names)}"
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
        _import_torchvision()
        _lazy_cache[name] = _LAZY_CLASSES[name]()
    return _lazy_cache[name]


def _load_mnist(config: DataConfig, seed: int) -> DataBundle:
    tv = _import_torchvision()
    root = _existing_root(config)
    raw = root / "MNIST" / "raw"
    missing = [f for f in _MNIST_FILES if not (raw / f).is_file()]
    if missing:
        zipped = [f for f in missing if (raw / f"{f}.gz").is_file()]
        hint = f" Decompress {', '.join(f + '.gz' for f in zipped)} (gunzip)." if zipped else ""
        raise ValueError(
            "The 'data.root' parameter of load_data must be a directory holding MNIST as "
            f"MNIST/raw/{{{', '.join(_MNIST_FILES)}}}. Got {str(root)!r} instead, which lacks "
            f"{', '.join('MNIST/raw/' + f for f in missing)}.{hint}"
        )
    transform = _transforms(tv, _MNIST_STATS, normalize=config.normalize)
    splits = []
    for train in (True, False):
        try:
            dataset = tv.datasets.MNIST(str(root), train=train, transform=transform, download=False)
        except Exception as err:
            prefix = "train" if train else "t10k"
            raise ValueError(
                "The 'data.root' parameter of load_data must hold readable MNIST idx files. Got "
                f"{str(root)!r} instead, where MNIST/raw/{prefix}-*-ubyte could not be read "
                f"({err})."
            ) from err
        if len(dataset.data) != len(dataset.targets):
            raise ValueError(
                "The 'data.root' parameter of load_data must hold MNIST idx files with as many "
                f"labels as images. Got {str(root)!r} instead ({len(dataset.data)} images, "
                f"{len(dataset.targets)} labels)."
            )
        splits.append(dataset)
    height, width = splits[0].data.shape[1:]
    return DataBundle(
        train=splits[0],
        val=splits[1],
        num_classes=10,
        input_shape=(1, int(height), int(width)),
        name="mnist",
    )


def _load_imagefolder(config: DataConfig, seed: int) -> DataBundle:
    tv = _import_torchvision()
    root = _existing_root(config)
    size = config.image_size or _DEFAULT_IMAGE_SIZE
    eval_tf = _transforms(
        tv, _IMAGENET_STATS, normalize=config.normalize, resize=size, center_crop=True
    )
    train_tf = eval_tf
    if config.augment:
        augment = _RandomCropFlip(size=size, padding=max(1, size // 8), seed=_augment_seed(seed))
        train_tf = _transforms(
            tv, _IMAGENET_STATS, normalize=config.normalize, resize=size, augment=augment
        )
    has_train, has_val = (root / "train").is_dir(), (root / "val").is_dir()
    if has_train != has_val:
        raise ValueError(
            "The 'data.root' parameter of load_data must hold either both train/ and val/ "
            "subfolders of class folders, or the class folders themselves. Got "
            f"{str(root)!r} instead, which has only {'train/' if has_train else 'val/'}."
        )
    if has_train:
        train = _image_folder(tv, root / "train", train_tf, root=root)
        val = _image_folder(tv, root / "val", eval_tf, root=root)
        if train.classes != val.classes:
            raise ValueError(
                "The 'data.root' parameter of load_data must have the same class folders in "
                f"train/ and val/. Got {str(root)!r} instead, with train classes "
                f"{train.classes} and val classes {val.classes}."
            )
        classes = train.classes
    else:
        full = _image_folder(tv, root, train_tf, root=root)
        eval_view = copy.copy(full)  # shares the file list; differs only in its transform
        eval_view.transform = eval_tf
        train_idx, val_idx = _stratified_split(
            np.asarray(full.targets),
            val_fraction=config.val_fraction,
            rng=_rng(seed, _STREAM_SPLIT),
        )
        train, val = Subset(full, train_idx.tolist()), Subset(eval_view, val_idx.tolist())
        classes = full.classes
    return DataBundle(
        train=train,
        val=val,
        num_classes=len(classes),
        input_shape=(3, size, size),
        name="imagefolder",
    )


def _image_folder(tv: Any, path: Path, transform: Callable, *, root: Path) -> Any:
    try:
        return tv.datasets.ImageFolder(str(path), transform=transform)
    except FileNotFoundError as err:
        raise ValueError(
            "The 'data.root' parameter of load_data must hold one folder of images per class "
            f"(optionally under train/ and val/). Got {str(root)!r} instead: {err}"
        ) from err


def _transforms(
    tv: Any,
    stats: tuple[tuple[float, ...], tuple[float, ...]],
    *,
    normalize: bool,
    resize: int | None = None,
    center_crop: bool = False,
    augment: Callable | None = None,
) -> Callable:
    steps: list[Callable] = []
    if resize is not None:
        steps.append(tv.transforms.Resize(resize))  # shorter side to `resize`, aspect kept
    if center_crop:
        steps.append(tv.transforms.CenterCrop(resize))
    steps.append(tv.transforms.ToTensor())
    if augment is not None:
        steps.append(augment)  # crops the un-normalized image, so padding is black as usual
    if normalize:
        steps.append(tv.transforms.Normalize(*stats))
    return tv.transforms.Compose(steps)


class _RandomCropFlip:
    """Zero-pad, random crop to ``size`` x ``size`` and random horizontal flip of a CHW tensor.

    torchvision's RandomCrop/RandomHorizontalFlip draw from torch's global RNG; this draws from
    its own seeded generator so runs replay exactly. Inside a DataLoader worker it reseeds once
    from the worker's seed (derived from the loader's seeded generator): otherwise each worker
    would start from the same copied state and repeat the others' crops.
    """

    def __init__(self, *, size: int, padding: int, seed: int) -> None:
        self.size = size
        self.padding = padding
        self._generator = torch.Generator().manual_seed(seed)
        self._worker_id: int | None = None

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        worker = get_worker_info()
        if worker is not None and worker.id != self._worker_id:
            self._generator.manual_seed(worker.seed)
            self._worker_id = worker.id
        p = self.padding
        padded = torch.nn.functional.pad(image, (p, p, p, p))
        height, width = padded.shape[-2:]
        top = int(torch.randint(0, height - self.size + 1, (), generator=self._generator))
        left = int(torch.randint(0, width - self.size + 1, (), generator=self._generator))
        crop = padded[..., top : top + self.size, left : left + self.size]
        if torch.rand((), generator=self._generator) < 0.5:
            crop = crop.flip(-1)
        return crop


def _import_torchvision() -> Any:
    try:
        import torchvision
        import torchvision.datasets
        import torchvision.transforms
    except ImportError as err:
        raise ImportError(
            "The cifar10, mnist and imagefolder datasets need torchvision. "
            "Install it with: pip install autocompress[vision]"
        ) from err
    return torchvision


def _existing_root(config: DataConfig) -> Path:
    root = config.root
    if root is None:
        # DataConfig rejects this; a config built with model_construct/model_copy skips that.
        raise ValueError(
            "The 'data.root' parameter of load_data must be a directory path when data.dataset "
            f"is {config.dataset!r}. Got None instead."
        )
    if not root.is_dir():
        state = "it is not a directory" if root.exists() else "it does not exist"
        raise ValueError(
            "The 'data.root' parameter of load_data must be an existing directory for dataset "
            f"{config.dataset!r}. Got {str(root)!r} instead ({state})."
        )
    return root


# --- user entry points -------------------------------------------------------------------------


def _load_entry_point(config: DataConfig, seed: int) -> DataBundle:
    spec = config.dataset
    if not _ENTRY_POINT.match(spec):
        raise ValueError(  # reachable only for configs that bypassed validation
            f"The 'data.dataset' parameter of load_data must be one of {BUILTIN_DATASETS} or "
            f"'package.module:function'. Got {spec!r} instead."
        )
    module_name, func_name = spec.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(
            "The 'data.dataset' parameter of load_data must name an importable module in "
            f"'package.module:function'. Got {spec!r} instead ({err})."
        ) from err
    func = getattr(module, func_name, None)
    if not callable(func):
        raise ValueError(
            "The 'data.dataset' parameter of load_data must name a function of its module in "
            f"'package.module:function'. Got {spec!r} instead (module {module_name!r} has no "
            f"callable {func_name!r})."
        )
    result = func(root=config.root, seed=seed)
    return _check_entry_result(spec, result)


def _check_entry_result(spec: str, result: object) -> DataBundle:
    def fail(problem: str) -> ValueError:
        return ValueError(
            f"The 'data.dataset' entry point {spec!r} of load_data must return (train_dataset, "
            f"val_dataset, num_classes, input_shape). Got {_short_repr(result)} instead "
            f"({problem})."
        )

    if not isinstance(result, tuple | list) or len(result) != 4:
        raise fail("not a 4-tuple")
    train, val, num_classes, input_shape = result
    for label, dataset in (("train_dataset", train), ("val_dataset", val)):
        if not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")):
            raise fail(f"{label} has no __getitem__/__len__")
    if not _is_int(num_classes) or num_classes < 2:
        raise fail("num_classes must be an int >= 2")
    shape = tuple(input_shape) if isinstance(input_shape, tuple | list) else ()
    if len(shape) != 3 or not all(_is_int(d) and d > 0 for d in shape):
        raise fail("input_shape must be three positive ints (channels, height, width)")
    return DataBundle(
        train=train,
        val=val,
        num_classes=int(num_classes),
        input_shape=(int(shape[0]), int(shape[1]), int(shape[2])),
        name=spec,
    )


def _is_int(value: object) -> bool:
    # numbers.Integral admits numpy integers (a common num_classes); bool is excluded on purpose.
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _short_repr(value: object, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- seeds -------------------------------------------------------------------------------------


def _check_seed(seed: int, *, where: str) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(
            f"The 'seed' parameter of {where} must be a non-negative int. Got {seed!r} instead."
        )


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([stream, seed])


def _augment_seed(seed: int) -> int:
    return int(_rng(seed, _STREAM_AUGMENT).integers(2**62))
