"""cifar10: the python pickle format read through torchvision, without its md5 check."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from autocompress.data import DataBundle, DataConfig, load_data, make_loaders

CIFAR_MEAN = torch.tensor([0.4914, 0.4822, 0.4465]).view(3, 1, 1)
CIFAR_STD = torch.tensor([0.2470, 0.2435, 0.2616]).view(3, 1, 1)


# Each writer returns what it wrote, so tests can check pixels and labels come back unchanged.
CIFAR_LABEL_NAMES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip


def write_cifar10(
    root: Path, *, per_batch: int = 3, n_test: int = 4, seed: int = 0, same_image: bool = False
) -> dict:
    """CIFAR-10 python format: pickled dicts with uint8 'data' (N, 3072; R, G, B planes of
    32x32, row-major) and int 'labels', in root/cifar-10-batches-py/."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, size=3072, dtype=np.uint8)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    written: dict[str, tuple[np.ndarray, list[int]]] = {}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        n = n_test if name == "test_batch" else per_batch
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        if same_image:
            data[:] = image
        labels = [int(v) for v in rng.integers(0, 10, size=n)]
        entry = {
            "batch_label": name,
            "labels": labels,
            "data": data,
            "filenames": [f"{name}_{i}.png" for i in range(n)],
        }
        with (folder / name).open("wb") as f:
            pickle.dump(entry, f, protocol=2)
        written[name] = (data, labels)
    meta = {"label_names": CIFAR_LABEL_NAMES, "num_cases_per_batch": per_batch, "num_vis": 3072}
    with (folder / "batches.meta").open("wb") as f:
        pickle.dump(meta, f, protocol=2)
    return written


def _labels(dataset) -> np.ndarray:
    return np.array([int(dataset[i][1]) for i in range(len(dataset))])


def _images(dataset) -> torch.Tensor:
    return torch.stack([dataset[i][0] for i in range(len(dataset))])


def test_cifar10_reads_the_python_pickle_format(tmp_path: Path) -> None:
    written = write_cifar10(tmp_path)
    bundle = load_data(DataConfig(dataset="cifar10", root=tmp_path, normalize=False), seed=0)
    assert (bundle.input_shape, bundle.num_classes, bundle.name) == ((3, 32, 32), 10, "cifar10")
    assert (len(bundle.train), len(bundle.val)) == (15, 4)

    train_data = np.concatenate([written[f"data_batch_{i}"][0] for i in range(1, 6)])
    train_labels = sum((written[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    expected = torch.from_numpy(train_data).view(-1, 3, 32, 32).float() / 255
    assert torch.allclose(_images(bundle.train), expected)
    assert _labels(bundle.train).tolist() == train_labels
    test_data, test_labels = written["test_batch"]
    expected_val = torch.from_numpy(test_data).view(-1, 3, 32, 32).float() / 255
    assert torch.allclose(_images(bundle.val), expected_val)
    assert _labels(bundle.val).tolist() == test_labels

    normalized = load_data(DataConfig(dataset="cifar10", root=tmp_path), seed=0)
    image, _ = normalized.val[0]
    assert torch.allclose(image, (expected_val[0] - CIFAR_MEAN) / CIFAR_STD, atol=1e-5)


def test_cifar10_preprocessing_turns_raw_pixels_into_the_val_tensors(tmp_path: Path) -> None:
    written = write_cifar10(tmp_path)
    # Class names are read from batches.meta, not assumed.
    renamed = [name.upper() for name in CIFAR_LABEL_NAMES]
    with (tmp_path / "cifar-10-batches-py" / "batches.meta").open("wb") as f:
        pickle.dump({"label_names": renamed}, f, protocol=2)
    bundle = load_data(DataConfig(dataset="cifar10", root=tmp_path), seed=0)
    record = bundle.preprocessing
    assert (record.input_shape, record.channel_order, record.color) == ((3, 32, 32), "CHW", "RGB")
    assert (record.raw_range, record.scale) == ((0.0, 255.0), 255.0)
    assert record.class_names == tuple(renamed)
    assert record.resize is None and record.center_crop is None
    # uint8 R, G, B planes -> / scale -> per-channel (x - mean) / std
    raw = written["test_batch"][0].reshape(-1, 3, 32, 32).astype(np.float32)
    mean, std = (
        np.asarray(v, dtype=np.float32).reshape(3, 1, 1) for v in (record.mean, record.std)
    )
    prepared = torch.from_numpy((raw / np.float32(record.scale) - mean) / std)
    assert torch.allclose(prepared, _images(bundle.val), atol=1e-5)

    plain = load_data(DataConfig(dataset="cifar10", root=tmp_path, normalize=False), seed=0)
    assert plain.preprocessing.mean is None and plain.preprocessing.std is None


def test_cifar10_augment_is_seeded_and_train_only(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    config = DataConfig(dataset="cifar10", root=tmp_path, augment=True, normalize=False)
    plain = load_data(config.model_copy(update={"augment": False}), seed=0)

    def first_epoch(bundle: DataBundle, workers: int) -> torch.Tensor:
        train, _ = make_loaders(bundle, batch_size=5, num_workers=workers, seed=3)
        return torch.cat([x for x, _ in train])

    a = first_epoch(load_data(config, seed=0), workers=0)
    b = first_epoch(load_data(config, seed=0), workers=0)
    assert torch.equal(a, b)
    assert not torch.equal(a, first_epoch(plain, workers=0))
    assert a.shape == (15, 3, 32, 32)
    # workers reseed from the loader's generator, so runs with workers repeat too
    w1 = first_epoch(load_data(config, seed=0), workers=2)
    w2 = first_epoch(load_data(config, seed=0), workers=2)
    assert torch.equal(w1, w2)
    augmented = load_data(config, seed=0)
    assert torch.equal(_images(augmented.val), _images(plain.val))


def test_cifar10_augment_differs_between_workers(tmp_path: Path) -> None:
    write_cifar10(tmp_path, same_image=True)
    config = DataConfig(dataset="cifar10", root=tmp_path, augment=True, normalize=False)
    train, _ = make_loaders(load_data(config, seed=0), batch_size=5, num_workers=2, seed=0)
    # batch 0 comes from worker 0, batch 1 from worker 1; with a copied, un-reseeded generator
    # both would crop the (identical) images at identical offsets.
    first, second = (x for x, _ in list(train)[:2])
    assert not torch.equal(first, second)


def test_cifar10_dataset_survives_pickling_for_worker_processes(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    bundle = load_data(DataConfig(dataset="cifar10", root=tmp_path), seed=0)
    clone = pickle.loads(pickle.dumps(bundle.train))
    assert torch.equal(clone[2][0], bundle.train[2][0])


def test_cifar10_missing_file_is_named(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(ValueError, match="data.root") as err:
        load_data(DataConfig(dataset="cifar10", root=tmp_path), seed=0)
    assert "cifar-10-batches-py/data_batch_3" in str(err.value)
    assert str(tmp_path) in str(err.value)


def test_cifar10_root_pointing_inside_the_batch_folder_gets_a_hint(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    inner = tmp_path / "cifar-10-batches-py"
    with pytest.raises(ValueError, match="set data.root to"):
        load_data(DataConfig(dataset="cifar10", root=inner), seed=0)


def test_cifar10_corrupt_file_is_named(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="cifar-10-batches-py/test_batch could not be read"):
        load_data(DataConfig(dataset="cifar10", root=tmp_path), seed=0)
