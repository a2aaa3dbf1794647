"""The dataset registry: built-in and user-registered names, their flags, and lookup errors.

Registrations are process-wide, so each test registers under its own name.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from pydantic import ValidationError
from torch.utils.data import TensorDataset

from autocompress.data import (
    DataBundle,
    DataConfig,
    Preprocessing,
    get_dataset,
    list_datasets,
    load_data,
    register_dataset,
)

BUILTINS = ["cifar10", "digits", "imagefolder", "mnist", "synthetic"]


def _blobs(config: DataConfig, *, seed: int, name: str) -> DataBundle:
    """A 3-class dataset of 2x2 single-channel images, drawn from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(30, 1, 2, 2, generator=generator)
    y = torch.arange(30) % 3
    return DataBundle(
        train=TensorDataset(x[:24], y[:24]),
        val=TensorDataset(x[24:], y[24:]),
        num_classes=3,
        input_shape=(1, 2, 2),
        name=name,
    )


def test_builtins_are_registered_with_their_flags() -> None:
    assert set(BUILTINS) <= set(list_datasets())
    assert list_datasets("*fold*") == ["imagefolder"]
    needs_root = {name for name in BUILTINS if get_dataset(name).needs_root}
    augmentable = {name for name in BUILTINS if get_dataset(name).augmentable}
    assert needs_root == {"cifar10", "mnist", "imagefolder"}
    assert augmentable == {"cifar10", "imagefolder"}
    assert [name for name in BUILTINS if get_dataset(name).resizable] == ["imagefolder"]


def test_registered_dataset_loads_by_name() -> None:
    calls = []

    @register_dataset("test_registry_blobs")
    def blobs(config: DataConfig, *, seed: int) -> DataBundle:
        calls.append(seed)
        return _blobs(config, seed=seed, name="test_registry_blobs")

    assert "test_registry_blobs" in list_datasets("test_registry_*")
    config = DataConfig(dataset="test_registry_blobs", limit_train=10)
    bundle = load_data(config, seed=4)
    assert calls == [4]
    assert (bundle.name, bundle.num_classes) == ("test_registry_blobs", 3)
    assert bundle.input_shape == (1, 2, 2)
    assert (len(bundle.train), len(bundle.val)) == (10, 6)  # limits apply to every dataset
    assert bundle.preprocessing is None  # a dataset need not say how its inputs were made
    again = load_data(config, seed=4)
    assert torch.equal(bundle.train.tensors[0], again.train.tensors[0])


def test_registered_flags_drive_config_validation(tmp_path) -> None:
    @register_dataset("test_registry_photos", needs_root=True, augmentable=True)
    def photos(config: DataConfig, *, seed: int) -> DataBundle:
        return _blobs(config, seed=seed, name="test_registry_photos")

    with pytest.raises(ValidationError) as err:
        DataConfig(dataset="test_registry_photos")
    assert err.value.errors()[0]["loc"] == ("root",)
    config = DataConfig(dataset="test_registry_photos", root=tmp_path, augment=True)
    assert config.augment
    # The augment error lists every augmentable dataset, the new one included.
    with pytest.raises(ValidationError, match="'test_registry_photos'"):
        DataConfig(augment=True)


def test_unknown_dataset_lists_valid_names() -> None:
    with pytest.raises(ValidationError) as err:
        DataConfig(dataset="imagenet")
    assert err.value.errors()[0]["loc"] == ("dataset",)
    message = str(err.value)
    assert "The 'data.dataset' field must be one of" in message
    for name in list_datasets():
        assert repr(name) in message
    assert "'package.module:function'" in message and "Got 'imagenet' instead" in message


def test_get_dataset_error_names_the_field() -> None:
    with pytest.raises(ValueError, match=r"'data\.dataset' field must be one of \[") as err:
        get_dataset("no_such_dataset")
    assert str(list_datasets()) in str(err.value)


def test_two_functions_cannot_share_a_name() -> None:
    def first(config: DataConfig, *, seed: int) -> DataBundle:
        return _blobs(config, seed=seed, name="test_registry_taken")

    def second(config: DataConfig, *, seed: int) -> DataBundle:
        return _blobs(config, seed=seed, name="test_registry_taken")

    register_dataset("test_registry_taken")(first)
    register_dataset("test_registry_taken")(first)  # re-registering the same function is harmless
    with pytest.raises(ValueError, match="already registered"):
        register_dataset("test_registry_taken")(second)
    with pytest.raises(ValueError, match="already registered"):
        register_dataset("digits")(second)


@pytest.mark.parametrize("name", ["", "my.module:build", "a b", "*", None])
def test_bad_names_are_rejected(name: object) -> None:
    with pytest.raises(ValueError, match="The 'name' parameter of register_dataset"):
        register_dataset(name)  # type: ignore[arg-type]


def test_loader_must_return_a_bundle() -> None:
    @register_dataset("test_registry_tuple")
    def returns_tuple(config: DataConfig, *, seed: int) -> DataBundle:
        bundle = _blobs(config, seed=seed, name="test_registry_tuple")
        return (bundle.train, bundle.val, 3, (1, 2, 2))  # type: ignore[return-value]

    with pytest.raises(TypeError, match="'test_registry_tuple' must return a DataBundle"):
        load_data(DataConfig(dataset="test_registry_tuple"), seed=0)


_RECORD = Preprocessing(input_shape=(1, 2, 2), mean=[0.5], std=[2.0], class_names=["a", "b", "c"])


def _recording(name: str, record: object) -> DataConfig:
    """Register ``name`` as the 3-class blobs with ``record`` as their preprocessing."""

    @register_dataset(name)
    def loader(config: DataConfig, *, seed: int) -> DataBundle:
        return replace(_blobs(config, seed=seed, name=name), preprocessing=record)

    return DataConfig(dataset=name, limit_train=5)


def test_a_registered_datasets_preprocessing_is_kept() -> None:
    config = _recording("test_registry_recorded", _RECORD)
    assert load_data(config, seed=0).preprocessing == _RECORD  # limits keep the record


@pytest.mark.parametrize(
    ("name", "record", "error", "match"),
    [
        (
            "test_registry_other_shape",
            replace(_RECORD, input_shape=(1, 3, 3)),
            ValueError,
            r"preprocessing\.input_shape equals its input_shape \(1, 2, 2\)",
        ),
        (
            "test_registry_two_names",
            replace(_RECORD, class_names=["a", "b"]),
            ValueError,
            r"one preprocessing\.class_names entry per class \(3\)",
        ),
        ("test_registry_dict_record", {"mean": [0.5]}, TypeError, "a Preprocessing or None"),
    ],
)
def test_a_preprocessing_that_contradicts_the_bundle_is_refused(
    name: str, record: object, error: type, match: str
) -> None:
    with pytest.raises(error, match=match):
        load_data(_recording(name, record), seed=0)
