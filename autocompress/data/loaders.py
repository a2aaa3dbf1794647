"""From a config to batches: :func:`load_data` (datasets, limited to seeded subsets) and
:func:`make_loaders` (seeded DataLoaders)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    RandomSampler,
    SequentialSampler,
    Subset,
    TensorDataset,
)

from .bundle import DataBundle, Preprocessing
from .registry import get_dataset
from .sampling import STREAM_LIMIT_TRAIN, STREAM_LIMIT_VAL, rng

if TYPE_CHECKING:
    from .config import DataConfig

__all__ = ["load_data", "make_loaders"]


def load_data(config: DataConfig, *, seed: int) -> DataBundle:
    """Build the train/val datasets described by ``config``.

    ``seed`` fixes the train/val split (digits, synthetic, single-folder imagefolder), the
    synthetic data itself, the ``limit_train``/``limit_val`` subsets and the augmentation stream.
    """
    _check_seed(seed, where="load_data")
    dataset = get_dataset(config.dataset)
    bundle = dataset.loader(config, seed=seed)
    if not isinstance(bundle, DataBundle):
        raise TypeError(
            f"The loader of dataset {dataset.name!r} must return a DataBundle. "
            f"Got {type(bundle).__name__} instead."
        )
    _check_preprocessing(bundle, where=f"The loader of dataset {dataset.name!r}")
    return DataBundle(
        train=_limit(bundle.train, config.limit_train, rng(seed, STREAM_LIMIT_TRAIN)),
        val=_limit(bundle.val, config.limit_val, rng(seed, STREAM_LIMIT_VAL)),
        num_classes=bundle.num_classes,
        input_shape=bundle.input_shape,
        name=bundle.name,
        preprocessing=bundle.preprocessing,
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


def _limit(dataset: Dataset, limit: int | None, rng: np.random.Generator) -> Dataset:
    n = len(dataset)  # type: ignore[arg-type]
    if limit is None or limit >= n:
        return dataset
    indices = np.sort(rng.permutation(n)[:limit])
    if isinstance(dataset, TensorDataset):
        # Stay a TensorDataset so make_loaders keeps its batched fast path.
        return TensorDataset(*(t[torch.from_numpy(indices)] for t in dataset.tensors))
    return Subset(dataset, indices.tolist())


def _check_preprocessing(bundle: DataBundle, *, where: str) -> None:
    """A recorded preprocessing the model's inputs do not match would mislead every deployer."""
    record = bundle.preprocessing
    if record is None:
        return
    if not isinstance(record, Preprocessing):
        raise TypeError(
            f"{where} must return a DataBundle whose preprocessing is a Preprocessing or None. "
            f"Got {type(record).__name__} instead."
        )
    if record.input_shape != tuple(bundle.input_shape):
        raise ValueError(
            f"{where} must return a DataBundle whose preprocessing.input_shape equals its "
            f"input_shape {tuple(bundle.input_shape)}. Got {record.input_shape} instead."
        )
    names = record.class_names
    if names is not None and len(names) != bundle.num_classes:
        raise ValueError(
            f"{where} must return a DataBundle with one preprocessing.class_names entry per class "
            f"({bundle.num_classes}). Got {len(names)} names instead."
        )


def _check_seed(seed: int, *, where: str) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(
            f"The 'seed' parameter of {where} must be a non-negative int. Got {seed!r} instead."
        )
