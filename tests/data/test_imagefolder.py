"""imagefolder: class folders, with or without train/ and val/, resized and optionally augmented."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from autocompress.data import DataConfig, load_data

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


def test_imagefolder_preprocessing_resizes_crops_and_normalizes_like_the_loader(
    tmp_path: Path,
) -> None:
    # Noise images, so that resizing and cropping show in every pixel.
    noise = np.random.default_rng(0)
    for split in ("train", "val"):
        for name in ("ant", "bee"):
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(2):
                pixels = noise.integers(0, 256, size=(12, 20, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / split / name / f"{i}.png")
    config = DataConfig(dataset="imagefolder", root=tmp_path, image_size=8, augment=True)
    bundle = load_data(config, seed=0)
    record = bundle.preprocessing
    assert (record.input_shape, record.color) == ((3, 8, 8), "RGB")
    assert record.class_names == ("ant", "bee")  # the class folders, in label order
    assert (record.resize, record.center_crop, record.interpolation) == (8, 8, "bilinear")
    assert (record.scale, record.mean) == (255.0, (0.485, 0.456, 0.406))  # ImageNet's statistics
    # A deployer's pipeline from the record alone (PIL + numpy): shorter side to `resize`, the
    # longer one scaled alike and truncated (as torchvision does), central crop, / scale,
    # standardize.
    for index, (path, _) in enumerate(bundle.val.samples):
        image = Image.open(path).convert("RGB")
        width, height = image.size
        short, long = sorted((width, height))
        size = (record.resize, int(record.resize * long / short))
        image = image.resize(size if width <= height else size[::-1], Image.Resampling.BILINEAR)
        left = int(round((image.size[0] - record.center_crop) / 2))
        top = int(round((image.size[1] - record.center_crop) / 2))
        image = image.crop((left, top, left + record.center_crop, top + record.center_crop))
        x = np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / np.float32(record.scale)
        mean, std = (
            np.asarray(v, dtype=np.float32).reshape(3, 1, 1) for v in (record.mean, record.std)
        )
        assert torch.allclose(torch.from_numpy((x - mean) / std), bundle.val[index][0], atol=1e-5)
    # Training augmentation is not part of deployment: the record is the same without it.
    assert load_data(config.model_copy(update={"augment": False}), seed=0).preprocessing == record
    plain = load_data(config.model_copy(update={"normalize": False}), seed=0).preprocessing
    assert plain.mean is None and plain.std is None and plain.resize == 8


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
