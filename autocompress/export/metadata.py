"""What a deployer needs besides the weights: how to prepare an input and what the outputs mean.

:func:`preprocessing_record` is the one dict the export writes into ``candidate.yaml``,
``export_report.json`` and (as :func:`onnx_metadata`) the ONNX model's ``metadata_props``, so
the three always say the same thing. A key that is absent means autocompress does not know
(a user dataset that records no :class:`~autocompress.data.Preprocessing`); a key whose value is
null means that step is not applied.
"""

from __future__ import annotations

import json
from typing import Any

from ..data import DataBundle

PREPROCESSING_KEY = "autocompress.preprocessing"
CLASS_NAMES_KEY = "autocompress.class_names"


def preprocessing_record(data: DataBundle) -> dict[str, Any]:
    """The dataset's preprocessing as JSON-able values, plus ``num_classes``; only
    ``input_shape`` and ``num_classes`` when the dataset records no preprocessing."""
    known: dict[str, Any] = {"input_shape": list(data.input_shape)}
    if data.preprocessing is not None:
        known = data.preprocessing.to_dict()
    return {**known, "num_classes": int(data.num_classes)}


def onnx_metadata(record: dict[str, Any]) -> dict[str, str]:
    """``metadata_props`` entries (ONNX keeps only strings) for a :func:`preprocessing_record`:
    the record as JSON, and the class names on their own as a JSON list when they are known."""
    metadata = {PREPROCESSING_KEY: json.dumps(record)}
    if record.get("class_names") is not None:
        metadata[CLASS_NAMES_KEY] = json.dumps(record["class_names"])
    return metadata


__all__ = ["CLASS_NAMES_KEY", "PREPROCESSING_KEY", "onnx_metadata", "preprocessing_record"]
