"""Wall-clock latency of batch-1 inference on this host (PyTorch or ONNX Runtime)."""

from __future__ import annotations

import copy
import io
import math
import threading
import time
import warnings
from collections.abc import Callable
from numbers import Integral, Real
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from autocompress.hardware_profiles._base import (
    HardwareMetrics,
    HardwareProfile,
    register_hardware_profile,
)
from autocompress.hardware_profiles.graph import (
    check_input_shape,
    layer_costs,
    model_size_bytes,
    peak_activation_bytes,
)

__all__ = ["MeasuredProfile"]

_BACKENDS = ("torch", "onnxruntime")
_INPUT_SEED = 0
_HOST_NOTE = (
    "Measured with float kernels on the host (quant_enabled=False): latency reflects "
    "architecture and pruning, not bit-widths."
)
_ENERGY_NOTE = (
    "Energy unknown: pass power_w (average board power in watts while running inference) "
    "to get energy = power_w * latency."
)
# Timing runs on the same host disturb each other (cores, caches, the GPU), and torch's thread
# count is process-global: measure one model at a time.
_TIMING_LOCK = threading.Lock()


@register_hardware_profile("measured")
class MeasuredProfile(HardwareProfile):
    """Time real batch-1 inference on this machine.

    IMPORTANT: the host runs FLOAT kernels. The model is deep-copied and every module's
    ``quant_enabled`` attribute is set to False in the copy, because fake-quant layers would
    otherwise time the emulation (extra rounding ops), not a real low-bit kernel. So the latency
    reflects the architecture and pruning of the model, NOT its bit-widths; use
    :class:`AnalyticProfile` to see the effect of bits. ``size_bytes`` and ``peak_mem_bytes`` do
    use the bits (same functions as the analytic profile).

    ``backend``: ``"torch"`` (eager) or ``"onnxruntime"`` (the copy is exported to ONNX in
    memory; needs the ``onnx`` extra). ``warmup`` untimed runs, then ``repeats`` timed runs;
    ``latency_ms`` is the median, ``details`` has p10/p90/min/max and the samples. ``threads``:
    intra-op threads (torch.set_num_threads, restored afterwards / ORT intra_op_num_threads);
    None keeps the library default. ``device``: ``"cpu"`` or a CUDA device (``"cuda"``,
    ``"cuda:1"``); CUDA runs are synchronised around each timed call.

    Energy: ``power_w * latency`` when ``power_w`` (average power of the device under load, in
    watts) is given, otherwise NaN with a note in ``details``. Reading GPU energy counters
    through NVML is not implemented yet.

    Calls are serialised by a process-wide lock so concurrent measurements do not disturb
    each other; the model passed in is never modified (only its copy is run).
    """

    def __init__(
        self,
        *,
        backend: Literal["torch", "onnxruntime"] = "torch",
        warmup: int = 5,
        repeats: int = 30,
        threads: int | None = None,
        power_w: float | None = None,
        device: str = "cpu",
    ) -> None:
        if backend not in _BACKENDS:
            raise ValueError(
                "The 'backend' parameter of MeasuredProfile must be one of "
                f"{list(_BACKENDS)}. Got {backend!r} instead."
            )
        _check_int(warmup, name="warmup", minimum=0)
        _check_int(repeats, name="repeats", minimum=1)
        if threads is not None:
            _check_int(threads, name="threads", minimum=1)
        if power_w is not None and (
            isinstance(power_w, bool)
            or not isinstance(power_w, Real)
            or not math.isfinite(power_w)
            or power_w <= 0
        ):
            raise ValueError(
                "The 'power_w' parameter of MeasuredProfile must be None or a positive finite "
                f"number of watts. Got {power_w!r} instead."
            )
        self.backend = backend
        self.warmup = int(warmup)
        self.repeats = int(repeats)
        self.threads = None if threads is None else int(threads)
        self.power_w = None if power_w is None else float(power_w)
        self.device = _check_device(device)

    def __repr__(self) -> str:
        return (
            f"MeasuredProfile(backend={self.backend!r}, warmup={self.warmup}, "
            f"repeats={self.repeats}, threads={self.threads}, power_w={self.power_w}, "
            f"device={str(self.device)!r})"
        )

    def profile(self, model: nn.Module, *, input_shape: tuple[int, ...]) -> HardwareMetrics:
        shape = check_input_shape(input_shape, caller="MeasuredProfile.profile")
        costs = layer_costs(model, input_shape=shape)
        host_model = _float_copy(model)
        generator = torch.Generator().manual_seed(_INPUT_SEED)
        x = torch.randn((1, *shape), generator=generator)
        with _TIMING_LOCK:
            if self.backend == "torch":
                samples_s = self._time_torch(host_model, x)
            else:
                samples_s = self._time_onnxruntime(host_model, x)
        samples_ms = [s * 1e3 for s in samples_s]
        latency_ms = float(np.median(samples_ms))
        details: dict[str, Any] = {
            "backend": self.backend,
            "device": str(self.device),
            "threads": self.threads,
            "warmup": self.warmup,
            "repeats": self.repeats,
            "p10_ms": float(np.percentile(samples_ms, 10)),
            "p90_ms": float(np.percentile(samples_ms, 90)),
            "min_ms": float(min(samples_ms)),
            "max_ms": float(max(samples_ms)),
            "samples_ms": samples_ms,
            "note": _HOST_NOTE,
        }
        if self.power_w is None:
            energy_mj = math.nan
            details["energy_note"] = _ENERGY_NOTE
        else:
            energy_mj = self.power_w * latency_ms  # W * ms = mJ
        return HardwareMetrics(
            latency_ms=latency_ms,
            energy_mj=energy_mj,
            size_bytes=model_size_bytes(model),
            peak_mem_bytes=peak_activation_bytes(costs),
            details=details,
        )

    def _time_torch(self, model: nn.Module, x: torch.Tensor) -> list[float]:
        model = model.to(self.device)
        x = x.to(self.device)
        previous_threads = torch.get_num_threads()
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        try:
            with torch.inference_mode():
                return self._time(lambda: model(x))
        finally:
            torch.set_num_threads(previous_threads)

    def _time_onnxruntime(self, model: nn.Module, x: torch.Tensor) -> list[float]:
        try:
            import onnxruntime as ort  # heavy, optional: only when this backend is used
        except ImportError as err:
            raise ImportError(
                "MeasuredProfile(backend='onnxruntime') needs onnxruntime: "
                "pip install 'autocompress[onnx]'."
            ) from err
        provider = "CPUExecutionProvider"
        if self.device.type == "cuda":
            provider = "CUDAExecutionProvider"
            if provider not in ort.get_available_providers():
                raise ValueError(
                    "MeasuredProfile(backend='onnxruntime', device='cuda') needs an onnxruntime "
                    f"build with CUDAExecutionProvider; available: {ort.get_available_providers()}."
                )
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads or 0  # 0 = onnxruntime's default
        options.log_severity_level = 3  # errors only
        provider_options: list[dict[str, Any]] = [{}]
        if self.device.type == "cuda":
            provider_options = [{"device_id": self.device.index or 0}]
        session = ort.InferenceSession(
            _export_onnx(model, x),
            sess_options=options,
            providers=[provider],
            provider_options=provider_options,
        )
        feeds = {session.get_inputs()[0].name: x.numpy()}
        # session.run returns host arrays, so each call is complete when it returns.
        return self._time(lambda: session.run(None, feeds), sync=False)

    def _time(self, run: Callable[[], Any], *, sync: bool = True) -> list[float]:
        cuda = sync and self.device.type == "cuda"
        for _ in range(self.warmup):
            run()
        samples = []
        for _ in range(self.repeats):
            if cuda:
                torch.cuda.synchronize(self.device)
            start = time.perf_counter()
            run()
            if cuda:
                torch.cuda.synchronize(self.device)
            samples.append(time.perf_counter() - start)
        return samples


