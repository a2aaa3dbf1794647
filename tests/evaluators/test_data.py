from __future__ import annotations

import pickle
import struct
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError
from sklearn.neighbors import NearestCentroid
from torch.utils.data import TensorDataset

from autocompress.evaluators.data import (
    BUILTIN_DATASETS,
    DataBundle,
    DataConfig,
    load_data,
    make_loaders,
)

CIFAR_MEAN = torch.tensor([0.4914, 0.4822, 0.4465]).view(3, 1, 1)
CIFAR_STD = torch.tensor([0.2470, 0.2435, 0.2616]).view(3, 1, 1)


# --- tiny on-disk datasets in the exact formats torchvision reads ------------------------------
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


# One solid color per class, so a pixel's value identifies the class after any resize or crop.
CLASS_COLORS = {"cat": (255, 0, 0), "dog": (0, 255, 0), "emu": (0, 0, 255)}


def write_image_tree(folder: Path, *, per_class: int, size: tuple[int, int] = (20, 12)) -> None:
    """An ImageFolder tree: folder/<class>/<i>.png, solid-colored RGB images of ``size``."""
    for name, color in CLASS_COLORS.items():
        (folder / name).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", size, color).save(folder / name / f"{i}.png")


def _labels(dataset) -> np.ndarray:
    return np.array([int(dataset[i][1]) for i in range(len(dataset))])


def _images(dataset) -> torch.Tensor:
    return torch.stack([dataset[i][0] for i in range(len(dataset))])


# --- digits ------------------------------------------------------------------------------------


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


# --- limits and loaders ------------------------------------------------------------------------


def test_limits_take_deterministic_subsets() -> None:
    config = DataConfig(limit_train=100, limit_val=30)
    a, b, c = (load_data(config, seed=s) for s in (0, 0, 1))
    assert (len(a.train), len(a.val)) == (100, 30)
    assert isinstance(a.train, TensorDataset)  # keeps make_loaders' batched fast path
    assert torch.equal(a.train.tensors[0], b.train.tensors[0])
    assert not torch.equal(a.train.tensors[0], c.train.tensors[0])
    # a limit larger than the split keeps the whole split
    whole = load_data(DataConfig(limit_val=10_000), seed=0)
    assert len(whole.val) == 359


def test_make_loaders_shuffles_train_by_seed_and_keeps_val_order(digits: DataBundle) -> None:
    global_state = torch.get_rng_state()

    def epoch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        train, val = make_loaders(digits, batch_size=64, num_workers=0, seed=seed)
        return torch.cat([y for _, y in train]), torch.cat([y for _, y in val])

    (train_a, val_a), (train_b, _), (train_c, _) = epoch(0), epoch(0), epoch(1)
    assert torch.equal(train_a, train_b) and not torch.equal(train_a, train_c)
    assert sorted(train_a.tolist()) == sorted(digits.train.tensors[1].tolist())
    assert torch.equal(val_a, digits.val.tensors[1])
    assert torch.equal(torch.get_rng_state(), global_state)  # no draw from the global RNG

    train, _ = make_loaders(digits, batch_size=100, num_workers=0, seed=0)
    sizes = [len(y) for _, y in train]
    assert sizes[:-1] == [100] * (len(sizes) - 1) and sum(sizes) == len(digits.train)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"batch_size": 0, "num_workers": 0, "seed": 0}, "batch_size"),
        ({"batch_size": 8, "num_workers": -1, "seed": 0}, "num_workers"),
        ({"batch_size": 8, "num_workers": 0, "seed": -3}, "seed"),
    ],
)
def test_make_loaders_rejects_bad_arguments(digits: DataBundle, kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=f"The '{name}' parameter of make_loaders"):
        make_loaders(digits, **kwargs)


def test_load_data_rejects_negative_seed() -> None:
    with pytest.raises(ValueError, match="The 'seed' parameter of load_data"):
        load_data(DataConfig(), seed=-1)


# --- CIFAR-10 ----------------------------------------------------------------------------------


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


# --- MNIST -------------------------------------------------------------------------------------


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


