"""Compression primitives: fake-quant QAT layers, DepGraph channel pruning, distillation loss and
weight inheritance. Each works in place on a plain ``nn.Module``."""

from autocompress.compression.distillation import kd_loss
from autocompress.compression.inherit import inherit_weights_
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

__all__ = [
    "FLOAT_BITS",
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
