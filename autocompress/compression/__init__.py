"""Compression primitives: fake-quant QAT layers, post-training calibration of them, DepGraph
channel pruning, low-rank (SVD) factorization, distillation losses (logits, features) and weight
inheritance, each in place on a plain ``nn.Module``; ``compress_`` applies a whole candidate;
saved models are a JSON spec + state_dict (``serialization``), never a pickle."""

from autocompress.compression.apply import build_compressed, compress_
from autocompress.compression.calibration import post_training_quantize_
from autocompress.compression.distillation import kd_loss
from autocompress.compression.feature_distillation import FeatureDistiller, feature_distiller
from autocompress.compression.inherit import inherit_weights_
from autocompress.compression.lowrank import Factorized, factorize_, truncated_svd
from autocompress.compression.pruning import count_parameters, prunable_layers, prune_
from autocompress.compression.quantization import (
    FLOAT_BITS,
    QuantConv2d,
    QuantLinear,
    activation_qparams,
    fake_quantize,
    quantize_,
    quantize_weight,
    quantized_layers,
)
from autocompress.compression.serialization import load_model, read_spec, save_model

__all__ = [
    "FLOAT_BITS",
    "build_compressed",
    "compress_",
    "FeatureDistiller",
    "Factorized",
    "factorize_",
    "truncated_svd",
    "feature_distiller",
    "post_training_quantize_",
    "load_model",
    "read_spec",
    "save_model",
    "QuantConv2d",
    "QuantLinear",
    "activation_qparams",
    "count_parameters",
    "fake_quantize",
    "inherit_weights_",
    "kd_loss",
    "prunable_layers",
    "prune_",
    "quantize_",
    "quantize_weight",
    "quantized_layers",
]