def test_mnist_missing_files_are_named_with_gzip_hint(tmp_path: Path) -> None:
    write_mnist(tmp_path)
    raw = tmp_path / "MNIST" / "raw"
    (raw / "t10k-labels-idx1-ubyte").rename(raw / "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(ValueError, match="MNIST/raw/t10k-labels-idx1-ubyte") as err:
        load_data(DataConfig(dataset="mnist", root=tmp_path), seed=0)
    assert "gunzip" in str(err.value) and "data.root" in str(err.value)


# --- ImageFolder -------------------------------------------------------------------------------


def _color_label(image: torch.Tensor) -> int:
    """Index of the class whose solid color this (un-normalized) image shows."""
    rgb = tuple(round(float(v) * 255) for v in image.mean(dim=(1, 2)))
    return sorted(CLASS_COLORS).index(next(k for k, c in CLASS_COLORS.items() if c == rgb))


def test_imagefolder_with_train_and_val_subfolders(tmp_path: Path) -> None:
    write_image_tree(tmp_path / "train", per_class=3)
    write_image_tree(tmp_path / "val", per_class=2)
    config = DataConfig(dataset="imagefolder", root=tmp_path, image_size=16, normalize=False)
    bundle = load_data(config, seed=0)
    assert (bundle.input_shape, bundle.num_classes) == ((3, 16, 16), 3)
    assert (len(bundle.train), len(bundle.val)) == (9, 6)
    for dataset in (bundle.train, bundle.val):
        for image, label in (dataset[i] for i in range(len(dataset))):
            assert image.shape == (3, 16, 16)
            assert _color_label(image) == label  # class folders map to sorted label indices

    default = load_data(DataConfig(dataset="imagefolder", root=tmp_path), seed=0)
    assert default.input_shape == (3, 32, 32) and default.train[0][0].shape == (3, 32, 32)
    normalized = default.train[0][0][:, 0, 0]  # a red pixel, ImageNet-normalized
    expected = (torch.tensor([1.0, 0.0, 0.0]) - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor(
        [0.229, 0.224, 0.225]
    )
    assert torch.allclose(normalized, expected, atol=1e-5)


def test_imagefolder_single_folder_is_split_by_val_fraction(tmp_path: Path) -> None:
    write_image_tree(tmp_path, per_class=5)
    config = DataConfig(dataset="imagefolder", root=tmp_path, image_size=8, val_fraction=0.4)
    a, b, c = (load_data(config, seed=s) for s in (0, 0, 1))
    assert (len(a.train), len(a.val), a.num_classes) == (9, 6, 3)
    assert Counter(_labels(a.val)) == {0: 2, 1: 2, 2: 2}  # stratified
    assert a.val.indices == b.val.indices and a.val.indices != c.val.indices
    assert not set(a.train.indices) & set(a.val.indices)


def test_imagefolder_augment_leaves_val_untouched(tmp_path: Path) -> None:
    write_image_tree(tmp_path, per_class=4)
    config = DataConfig(dataset="imagefolder", root=tmp_path, image_size=8, augment=True)
    bundle = load_data(config, seed=0)
    plain = load_data(config.model_copy(update={"augment": False}), seed=0)
    assert torch.equal(_images(bundle.val), _images(plain.val))
    assert bundle.train[0][0].shape == (3, 8, 8)


def test_imagefolder_layout_errors(tmp_path: Path) -> None:
    write_image_tree(tmp_path / "a" / "train", per_class=1)
    with pytest.raises(ValueError, match="has only train/"):
        load_data(DataConfig(dataset="imagefolder", root=tmp_path / "a"), seed=0)

    write_image_tree(tmp_path / "b" / "train", per_class=1)
    write_image_tree(tmp_path / "b" / "val", per_class=1)
    (tmp_path / "b" / "val" / "emu" / "0.png").rename(tmp_path / "b" / "val" / "dog" / "9.png")
    (tmp_path / "b" / "val" / "emu").rmdir()
    with pytest.raises(ValueError, match="same class folders"):
        load_data(DataConfig(dataset="imagefolder", root=tmp_path / "b"), seed=0)

    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="one folder of images per class"):
        load_data(DataConfig(dataset="imagefolder", root=tmp_path / "empty"), seed=0)


# --- entry points ------------------------------------------------------------------------------


def _write_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, body: str) -> None:
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(body))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)


def test_entry_point_is_called_with_root_and_seed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_module(
        tmp_path,
        monkeypatch,
        "acdata_good",
        """
        import torch
        from torch.utils.data import TensorDataset

        CALLS = []

        def build(*, root, seed):
            CALLS.append((root, seed))
            x = torch.zeros(12, 2, 3, 3)
            y = torch.arange(12) % 4
            return TensorDataset(x, y), TensorDataset(x[:4], y[:4]), 4, [2, 3, 3]
        """,
    )
    config = DataConfig(dataset="acdata_good:build", root=tmp_path, limit_train=5)
    bundle = load_data(config, seed=11)
    assert (bundle.num_classes, bundle.input_shape, bundle.name) == (4, (2, 3, 3), config.dataset)
    assert (len(bundle.train), len(bundle.val)) == (5, 4)
    assert sys.modules["acdata_good"].CALLS == [(tmp_path, 11)]


