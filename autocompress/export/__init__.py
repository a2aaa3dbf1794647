"""Export a chosen trial: pick rules, deployable artefacts (ONNX QDQ, TorchScript, bit-packed
weights) and their verification against the PyTorch model."""

from .pick import PickError, pick_trial
from .trial import EXPORT_FORMATS, ExportResult, export_trial

__all__ = ["EXPORT_FORMATS", "ExportResult", "PickError", "export_trial", "pick_trial"]