def _float_copy(model: nn.Module) -> nn.Module:
    """Deep copy in eval mode with fake quantization switched off (host runs float kernels)."""
    host_model = copy.deepcopy(model)
    for module in host_model.modules():
        if hasattr(module, "quant_enabled"):
            module.quant_enabled = False
    return host_model.eval()


def _export_onnx(model: nn.Module, x: torch.Tensor) -> bytes:
    """ONNX bytes of ``model`` traced on ``x`` (CPU), exported in memory."""
    model = model.to("cpu")
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # torch >= 2.9 warns that the TorchScript exporter is legacy; it is still the one that
        # exports plain nn.Modules without extra dependencies, so prefer it while it exists.
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(model, (x,), buffer, dynamo=False)
        except TypeError:  # torch without the dynamo switch: legacy exporter is the default
            buffer = io.BytesIO()
            torch.onnx.export(model, (x,), buffer)
        except RuntimeError:  # legacy exporter gone or failed: try the torch.export one
            buffer = io.BytesIO()
            torch.onnx.export(model, (x,), buffer, dynamo=True)
    return buffer.getvalue()


def _check_int(value: Any, *, name: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise ValueError(
            f"The '{name}' parameter of MeasuredProfile must be an int >= {minimum}. "
            f"Got {value!r} instead."
        )


def _check_device(device: Any) -> torch.device:
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        parsed = None
    if parsed is None or parsed.type not in ("cpu", "cuda"):
        raise ValueError(
            "The 'device' parameter of MeasuredProfile must be 'cpu' or a CUDA device such as "
            f"'cuda' or 'cuda:0'. Got {device!r} instead."
        )
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "The 'device' parameter of MeasuredProfile must be 'cpu' when CUDA is not "
            f"available (torch.cuda.is_available() is False). Got {device!r} instead."
        )
    return parsed
