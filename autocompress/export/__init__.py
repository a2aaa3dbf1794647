"""Export a chosen trial: pick rules, deployable artefacts (ONNX QDQ, TorchScript, bit-packed
weights, LiteRT), their verification against the PyTorch model, and the input preprocessing they
carry."""

from .metadata import CLASS_NAMES_KEY, PREPROCESSING_KEY, preprocessing_record
from .pick import PickError, pick_trial
from .trial import EXPORT_FORMATS, ExportResult, export_trial

__all__ = [
    "CLASS_NAMES_KEY",
    "EXPORT_FORMATS",
    "PREPROCESSING_KEY",
    "ExportResult",
    "PickError",
    "export_trial",
    "pick_trial",
    "preprocessing_record",
]
