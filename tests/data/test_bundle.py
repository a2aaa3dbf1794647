"""Preprocessing: the record of how a raw input becomes a model input, checked and JSON-able."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from autocompress.data import DataBundle, Preprocessing


def test_preprocessing_is_plain_json_and_normalises_sequences() -> None:
    record = Preprocessing(
        input_shape=[3, np.int64(4), 4],
        color="RGB",
        raw_range=[0, 255],
        scale=np.float32(255),
        mean=np.array([0.5, 0.25, 0.125], dtype=np.float32),
        std=[1, 2, 4],
        resize=6,
        center_crop=4,
        interpolation="bilinear",
        class_names=["cat", "dog"],
    )
    assert record.input_shape == (3, 4, 4) and type(record.input_shape[1]) is int
    assert record.mean == (0.5, 0.25, 0.125) and record.std == (1.0, 2.0, 4.0)
    assert record.class_names == ("cat", "dog")
    document = record.to_dict()
    assert json.loads(json.dumps(document)) == document
    assert document["mean"] == [0.5, 0.25, 0.125] and document["scale"] == 255.0
    assert Preprocessing(**document) == record


def test_preprocessing_defaults_say_nothing_is_applied() -> None:
    record = Preprocessing(input_shape=(1, 8, 8))
    assert record.channel_order == "CHW"
    assert record.to_dict() == {
        "input_shape": [1, 8, 8],
        "channel_order": "CHW",
        "color": None,
        "raw_range": None,
        "scale": None,
        "mean": None,
        "std": None,
        "resize": None,
        "center_crop": None,
        "interpolation": None,
        "class_names": None,
    }


@pytest.mark.parametrize(
    ("changes", "name"),
    [
        ({"input_shape": (1, 8)}, "input_shape"),
        ({"input_shape": (1, 0, 8)}, "input_shape"),
        ({"channel_order": "HWCN"}, "channel_order"),
        ({"color": "BGR"}, "color"),
        ({"color": "RGB"}, "color"),  # one channel is not RGB
        ({"raw_range": (255, 0)}, "raw_range"),
        ({"scale": 0}, "scale"),
        ({"scale": float("inf")}, "scale"),
        ({"mean": [0.5]}, "std"),
        ({"mean": [0.5, 0.5], "std": [1.0, 1.0]}, "mean"),
        ({"mean": [0.5], "std": [0.0]}, "std"),
        ({"mean": ["0.5"], "std": [1.0]}, "mean"),
        ({"resize": 0}, "resize"),
        ({"center_crop": 2.5}, "center_crop"),
        ({"interpolation": 2}, "interpolation"),
        ({"class_names": "ab"}, "class_names"),
        ({"class_names": [0, 1]}, "class_names"),
    ],
)
def test_preprocessing_rejects_bad_fields(changes: dict, name: str) -> None:
    with pytest.raises(ValueError, match=f"The '{name}' parameter of Preprocessing must be"):
        Preprocessing(input_shape=changes.pop("input_shape", (1, 8, 8)), **changes)


def test_data_bundle_preprocessing_is_an_optional_keyword() -> None:
    data = TensorDataset(torch.zeros(1))
    bundle = DataBundle(data, data, 2, (1, 1, 1), "tiny")
    assert bundle.preprocessing is None
    with pytest.raises(TypeError):
        DataBundle(data, data, 2, (1, 1, 1), "tiny", Preprocessing(input_shape=(1, 1, 1)))
