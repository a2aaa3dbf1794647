"""Seeded random streams and the stratified train/val split shared by the datasets."""

from __future__ import annotations

import numpy as np

__all__ = [
    "STREAM_AUGMENT",
    "STREAM_LIMIT_TRAIN",
    "STREAM_LIMIT_VAL",
    "STREAM_SPLIT",
    "STREAM_SYNTHETIC",
    "augment_seed",
    "rng",
    "stratified_split",
]

# Independent random streams derived from one seed, so that e.g. changing limit_train does not
# change which samples land in the val split. The numbers are part of every run's data: changing
# one changes the samples a seed selects.
STREAM_SPLIT = 0
STREAM_LIMIT_TRAIN = 1
STREAM_LIMIT_VAL = 2
STREAM_SYNTHETIC = 3
STREAM_AUGMENT = 4


def rng(seed: int, stream: int) -> np.random.Generator:
    """The generator of random stream ``stream`` (one of the ``STREAM_*`` numbers) of ``seed``."""
    return np.random.default_rng([stream, seed])


def augment_seed(seed: int) -> int:
    """Seed of the torch generator that draws the training augmentations of ``seed``'s run."""
    return int(rng(seed, STREAM_AUGMENT).integers(2**62))


def stratified_split(
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
