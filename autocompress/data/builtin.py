"""Datasets that need nothing beyond the core dependencies: ``digits`` (scikit-learn's bundled
8x8 digits) and ``synthetic`` (Gaussian class prototypes plus noise), both held in memory."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import TensorDataset

from .bundle import DataBundle, Preprocessing
from .registry import register_dataset
from .sampling import STREAM_SPLIT, STREAM_SYNTHETIC, rng, stratified_split

if TYPE_CHECKING:
    from .config import DataConfig

__all__ = ["load_digits", "load_synthetic"]

# Synthetic data: each class's prototype is N(0, I); samples add isotropic noise whose projection
# on the line between two prototypes is this many times smaller than half their distance.
# 1.75 leaves the nearest-prototype (Bayes) classifier at roughly 75-80% on 10 classes in 64 dims:
# learnable, yet with room for a compressed model to measurably lose accuracy.
_SYNTHETIC_MARGIN = 1.75
# What raw digits pixels (counts 0..16) are divided by: it maps them to [0, 1].
_DIGITS_SCALE = 16.0


@register_dataset("digits")
def load_digits(config: DataConfig, *, seed: int) -> DataBundle:
    from sklearn import datasets as sklearn_datasets

    digits = sklearn_datasets.load_digits()
    # Pixel values are counts 0..16 of an 8x8 downsampling grid.
    images = torch.from_numpy(digits.images / _DIGITS_SCALE).float().unsqueeze(1)
    labels = torch.from_numpy(digits.target).long()
    raw = Preprocessing(
        input_shape=tuple(images.shape[1:]),
        color="grayscale",
        raw_range=(0.0, _DIGITS_SCALE),
        scale=_DIGITS_SCALE,
        class_names=[str(n) for n in digits.target_names],
    )
    return _split_tensors(images, labels, config=config, seed=seed, name="digits", raw=raw)


@register_dataset("synthetic")
def load_synthetic(config: DataConfig, *, seed: int) -> DataBundle:
    generator = rng(seed, STREAM_SYNTHETIC)
    n, classes, shape = config.synthetic_samples, config.synthetic_classes, config.synthetic_shape
    dim = math.prod(shape)
    prototypes = generator.standard_normal((classes, dim))
    labels = generator.permutation(np.arange(n) % classes)  # balanced classes
    # Prototype distances are ~sqrt(2 * dim); see _SYNTHETIC_MARGIN.
    noise_std = math.sqrt(2 * dim) / (2 * _SYNTHETIC_MARGIN)
    images = prototypes[labels] + noise_std * generator.standard_normal((n, dim))
    return _split_tensors(
        torch.from_numpy(images).float().view(n, *shape),
        torch.from_numpy(labels).long(),
        config=config,
        seed=seed,
        name="synthetic",
        # Generated values, not an image: no source range, scale or class names.
        raw=Preprocessing(input_shape=shape),
    )


def _split_tensors(
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    config: DataConfig,
    seed: int,
    name: str,
    raw: Preprocessing,
) -> DataBundle:
    """Split, standardize with the train split's statistics, and complete ``raw`` (the steps
    before standardization) with the statistics used."""
    train_idx, val_idx = stratified_split(
        labels.numpy(), val_fraction=config.val_fraction, rng=rng(seed, STREAM_SPLIT)
    )
    train_x, val_x = images[train_idx], images[val_idx]
    if config.normalize:
        # Statistics from the train split only, so nothing about val leaks into the inputs.
        mean = train_x.mean(dim=(0, 2, 3), keepdim=True)
        std = train_x.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-8)
        train_x, val_x = (train_x - mean) / std, (val_x - mean) / std
        raw = replace(raw, mean=mean.flatten().tolist(), std=std.flatten().tolist())
    return DataBundle(
        train=TensorDataset(train_x, labels[train_idx]),
        val=TensorDataset(val_x, labels[val_idx]),
        num_classes=int(labels.max()) + 1,
        input_shape=tuple(images.shape[1:]),
        name=name,
        preprocessing=raw,
    )
