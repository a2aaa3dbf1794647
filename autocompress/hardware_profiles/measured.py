"""Wall-clock latency of batch-1 inference on this host (PyTorch, ONNX Runtime or ExecuTorch).

On a CUDA device with NVML available (``pynvml``, from the ``gpu`` extra), energy per inference
is read from the GPU's total-energy counter around the timed runs.
"""

from __future__ import annotations

import copy
import io
import math
import os
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from torch import nn

from autocompress.core.validation import check_int
from autocompress.hardware_profiles._base import (
    HardwareMetrics,
    HardwareProfile,
    register_hardware_profile,
)
from autocompress.hardware_profiles.checks import check_power, check_threads
from autocompress.hardware_profiles.graph import check_input_shape, layer_costs, metrics_with_memory

__all__ = ["MeasuredProfile"]

_BACKENDS = ("torch", "onnxruntime", "executorch")
_INPUT_SEED = 0
_HOST_NOTE = (
    "Measured with float kernels on the host (quant_enabled=False): latency reflects "
    "architecture and pruning, not bit-widths."
)
_ENERGY_NOTE = (
    "Energy unknown: pass power_w (average board power in watts while running inference) "
    "to get energy = power_w * latency."
)
_NVML_NOTE = (
    "Energy from NVML's total-energy counter of the whole GPU board, read before and after the "
    "timed runs and divided by repeats: it includes the board's idle power and any other work "
    "on that GPU during the runs."
)
_NVML_MISSING = "pynvml is not installed (pip install 'autocompress[gpu]')"
# NVML's energy counter is refreshed periodically by the driver: a short window gives a coarse
# figure. Below this window the details say so.
_NVML_MIN_WINDOW_S = 1.0
# Timing runs on the same host disturb each other (cores, caches, the GPU), and torch's thread
# count is process-global: measure one model at a time.
_TIMING_LOCK = threading.Lock()
# torch.onnx.export keeps exporter state in module globals: one export at a time.
_EXPORT_LOCK = threading.Lock()


