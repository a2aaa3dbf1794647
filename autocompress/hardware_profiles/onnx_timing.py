"""Timing a model given as bytes: the work behind the agent's ``POST /time``
(:mod:`~autocompress.hardware_profiles.agent` only adds HTTP around it).

:func:`time_model` tells the runtime from the bytes: an ExecuTorch program (``.pte``, file
identifier ``ET12``) runs in ExecuTorch's runtime, a LiteRT model (``.tflite``, ``TFL3``) in the
LiteRT interpreter, anything else is taken for ONNX and runs on onnxruntime's CPU provider. The
inputs are random arrays from a fixed seed, so every request for the same model times the same
computation. The runtimes and NumPy are imported on the first timing, never at import.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any

from autocompress.hardware_profiles.agent_protocol import clip_message
from autocompress.hardware_profiles.timing import time_calls

__all__ = [
    "MAX_INPUT_ELEMS",
    "BadModelError",
    "RuntimeMissingError",
    "model_runtime",
    "time_model",
    "time_onnx_model",
]

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


# Flatbuffer file identifiers, at bytes 4..8 of the file.
_IDENTIFIERS = {b"ET12": "executorch", b"TFL3": "litert"}


def model_runtime(model_bytes: bytes) -> str:
    """``"executorch"``, ``"litert"`` or ``"onnxruntime"``: the runtime that runs these bytes."""
    return _IDENTIFIERS.get(bytes(model_bytes[4:8]), "onnxruntime")


def time_model(
    model_bytes: bytes,
    *,
    warmup: int,
    repeats: int,
    threads: int | None,
    input_shape: tuple[int, ...] | None,
) -> dict[str, Any]:
    """Time ONNX, ExecuTorch or LiteRT bytes (see the module doc) as :func:`time_onnx_model`
    does; the answer's ``runtime`` says which ran it."""
    runtime = model_runtime(model_bytes)
    if runtime == "onnxruntime":
        return {
            **time_onnx_model(
                model_bytes,
                warmup=warmup,
                repeats=repeats,
                threads=threads,
                input_shape=input_shape,
            ),
            "runtime": runtime,
        }
    try:
        import numpy as np
        import torch

        with _flatbuffer_runner(runtime, model_bytes, threads=threads) as (run, shape, version):
            if input_shape is not None and tuple(input_shape) != shape:
                raise BadModelError(
                    f"input_shape {list(input_shape)} does not fit the model's {list(shape)}."
                )
            x = np.random.default_rng(_INPUT_SEED).standard_normal(shape).astype("float32")
            sample = torch.from_numpy(x) if runtime == "executorch" else x
            try:
                timing = time_calls(lambda: run(sample), warmup=warmup, repeats=repeats)
            except Exception as err:
                raise BadModelError(
                    clip_message(f"{runtime} could not run the model on random inputs: {err}")
                ) from None
    except ImportError as err:
        extra = "executorch" if runtime == "executorch" else "litert"
        raise RuntimeMissingError(
            f"{runtime} is not installed on the agent's device ({err}): pip install "
            f"'autocompress[{extra}]' there."
        ) from None
    return {
        **timing.details(),
        "latency_ms": timing.latency_s * 1e3,
        "repeats": repeats,
        "warmup": warmup,
        "threads": threads,
        "input_shapes": {"input": list(shape)},
        "runtime": runtime,
        runtime: version,
    }


@contextlib.contextmanager
def _flatbuffer_runner(
    runtime: str, model_bytes: bytes, *, threads: int | None
) -> Iterator[tuple[Callable[[Any], Any], tuple[int, ...], str]]:
    """``(run(x), input shape, runtime version)`` for a ``.pte`` or ``.tflite`` body, valid
    inside the block (ExecuTorch's threadpool is set for it and restored after)."""
    if runtime == "executorch":
        from autocompress.hardware_profiles.executorch_backend import (
            executorch_threads,
            executorch_version,
            load_method,
        )

        # A method loaded under one threadpool must run under it: load and time in the block.
        with executorch_threads(threads):
            method = _loaded(runtime, lambda: load_method(bytes(model_bytes)))
            shape = tuple(int(d) for d in method.metadata.input_tensor_meta(0).sizes())
            yield (lambda x: method.execute([x])), shape, executorch_version()
        return
    from autocompress.hardware_profiles.litert import litert_interpreter, litert_versions

    interpreter = _loaded(runtime, lambda: litert_interpreter(bytes(model_bytes), threads=threads))
    source = interpreter.get_input_details()[0]
    target = interpreter.get_output_details()[0]["index"]

    def run(x: Any) -> Any:
        interpreter.set_tensor(source["index"], x)
        interpreter.invoke()
        return interpreter.get_tensor(target)

    yield run, tuple(int(d) for d in source["shape"]), litert_versions()


def _loaded(runtime: str, load: Callable[[], Any]) -> Any:
    try:
        return load()
    except ImportError:
        raise
    except Exception as err:  # the runtimes raise their own exception types for bad files
        raise BadModelError(
            clip_message(f"{runtime} cannot load the request body: {err}")
        ) from None


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
