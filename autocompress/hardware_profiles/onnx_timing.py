"""Timing an ONNX model given as bytes with onnxruntime's CPU provider: the work behind the
agent's ``POST /time`` (:mod:`~autocompress.hardware_profiles.agent` only adds HTTP around it).

The inputs are random arrays from a fixed seed, so every request for the same model times the
same computation. onnxruntime and NumPy are imported on the first timing, never at import.
"""

from __future__ import annotations

import math
from typing import Any

from autocompress.hardware_profiles.agent_protocol import clip_message
from autocompress.hardware_profiles.timing import time_calls

__all__ = ["MAX_INPUT_ELEMS", "BadModelError", "RuntimeMissingError", "time_onnx_model"]

#: Largest random input allocated per model input (elements).
MAX_INPUT_ELEMS = 1 << 26
_INPUT_SEED = 0
_FLOAT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
}
_INT_TYPES = {
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
}


class BadModelError(ValueError):
    """The bytes are not a model onnxruntime can load and run on random inputs of the given
    shape (the request's fault: the agent answers 400)."""


class RuntimeMissingError(ImportError):
    """onnxruntime is not installed where the timing runs (the device's fault: 503)."""


def time_onnx_model(
    model_bytes: bytes,
    *,
    warmup: int,
    repeats: int,
    threads: int | None,
    input_shape: tuple[int, ...] | None,
) -> dict[str, Any]:
    """Time the model on seeded random inputs by the rule of
    :mod:`~autocompress.hardware_profiles.timing` (``warmup``, ``repeats``); ``input_shape``
    (batch included) fixes a single input's dynamic dims. Returns the agent's answer:
    ``latency_ms`` (the smallest round median), the spread, rounds and repeatability of the
    samples, the settings, input shapes, onnxruntime version and the samples. Not thread-safe
    in timing terms: the caller serialises timings so they do not disturb each other."""
    try:
        import numpy as np
        import onnxruntime as ort
    except ImportError as err:
        raise RuntimeMissingError(
            f"onnxruntime is not installed on the agent's device ({err}): "
            "pip install 'autocompress[onnx]' there."
        ) from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or 0  # 0 = onnxruntime's default
    options.log_severity_level = 3  # errors only
    try:
        session = ort.InferenceSession(
            model_bytes, sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as err:  # onnxruntime raises its own exception types for bad models
        raise BadModelError(
            clip_message(f"The request body is not an ONNX model onnxruntime can load: {err}")
        ) from None
    feeds = _random_feeds(session, input_shape=input_shape, np=np)
    try:
        timing = time_calls(lambda: session.run(None, feeds), warmup=warmup, repeats=repeats)
    except Exception as err:
        raise BadModelError(
            clip_message(f"onnxruntime could not run the model on random inputs: {err}")
        ) from None
    return {
        **timing.details(),
        "latency_ms": timing.latency_s * 1e3,
        "repeats": repeats,
        "warmup": warmup,
        "threads": threads,
        "input_shapes": {name: list(array.shape) for name, array in feeds.items()},
        "onnxruntime": ort.__version__,
        "provider": "CPUExecutionProvider",
    }


def _random_feeds(session: Any, *, input_shape: tuple[int, ...] | None, np: Any) -> dict[str, Any]:
    """Seeded random arrays for every model input (normal for floats, 0/1 for ints)."""
    inputs = session.get_inputs()
    if input_shape is not None and len(inputs) != 1:
        raise BadModelError(
            f"input_shape applies to single-input models; this one has {len(inputs)} inputs."
        )
    rng = np.random.default_rng(_INPUT_SEED)
    feeds = {}
    for node in inputs:
        dims = list(node.shape)
        if input_shape is not None:
            fixed = len(input_shape) == len(dims) and all(
                not isinstance(d, int) or d == s for d, s in zip(dims, input_shape, strict=True)
            )
            if not fixed:
                raise BadModelError(
                    f"input_shape {list(input_shape)} does not fit the model's input "
                    f"{node.name!r} of shape {dims}."
                )
            dims = list(input_shape)
        if not all(isinstance(d, int) and d > 0 for d in dims):
            raise BadModelError(
                f"The model's input {node.name!r} has dynamic shape {dims}: pass input_shape."
            )
        if math.prod(dims) > MAX_INPUT_ELEMS:
            raise BadModelError(
                f"The model's input {node.name!r} of shape {dims} is larger than "
                f"{MAX_INPUT_ELEMS} elements."
            )
        if node.type in _FLOAT_TYPES:
            feeds[node.name] = rng.standard_normal(dims).astype(_FLOAT_TYPES[node.type])
        elif node.type in _INT_TYPES:
            feeds[node.name] = rng.integers(0, 2, size=dims).astype(_INT_TYPES[node.type])
        elif node.type == "tensor(bool)":
            feeds[node.name] = rng.random(dims) < 0.5
        else:
            raise BadModelError(
                f"The model's input {node.name!r} has type {node.type}; the agent makes random "
                f"inputs of {sorted({*_FLOAT_TYPES, *_INT_TYPES, 'tensor(bool)'})} only."
            )
    return feeds