class _Timing(NamedTuple):
    """Seconds per timed run and the wall-clock window around all of them."""

    samples_s: list[float]
    window_s: float


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

    ``backend="executorch"`` is the exception to the float kernels above: the model is lowered
    to an XNNPACK ``.pte`` (int8 kernels for layers of <= 8 weight and input bits, float32 for
    the rest; ``details["layers"]`` says which layer ran in which) and timed with ExecuTorch's
    runtime. It needs the ``executorch`` extra and ``device="cpu"``; ``threads`` sizes the
    XNNPACK threadpool (:mod:`~autocompress.hardware_profiles.executorch_backend`).

    Energy, first that applies (``details["energy_source"]`` says which):

    * ``"nvml"``: on a CUDA device with NVML (``pynvml`` from the ``gpu`` extra) and a GPU that
      has a total-energy counter (Volta or newer), the counter's increase over the timed runs
      divided by ``repeats``. It is the whole board's energy, idle power and other processes'
      work on that GPU included; keep ``repeats * latency`` well above a second, since the
      driver refreshes the counter periodically;
    * ``"power_w"``: ``power_w * latency`` when ``power_w`` (average power of the device under
      load, in watts) is given;
    * ``None``: NaN. ``details["energy_note"]`` then says why (and, on CUDA, why NVML was not
      used).

    Calls are serialised by a process-wide lock so concurrent measurements do not disturb
    each other; the model passed in is never modified (only its copy is run).
    """

    def __init__(
        self,
        *,
        backend: Literal["torch", "onnxruntime", "executorch"] = "torch",
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
        self.backend = backend
        self.warmup = check_int(warmup, name="warmup", where="MeasuredProfile", minimum=0)
        self.repeats = check_int(repeats, name="repeats", where="MeasuredProfile", minimum=1)
        self.threads = check_threads(threads, where="MeasuredProfile")
        self.power_w = check_power(power_w, where="MeasuredProfile")
        self.device = _check_device(device)
        if backend == "executorch" and self.device.type != "cpu":
            raise ValueError(
                "The 'device' parameter of MeasuredProfile must be 'cpu' with backend="
                f"'executorch' (the XNNPACK delegate runs on the CPU). Got {device!r} instead."
            )

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
        x = _seeded_input(shape)
        backend_details: dict[str, Any] = {}
        with _TIMING_LOCK:
            meter, nvml_problem = None, None
            if self.device.type == "cuda":
                meter, nvml_problem = _NvmlEnergyMeter.open(self.device)
            try:
                if self.backend == "torch":
                    timing = self._time_torch(host_model, x, meter=meter)
                elif self.backend == "executorch":
                    timing, backend_details = self._time_executorch(model, x, meter=meter)
                else:
                    timing = self._time_onnxruntime(host_model, x, meter=meter)
            finally:
                if meter is not None:
                    meter.close()
        samples_ms = [s * 1e3 for s in timing.samples_s]
        spread = latency_spread(samples_ms)
        latency_ms = spread.pop("median_ms")
        details: dict[str, Any] = {
            "backend": self.backend,
            "device": str(self.device),
            "threads": self.threads,
            "warmup": self.warmup,
            "repeats": self.repeats,
            **spread,
            "samples_ms": samples_ms,
            "note": _HOST_NOTE,
        }
        details.update(backend_details)
        energy_mj, energy_details = self._energy(
            latency_ms, meter=meter, nvml_problem=nvml_problem, window_s=timing.window_s
        )
        details.update(energy_details)
        return metrics_with_memory(
            model, costs, latency_ms=latency_ms, energy_mj=energy_mj, details=details
        )

    def _energy(
        self,
        latency_ms: float,
        *,
        meter: _NvmlEnergyMeter | None,
        nvml_problem: str | None,
        window_s: float,
    ) -> tuple[float, dict[str, Any]]:
        """Energy per inference (mJ) and its details keys: NVML, else power_w, else NaN."""
        if meter is not None:
            total_mj, nvml_problem = meter.total_mj()
            if total_mj is not None:
                return total_mj / self.repeats, {
                    "energy_source": "nvml",
                    "nvml_device": meter.bus_id,
                    "nvml_energy_total_mj": total_mj,
                    "energy_window_ms": window_s * 1e3,
                    "energy_note": _NVML_NOTE + _window_warning(window_s),
                }
        energy_mj, details = power_energy(self.power_w, latency_ms=latency_ms)
        if nvml_problem is not None:
            notes = [f"NVML energy not used: {nvml_problem}.", details.get("energy_note")]
            details["energy_note"] = " ".join(n for n in notes if n)
        return energy_mj, details

    def _time_torch(
        self, model: nn.Module, x: torch.Tensor, *, meter: _NvmlEnergyMeter | None
    ) -> _Timing:
        model = model.to(self.device)
        x = x.to(self.device)
        previous_threads = torch.get_num_threads()
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        try:
            with torch.inference_mode():
                return self._time(lambda: model(x), meter=meter)
        finally:
            torch.set_num_threads(previous_threads)

    def _time_onnxruntime(
        self, model: nn.Module, x: torch.Tensor, *, meter: _NvmlEnergyMeter | None
    ) -> _Timing:
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
        return self._time(lambda: session.run(None, feeds), sync=False, meter=meter)

    def _time_executorch(
        self, model: nn.Module, x: torch.Tensor, *, meter: _NvmlEnergyMeter | None
    ) -> tuple[_Timing, dict[str, Any]]:
        from autocompress.hardware_profiles import executorch_backend as et

        program = et.lower_to_executorch(model, input_shape=tuple(x.shape[1:]), seed=_INPUT_SEED)
        # The method is loaded inside: a threadpool change invalidates methods loaded before.
        with et.executorch_threads(self.threads) as threads:
            method = et.load_method(program.buffer)
            timing = self._time(lambda: method.execute([x]), sync=False, meter=meter)
        return timing, et.measured_details(program, threads=threads)

    def _time(
        self,
        run: Callable[[], Any],
        *,
        sync: bool = True,
        meter: _NvmlEnergyMeter | None = None,
    ) -> _Timing:
        cuda = sync and self.device.type == "cuda"
        for _ in range(self.warmup):
            run()
        if cuda:  # warm-up work still queued on the GPU must not count in the energy window
            torch.cuda.synchronize(self.device)
        window_start = time.perf_counter()
        if meter is not None:
            meter.read()
        samples = []
        for _ in range(self.repeats):
            if cuda:
                torch.cuda.synchronize(self.device)
            start = time.perf_counter()
            run()
            if cuda:
                torch.cuda.synchronize(self.device)
            samples.append(time.perf_counter() - start)
        if meter is not None:
            meter.read()
        return _Timing(samples, time.perf_counter() - window_start)


class _NvmlEnergyMeter:
    """The total-energy counter (mJ since the driver loaded) of one GPU, through NVML.

    Made per measurement by :meth:`open` (which calls ``nvmlInit``) and closed with
    :meth:`close` (``nvmlShutdown``; NVML counts init/shutdown pairs, so other users of NVML in
    the process are unaffected). :meth:`read` never raises: the first failure is kept in
    ``error`` and reported by :meth:`total_mj`.
    """

    def __init__(self, nvml: Any, handle: Any, *, bus_id: str) -> None:
        self._nvml = nvml
        self._handle = handle
        self.bus_id = bus_id
        self.readings_mj: list[float] = []
        self.error: str | None = None

    @classmethod
    def open(cls, device: torch.device) -> tuple[_NvmlEnergyMeter | None, str | None]:
        """A meter for CUDA ``device``, or None and the reason NVML cannot be used."""
        try:
            import pynvml  # optional (the 'gpu' extra): only for CUDA measurements
        except ImportError:
            return None, _NVML_MISSING
        # NVML failures (no driver, GPU lost, call not supported) must never break a latency
        # measurement: report them and fall back to power_w.
        try:
            pynvml.nvmlInit()
        except Exception as err:
            return None, f"nvmlInit failed ({err})"
        try:
            bus_id, handle = _nvml_handle(pynvml, device)
        except Exception as err:
            _nvml_shutdown(pynvml)
            return None, f"no NVML handle for {device} ({err})"
        return cls(pynvml, handle, bus_id=bus_id), None

    def read(self) -> None:
        if self.error is not None:
            return
        try:
            value = self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)
        except Exception as err:  # e.g. NVMLError_NotSupported before Volta
            self.error = f"nvmlDeviceGetTotalEnergyConsumption failed on {self.bus_id} ({err})"
            return
        self.readings_mj.append(float(value))

    def total_mj(self) -> tuple[float | None, str | None]:
        """Energy between the first and last reading, or None and the reason there is none."""
        if self.error is not None:
            return None, self.error
        if len(self.readings_mj) < 2:
            return None, "the energy counter was not read around the timed runs"
        total = self.readings_mj[-1] - self.readings_mj[0]
        if not total > 0:
            return None, (
                f"the energy counter of {self.bus_id} did not advance during the timed runs "
                f"(readings {self.readings_mj[0]:g} and {self.readings_mj[-1]:g} mJ); "
                "raise repeats so that the runs last longer"
            )
        return total, None

    def close(self) -> None:
        _nvml_shutdown(self._nvml)


def _nvml_handle(nvml: Any, device: torch.device) -> tuple[str, Any]:
    """``(PCI bus id, NVML handle)`` of CUDA ``device``.

    Matched by PCI bus id rather than index: CUDA's device order (and CUDA_VISIBLE_DEVICES)
    need not match NVML's.
    """
    props = torch.cuda.get_device_properties(device)
    bus = getattr(props, "pci_bus_id", None)
    if bus is None:  # torch without PCI ids: trust the index when no devices are hidden
        if os.environ.get("CUDA_VISIBLE_DEVICES") is not None:
            raise RuntimeError("torch gives no PCI bus id and CUDA_VISIBLE_DEVICES is set")
        index = device.index or 0
        return f"index {index}", nvml.nvmlDeviceGetHandleByIndex(index)
    bus_id = f"{props.pci_domain_id:08X}:{bus:02X}:{props.pci_device_id:02X}.0"
    return bus_id, nvml.nvmlDeviceGetHandleByPciBusId(bus_id)


def _nvml_shutdown(nvml: Any) -> None:
    try:
        nvml.nvmlShutdown()
    except Exception:  # nothing useful to do about a failed shutdown
        pass


def _window_warning(window_s: float) -> str:
    if window_s >= _NVML_MIN_WINDOW_S:
        return ""
    return (
        f" The timed runs lasted only {window_s * 1e3:.0f} ms, and the driver refreshes the "
        "counter periodically: the figure is coarse; raise repeats."
    )


def latency_spread(samples_ms: Sequence[float]) -> dict[str, float]:
    """Median, p10, p90, min and max (ms) of timing samples, keyed ``median_ms``, ``p10_ms``..."""
    return {
        "median_ms": float(np.median(samples_ms)),
        "p10_ms": float(np.percentile(samples_ms, 10)),
        "p90_ms": float(np.percentile(samples_ms, 90)),
        "min_ms": float(min(samples_ms)),
        "max_ms": float(max(samples_ms)),
    }


def power_energy(power_w: float | None, *, latency_ms: float) -> tuple[float, dict[str, Any]]:
    """Energy (mJ) as ``power_w * latency`` and the details keys that say where it came from.

    Without ``power_w``: NaN and a note saying how to get energy.
    """
    if power_w is None:
        return math.nan, {"energy_source": None, "energy_note": _ENERGY_NOTE}
    return power_w * latency_ms, {"energy_source": "power_w"}  # W * ms = mJ


def float_onnx_bytes(model: nn.Module, *, input_shape: tuple[int, ...]) -> bytes:
    """ONNX bytes of a float copy of ``model`` (see :func:`_float_copy`) at batch size 1.

    The copy is traced on the same seeded input the host measurements use; ``model`` itself is
    not modified. Shared by :class:`MeasuredProfile` and the remote profile.
    """
    return _export_onnx(_float_copy(model), _seeded_input(input_shape))


def _seeded_input(shape: tuple[int, ...]) -> torch.Tensor:
    generator = torch.Generator().manual_seed(_INPUT_SEED)
    return torch.randn((1, *shape), generator=generator)


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
    with _EXPORT_LOCK, warnings.catch_warnings():
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