@pytest.mark.parametrize(
    ("returned", "problem"),
    [
        ("None", "not a 4-tuple"),
        ("(ds, ds, 3)", "not a 4-tuple"),
        ("(ds, 5, 3, (1, 2, 2))", "val_dataset has no"),
        ("(ds, ds, 1, (1, 2, 2))", "num_classes must be"),
        ("(ds, ds, 3, (1, 2))", "input_shape must be"),
        ("(ds, ds, 3, (1, 0, 2))", "input_shape must be"),
    ],
)
def test_entry_point_bad_return_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, returned: str, problem: str
) -> None:
    _write_module(
        tmp_path,
        monkeypatch,
        "acdata_bad",
        f"""
        ds = [(0, 0)]

        def build(*, root, seed):
            return {returned}
        """,
    )
    with pytest.raises(ValueError, match="'data.dataset' entry point") as err:
        load_data(DataConfig(dataset="acdata_bad:build"), seed=0)
    assert problem in str(err.value)


def test_entry_point_import_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="'data.dataset'.*importable module"):
        load_data(DataConfig(dataset="acdata_nowhere.mod:build"), seed=0)
    _write_module(tmp_path, monkeypatch, "acdata_empty", "VALUE = 1\n")
    with pytest.raises(ValueError, match="has no callable 'build'"):
        load_data(DataConfig(dataset="acdata_empty:build"), seed=0)
    with pytest.raises(ValueError, match="has no callable 'VALUE'"):
        load_data(DataConfig(dataset="acdata_empty:VALUE"), seed=0)


# --- configuration errors ----------------------------------------------------------------------


@pytest.mark.parametrize("dataset", ["cifar10", "mnist", "imagefolder"])
def test_root_is_required_for_on_disk_datasets(dataset: str) -> None:
    with pytest.raises(ValidationError) as err:
        DataConfig(dataset=dataset)
    assert err.value.errors()[0]["loc"] == ("root",)
    assert "data.root" in str(err.value)


@pytest.mark.parametrize("dataset", ["cifar10", "mnist", "imagefolder"])
def test_nonexistent_root_is_reported(tmp_path: Path, dataset: str) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(ValueError, match="'data.root'") as err:
        load_data(DataConfig(dataset=dataset, root=missing), seed=0)
    assert str(missing) in str(err.value) and "does not exist" in str(err.value)


def test_root_that_is_a_file_is_reported(tmp_path: Path) -> None:
    file = tmp_path / "file.txt"
    file.write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        load_data(DataConfig(dataset="mnist", root=file), seed=0)


def test_unknown_dataset_lists_valid_names() -> None:
    with pytest.raises(ValidationError) as err:
        DataConfig(dataset="imagenet")
    assert err.value.errors()[0]["loc"] == ("dataset",)
    for name in BUILTIN_DATASETS:
        assert repr(name) in str(err.value)
    assert "package.module:function" in str(err.value)


@pytest.mark.parametrize(
    ("fields", "loc"),
    [
        ({"val_fraction": 0.0}, "val_fraction"),
        ({"val_fraction": 1.5}, "val_fraction"),
        ({"batch_size": 0}, "batch_size"),
        ({"num_workers": -1}, "num_workers"),
        ({"limit_train": 0}, "limit_train"),
        ({"limit_val": -5}, "limit_val"),
        ({"image_size": 0, "dataset": "imagefolder", "root": "."}, "image_size"),
        ({"image_size": 64}, "image_size"),  # only meaningful for imagefolder
        ({"augment": True}, "augment"),  # digits must not be flipped
        ({"augment": True, "dataset": "mnist", "root": "."}, "augment"),
        ({"synthetic_shape": (0, 8, 8)}, "synthetic_shape"),
        ({"synthetic_shape": (1, 8)}, "synthetic_shape"),
        ({"synthetic_classes": 1}, "synthetic_classes"),
        ({"synthetic_samples": 15, "synthetic_classes": 10}, "synthetic_samples"),
        ({"batch_size": "many"}, "batch_size"),
        ({"bath_size": 8}, "bath_size"),  # extra="forbid" catches typos
    ],
)
def test_bad_fields_are_located(fields: dict, loc: str) -> None:
    with pytest.raises(ValidationError) as err:
        DataConfig(**fields)
    assert [e["loc"][0] for e in err.value.errors()] == [loc]


def test_config_parses_yaml_like_values(tmp_path: Path) -> None:
    config = DataConfig.model_validate(
        {"dataset": "synthetic", "synthetic_shape": [3, 4, 4], "root": str(tmp_path)}
    )
    assert config.synthetic_shape == (3, 4, 4)
    assert config.root == tmp_path


def test_missing_torchvision_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A None entry in sys.modules makes `import torchvision` (and its submodules) fail.
    monkeypatch.setitem(sys.modules, "torchvision", None)
    for name in [m for m in sys.modules if m.startswith("torchvision.")]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError, match=r"pip install autocompress\[vision\]"):
        load_data(DataConfig(dataset="mnist", root=tmp_path), seed=0)


def test_importing_the_module_does_not_import_torchvision() -> None:
    code = "import sys, autocompress.evaluators.data; print('torchvision' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
