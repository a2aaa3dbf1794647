"""What the learned latency predictor sees of a layer op group: one row of numbers per
:class:`LayerKey` (see :func:`layer_features`)."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np

from autocompress.hardware_profiles.lut_table import LayerKey

__all__ = ["FEATURE_NAMES", "layer_features"]

#: Columns of :func:`layer_features`, in order.
FEATURE_NAMES = (
    "log_macs",
    "log_params",
    "log_input_elems",
    "log_output_elems",
    "kernel_area",
    "stride",
    "log_groups",
    "log_in_channels",
    "log_out_channels",
    "depthwise",
    "linear",
    "log_spatial_in",
    "log_spatial_out",
    "log_reduction",
    "log_intensity",
    "bn",
    "act",
    "precision_bits",
    "in_channels_mult8",
    "out_channels_mult8",
    "in_channels_mult16",
    "out_channels_mult16",
)
# Activation codes for the trees; an activation missing here gets the next free code.
_ACT_CODES = {"none": 0, "relu": 1, "relu6": 2, "silu": 3, "hardswish": 4, "sigmoid": 5}


def layer_features(keys: Sequence[LayerKey]) -> np.ndarray:
    """Feature matrix (one row per key, columns :data:`FEATURE_NAMES`) of layer op groups."""
    rows = []
    for key in keys:
        if not isinstance(key, LayerKey):
            raise ValueError(
                "The 'keys' parameter of layer_features must hold LayerKey objects. "
                f"Got {key!r} instead."
            )
        macs, params = key.macs, key.weight_params
        in_elems, out_elems = key.input_elems, key.output_elems
        rows.append(
            [
                math.log1p(macs),
                math.log1p(params),
                math.log1p(in_elems),
                math.log1p(out_elems),
                math.prod(key.kernel),
                math.prod(key.stride),
                math.log(key.groups),
                math.log(key.in_channels),
                math.log(key.out_channels),
                float(key.depthwise),
                float(key.kind == "linear"),
                math.log1p(math.prod(key.input_size)),
                math.log1p(math.prod(key.output_size)),
                math.log1p(macs / max(out_elems, 1)),
                math.log1p(macs / (in_elems + out_elems + params)),
                float(key.bn),
                float(_ACT_CODES.get(key.act, len(_ACT_CODES))),
                float(min(_precision_bits(key.precision), max(key.w_bits, key.a_bits))),
                # Channel counts that fill whole SIMD blocks (8 floats: AVX2/NEON pairs, 16:
                # AVX-512) get blocked-layout kernels; others take slower edge paths.
                float(key.in_channels % 8 == 0),
                float(key.out_channels % 8 == 0),
                float(key.in_channels % 16 == 0),
                float(key.out_channels % 16 == 0),
            ]
        )
    return np.asarray(rows, dtype=np.float64).reshape(len(rows), len(FEATURE_NAMES))


def _precision_bits(label: str) -> int:
    """Bits of a precision label: ``"fp32"`` -> 32, ``"8"`` -> 8, ``"w4a8"`` -> 8 (widest);
    32 for ``"bits"``, whose keys carry their bits (the caller takes the smaller)."""
    numbers = [int(n) for n in re.findall(r"\d+", label)]
    return max(numbers) if numbers else 32
