"""DataConfig: defaults, parsing, and errors located at the offending field."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from autocompress.data import DataConfig


@pytest.mark.parametrize("dataset", ["cifar10", "mnist", "imagefolder"])
def test_root_is_required_for_on_disk_datasets(dataset: str) -> None:
    with pytest.raises(ValidationError) as err:
        DataConfig(dataset=dataset)
    assert err.value.errors()[0]["loc"] == ("root",)
    assert "data.root" in str(err.value)


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
