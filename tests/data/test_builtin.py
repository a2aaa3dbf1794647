"""digits and synthetic: in-memory datasets split, normalized and generated from one seed."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from sklearn.neighbors import NearestCentroid

from autocompress.data import DataBundle, DataConfig, load_data
from autocompress.data.sampling import STREAM_SPLIT, rng, stratified_split


def _labels(dataset) -> np.ndarray:
    return np.array([int(dataset[i][1]) for i in range(len(dataset))])


@pytest.fixture(scope="module")
def digits() -> DataBundle:
    return load_data(DataConfig(), seed=0)


def test_digits_shapes_classes_and_split_sizes(digits: DataBundle) -> None:
    assert digits.name == "digits"
    assert digits.input_shape == (1, 8, 8)
    assert digits.num_classes == 10
    assert len(digits.train) + len(digits.val) == 1797
    assert len(digits.val) == round(1797 * 0.2)
    image, label = digits.train[0]
    assert image.shape == (1, 8, 8) and image.dtype == torch.float32
    assert label.dtype == torch.int64


def test_digits_split_is_stratified(digits: DataBundle) -> None:
    train, val = Counter(_labels(digits.train)), Counter(_labels(digits.val))
    for cls in range(10):
        total = train[cls] + val[cls]
        assert abs(val[cls] - 0.2 * total) <= 1


def test_digits_split_is_deterministic_per_seed() -> None:
    a = load_data(DataConfig(), seed=7)
    b = load_data(DataConfig(), seed=7)
    c = load_data(DataConfig(), seed=8)
    assert torch.equal(a.val.tensors[0], b.val.tensors[0])
    assert torch.equal(a.train.tensors[1], b.train.tensors[1])
    assert not torch.equal(a.val.tensors[1], c.val.tensors[1])


def test_digits_normalization_uses_train_statistics(digits: DataBundle) -> None:
    train_x = digits.train.tensors[0]
    assert abs(float(train_x.mean())) < 1e-4
    assert abs(float(train_x.std()) - 1.0) < 1e-3
    # val is standardized with the train statistics, so it is only close to zero mean
    assert abs(float(digits.val.tensors[0].mean())) < 0.1

    raw = load_data(DataConfig(normalize=False), seed=0)
    assert float(raw.train.tensors[0].min()) == 0.0
    assert float(raw.train.tensors[0].max()) == 1.0


def test_digits_preprocessing_turns_raw_images_into_the_val_tensors(digits: DataBundle) -> None:
    from sklearn import datasets as sklearn_datasets

    record = digits.preprocessing
    assert record.input_shape == (1, 8, 8)
    assert (record.channel_order, record.color) == ("CHW", "grayscale")
    assert (record.raw_range, record.scale) == ((0.0, 16.0), 16.0)
    assert record.class_names == tuple(str(d) for d in range(10))
    assert record.resize is None and record.center_crop is None
    # A deployer's pipeline, from the record alone: raw 0..16 counts -> / scale -> standardize.
    source = sklearn_datasets.load_digits()
    raw = source.images.astype(np.float32)
    _, val_idx = stratified_split(source.target, val_fraction=0.2, rng=rng(0, STREAM_SPLIT))
    mean, std = (
        np.asarray(v, dtype=np.float32).reshape(-1, 1, 1) for v in (record.mean, record.std)
    )
    prepared = (raw[val_idx, None] / np.float32(record.scale) - mean) / std
    # Bit for bit: float32 subtraction and division are exactly rounded in numpy and torch alike.
    assert torch.equal(torch.from_numpy(prepared), digits.val.tensors[0])
    # The statistics are the train split's, the numbers the bundle's tensors were built with.
    unnormalized = load_data(DataConfig(normalize=False), seed=0).train.tensors[0]
    assert record.mean[0] == pytest.approx(float(unnormalized.mean()), rel=1e-6)
    assert record.std[0] == pytest.approx(float(unnormalized.std()), rel=1e-6)


def test_digits_without_normalize_records_no_statistics() -> None:
    record = load_data(DataConfig(normalize=False), seed=0).preprocessing
    assert record.mean is None and record.std is None and record.scale == 16.0


def test_val_fraction_changes_split_sizes() -> None:
    bundle = load_data(DataConfig(val_fraction=0.5), seed=0)
    assert len(bundle.val) == round(1797 * 0.5)


# --- synthetic ---------------------------------------------------------------------------------


def test_synthetic_is_learnable_but_not_trivial() -> None:
    bundle = load_data(DataConfig(dataset="synthetic"), seed=0)
    assert bundle.input_shape == (1, 8, 8) and bundle.num_classes == 10
    assert (len(bundle.train), len(bundle.val)) == (1600, 400)
    x_train, y_train = (
        t.flatten(1).numpy() if t.ndim > 1 else t.numpy() for t in bundle.train.tensors
    )
    x_val, y_val = (t.flatten(1).numpy() if t.ndim > 1 else t.numpy() for t in bundle.val.tensors)
    accuracy = NearestCentroid().fit(x_train, y_train).score(x_val, y_val)
    assert 0.5 < accuracy < 0.97  # chance is 0.1


def test_synthetic_respects_shape_classes_and_seed() -> None:
    config = DataConfig(
        dataset="synthetic", synthetic_samples=60, synthetic_classes=3, synthetic_shape=(3, 4, 5)
    )
    bundle = load_data(config, seed=1)
    assert bundle.input_shape == (3, 4, 5) and bundle.num_classes == 3
    assert bundle.train[0][0].shape == (3, 4, 5)
    assert set(_labels(bundle.val)) == {0, 1, 2}
    again = load_data(config, seed=1)
    other = load_data(config, seed=2)
    assert torch.equal(bundle.train.tensors[0], again.train.tensors[0])
    assert not torch.equal(bundle.train.tensors[0], other.train.tensors[0])


def test_synthetic_preprocessing_records_the_train_statistics_used() -> None:
    config = DataConfig(
        dataset="synthetic", synthetic_samples=60, synthetic_classes=3, synthetic_shape=(3, 4, 5)
    )
    bundle = load_data(config, seed=1)
    raw = load_data(config.model_copy(update={"normalize": False}), seed=1)
    record = bundle.preprocessing
    assert record.input_shape == (3, 4, 5) and len(record.mean) == len(record.std) == 3
    # Not an image: nothing to scale, no colour, no class names.
    assert (record.color, record.raw_range, record.scale, record.class_names) == (None,) * 4
    assert raw.preprocessing.mean is None
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in (record.mean, record.std))
    assert torch.allclose((raw.val.tensors[0] - mean) / std, bundle.val.tensors[0], atol=1e-6)
