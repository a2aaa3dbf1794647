"""mnist: raw idx files read through torchvision."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from autocompress.data import DataConfig, load_data


def write_mnist(root: Path, *, n_train: int = 6, n_test: int = 4, seed: int = 0) -> dict:
    """MNIST idx format (big-endian header, then uint8 payload) in root/MNIST/raw/, uncompressed."""
    rng = np.random.default_rng(seed)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    written = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        # magic: two zero bytes, type 0x08 (unsigned byte), number of dimensions
        header = struct.pack(">IIII", 0x00000803, n, 28, 28)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(header + images.tobytes())
        header = struct.pack(">II", 0x00000801, n)
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(header + labels.tobytes())
        written[prefix] = (images, labels)
    return written


def _labels(dataset) -> np.ndarray:
    return np.array([int(dataset[i][1]) for i in range(len(dataset))])


def _images(dataset) -> torch.Tensor:
    return torch.stack([dataset[i][0] for i in range(len(dataset))])


def test_mnist_reads_raw_idx_files(tmp_path: Path) -> None:
    written = write_mnist(tmp_path)
    bundle = load_data(DataConfig(dataset="mnist", root=tmp_path, normalize=False), seed=0)
    assert (bundle.input_shape, bundle.num_classes, bundle.name) == ((1, 28, 28), 10, "mnist")
    assert (len(bundle.train), len(bundle.val)) == (6, 4)
    images, labels = written["train"]
    assert torch.allclose(_images(bundle.train), torch.from_numpy(images).unsqueeze(1) / 255)
    assert _labels(bundle.train).tolist() == labels.tolist()
    assert _labels(bundle.val).tolist() == written["t10k"][1].tolist()

    normalized = load_data(DataConfig(dataset="mnist", root=tmp_path), seed=0)
    expected = (torch.from_numpy(images[0]).float() / 255 - 0.1307) / 0.3081
    assert torch.allclose(normalized.train[0][0][0], expected, atol=1e-5)


def test_mnist_preprocessing_turns_raw_pixels_into_the_tensors(tmp_path: Path) -> None:
    written = write_mnist(tmp_path)
    bundle = load_data(DataConfig(dataset="mnist", root=tmp_path), seed=0)
    record = bundle.preprocessing
    assert record.input_shape == (1, 28, 28)
    assert (record.channel_order, record.color) == ("CHW", "grayscale")
    assert (record.raw_range, record.scale) == ((0.0, 255.0), 255.0)
    assert record.class_names == tuple(str(d) for d in range(10))
    raw = written["t10k"][0][:, None].astype(np.float32)
    mean, std = (
        np.asarray(v, dtype=np.float32).reshape(1, 1, 1) for v in (record.mean, record.std)
    )
    prepared = torch.from_numpy((raw / np.float32(record.scale) - mean) / std)
    assert torch.allclose(prepared, _images(bundle.val), atol=1e-5)


def test_mnist_missing_files_are_named_with_gzip_hint(tmp_path: Path) -> None:
    write_mnist(tmp_path)
    raw = tmp_path / "MNIST" / "raw"
    (raw / "t10k-labels-idx1-ubyte").rename(raw / "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(ValueError, match="MNIST/raw/t10k-labels-idx1-ubyte") as err:
        load_data(DataConfig(dataset="mnist", root=tmp_path), seed=0)
    assert "gunzip" in str(err.value) and "data.root" in str(err.value)
