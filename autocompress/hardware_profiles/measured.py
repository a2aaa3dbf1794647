"""Wall-clock latency of batch-1 inference on this host (PyTorch, ONNX Runtime, ExecuTorch or
LiteRT).

On a CUDA device with NVML available (``pynvml``, from the ``gpu`` extra), energy per inference
is read from the GPU's total-energy counter around the timed runs.
"""

from __future__ import annotations

import math
import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from autocompress.core.validation import check_int
from autocompress.hardware_profiles._base import (
    HardwareMetrics,
    HardwareProfile,
    register_hardware_profile,
)
from autocompress.hardware_profiles.checks import check_power, check_threads
from autocompress.hardware_profiles.deployed import (
    FP32,
    ConversionReuse,
    DeployedOnnx,
    executed_precisions,
    float_copy,
    precision_summary,
    seeded_input,
)
from autocompress.hardware_profiles.graph import check_input_shape, layer_costs, metrics_with_memory
from autocompress.hardware_profiles.timing import (
    DEFAULT_MAX_ROUNDS,
    DEFAULT_ROUNDS,
    TimingResult,
    time_calls,
)

__all__ = ["MeasuredProfile"]

_BACKENDS = ("torch", "onnxruntime", "executorch", "litert")
# Backends that run a converted program and only ever time it as deployed.
_CONVERTED = ("executorch", "litert")
_HOST_NOTE = (
    "Measured with float kernels on the host (quant_enabled=False): latency reflects "
    "architecture and pruning, not bit-widths."
)
_INT8_NOTE = (
    "Measured on onnxruntime as deployed: layers with at most 8-bit weights and inputs run "
    "its int8 QDQ kernels, the others fp32."
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


@register_hardware_profile("measured")
class MeasuredProfile(ConversionReuse, HardwareProfile):
    """Time real batch-1 inference on this machine.

    What runs: ``backend="onnxruntime"`` (needs the ``onnx`` extra) times the model as it is
    deployed: with ``quantized=True`` (its default) every Conv/Linear whose weights and inputs
    have at most 8 bits runs onnxruntime's int8 QDQ kernels and every other layer fp32 (see
    :mod:`~autocompress.hardware_profiles.deployed`; a 2-4-bit layer executes as int8, as no
    narrower CPU kernel exists). ``details["precisions"]`` says which precision each layer
    really ran at, read from the graph onnxruntime optimised, and ``details["precision_note"]``
    sums it up. ``quantized=False`` times the float twin. ``backend="torch"`` (eager) has no
    integer kernels for these layers: it times the float copy (fake quantization off), so its
    latency reflects architecture and pruning, NOT bit-widths. ``size_bytes`` and
    ``peak_mem_bytes`` use the bits in every case (same functions as the analytic profile).

    Timing (:mod:`~autocompress.hardware_profiles.timing`): ``warmup`` untimed runs and more
    until two batches agree, then ``repeats`` timed runs in ``rounds`` rounds, more rounds (up
    to ``max_rounds``) while the two fastest round medians differ by more than 5%;
    ``latency_ms`` is the smallest round median. ``details`` has p10/p90/min/max, the round
    medians, ``repeatability`` (the gap between the two fastest rounds) and the samples.
    ``threads``: intra-op threads (torch.set_num_threads, restored afterwards / ORT
    intra_op_num_threads); None keeps the library default. ``device``: ``"cpu"`` or a CUDA
    device (``"cuda"``, ``"cuda:1"``); CUDA runs are synchronised around each timed call.

    ``backend="litert"`` (CPU only; needs the ``litert`` extra) converts the model with
    :mod:`~.litert` and times it in the LiteRT interpreter: int8 where w_bits and a_bits are
    <= 8, float32 elsewhere, so unlike the float backends it times that split;
    ``details["layer_precision"]`` says what each layer ran in.

    ``backend="executorch"`` (CPU only; needs the ``executorch`` extra) lowers the model to an
    XNNPACK ``.pte`` (:mod:`~.executorch_backend`: int8 kernels for layers of <= 8 weight and
    input bits, float32 for the rest; ``details["layers"]`` says which layer ran in which) and
    times it with ExecuTorch's runtime; ``threads`` sizes the XNNPACK threadpool.

    Energy, first that applies (``details["energy_source"]`` says which):

    * ``"nvml"``: on a CUDA device with NVML (``pynvml`` from the ``gpu`` extra) and a GPU that
      has a total-energy counter (Volta or newer), the counter's increase over the timed runs
      divided by their number. It is the whole board's energy, idle power and other processes'
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
        backend: Literal["torch", "onnxruntime", "executorch", "litert"] = "torch",
        warmup: int = 5,
        repeats: int = 30,
        threads: int | None = None,
        power_w: float | None = None,
        device: str = "cpu",
        quantized: bool | None = None,
        rounds: int = DEFAULT_ROUNDS,
        max_rounds: int = DEFAULT_MAX_ROUNDS,
    ) -> None:
        if backend not in _BACKENDS:
            raise ValueError(
                "The 'backend' parameter of MeasuredProfile must be one of "
                f"{list(_BACKENDS)}. Got {backend!r} instead."
            )
        self.backend = backend
        self.warmup = check_int(warmup, name="warmup", where="MeasuredProfile", minimum=0)
        self.repeats = check_int(repeats, name="repeats", where="MeasuredProfile", minimum=1)
        self.rounds = check_int(rounds, name="rounds", where="MeasuredProfile", minimum=1)
        self.max_rounds = check_int(
            max_rounds, name="max_rounds", where="MeasuredProfile", minimum=1
        )
        self.threads = check_threads(threads, where="MeasuredProfile")
        self.power_w = check_power(power_w, where="MeasuredProfile")
        self.device = _check_device(device)
        if quantized is None:
            quantized = backend != "torch"
        if not isinstance(quantized, bool):
            raise ValueError(
                "The 'quantized' parameter of MeasuredProfile must be true or false. "
                f"Got {quantized!r} instead."
            )
        if quantized and backend == "torch":
            raise ValueError(
                "The 'quantized' parameter of MeasuredProfile can only be true with backend "
                "'onnxruntime', 'executorch' or 'litert' (eager torch has no integer kernels for "
                "these layers). Got quantized=True with backend='torch'."
            )
        if not quantized and backend in _CONVERTED:
            raise ValueError(
                "The 'quantized' parameter of MeasuredProfile must be true with backend "
                f"{backend!r} (it times the converted program as deployed). Got quantized=False."
            )
        self.quantized = quantized
        if backend in _CONVERTED and self.device.type != "cpu":
            raise ValueError(
                f"The 'device' parameter of MeasuredProfile must be 'cpu' with backend {backend!r} "
                f"(its runtime runs on the CPU). Got {device!r} instead."
            )

    def __repr__(self) -> str:
        return (
            f"MeasuredProfile(backend={self.backend!r}, quantized={self.quantized}, "
            f"warmup={self.warmup}, repeats={self.repeats}, threads={self.threads}, "
            f"power_w={self.power_w}, device={str(self.device)!r})"
        )

    def profile(self, model: nn.Module, *, input_shape: tuple[int, ...]) -> HardwareMetrics:
        shape = check_input_shape(input_shape, caller="MeasuredProfile.profile")
        costs = layer_costs(model, input_shape=shape)
        precision: dict[str, Any] = {}
        if self.backend == "litert":  # converted before the lock: conversion is not timed
            from autocompress.hardware_profiles.litert import litert_timed_run

            converted = self._converted(model, shape, runtime="litert", quantized=True)
            litert_run = litert_timed_run(converted, seeded_input(shape), threads=self.threads)
            precision = dict(converted[1])
        with _TIMING_LOCK:
            meter, nvml_problem = None, None
            if self.device.type == "cuda":
                meter, nvml_problem = _NvmlEnergyMeter.open(self.device)
            try:
                if self.backend == "torch":
                    x = seeded_input(shape)
                    timing = self._time_torch(float_copy(model), x, meter=meter)
                elif self.backend == "litert":
                    timing = self._time(litert_run, meter=meter)
                elif self.backend == "executorch":
                    program = self._converted(model, shape, runtime="executorch", quantized=True)
                    timing, precision = self._time_executorch(program, shape, meter=meter)
                else:
                    deployed = self._converted(
                        model, shape, runtime="onnxruntime", quantized=self.quantized
                    )
                    timing, precision = self._time_onnxruntime(deployed, shape, meter=meter)
            finally:
                if meter is not None:
                    meter.close()
        spread = timing.details()
        latency_ms = timing.latency_s * 1e3
        details: dict[str, Any] = {
            "backend": self.backend,
            "quantized": self.quantized,
            "device": str(self.device),
            "threads": self.threads,
            "warmup": self.warmup,
            "repeats": self.repeats,
            **spread,
            "note": _INT8_NOTE if self.quantized else _HOST_NOTE,
            **precision,  # LiteRT's details carry their own note
        }
        energy_mj, energy_details = self._energy(
            latency_ms,
            meter=meter,
            nvml_problem=nvml_problem,
            window_s=timing.window_s,
            runs=len(timing.samples_s),
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
        runs: int,
    ) -> tuple[float, dict[str, Any]]:
        """Energy per inference (mJ) and its details keys: NVML, else power_w, else NaN."""
        if meter is not None:
            total_mj, nvml_problem = meter.total_mj()
            if total_mj is not None:
                return total_mj / runs, {
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
    ) -> TimingResult:
        model = model.to(self.device)
        x = x.to(self.device)
        previous_threads = torch.get_num_threads()
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        sync = None
        if self.device.type == "cuda":
            device = self.device

            def sync() -> None:
                torch.cuda.synchronize(device)

        try:
            with torch.inference_mode():
                return self._time(lambda: model(x), sync=sync, meter=meter)
        finally:
            torch.set_num_threads(previous_threads)

    def _time_onnxruntime(
        self, deployed: DeployedOnnx, shape: tuple[int, ...], *, meter: _NvmlEnergyMeter | None
    ) -> tuple[TimingResult, dict[str, Any]]:
        try:
            import onnx
            import onnxruntime as ort  # heavy, optional: only when this backend is used
        except ImportError as err:
            raise ImportError(
                "MeasuredProfile(backend='onnxruntime') needs onnx and onnxruntime: "
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
        with tempfile.TemporaryDirectory(prefix="autocompress-ort-") as folder:
            optimized = Path(folder) / "optimized.onnx"
            if self.quantized:  # the graph onnxruntime runs says which layers got int8 kernels
                options.optimized_model_filepath = str(optimized)
            session = ort.InferenceSession(
                deployed.model_bytes,
                sess_options=options,
                providers=[provider],
                provider_options=provider_options,
            )
            executed = {name: FP32 for name in deployed.planned}
            if self.quantized:
                executed = executed_precisions(onnx.load(optimized), deployed.planned)
        feeds = {session.get_inputs()[0].name: seeded_input(shape).numpy()}
        # session.run returns host arrays, so each call is complete when it returns.
        timing = self._time(lambda: session.run(None, feeds), meter=meter)
        precision = {
            "precisions": executed,
            "requested_bits": {k: list(v) for k, v in deployed.requested.items()},
            "precision_note": precision_summary(deployed.requested, executed, deployed.planned),
        }
        return timing, precision

    def _time_executorch(
        self, program: Any, shape: tuple[int, ...], *, meter: _NvmlEnergyMeter | None
    ) -> tuple[TimingResult, dict[str, Any]]:
        from autocompress.hardware_profiles import executorch_backend as et

        x = seeded_input(shape)
        # The method is loaded inside: a threadpool change invalidates methods loaded before.
        with et.executorch_threads(self.threads) as threads:
            method = et.load_method(program.buffer)
            timing = self._time(lambda: method.execute([x]), meter=meter)
        return timing, et.measured_details(program, threads=threads)

    def _time(
        self,
        run: Callable[[], Any],
        *,
        sync: Callable[[], None] | None = None,
        meter: _NvmlEnergyMeter | None = None,
    ) -> TimingResult:
        return time_calls(
            run,
            warmup=self.warmup,
            repeats=self.repeats,
            rounds=self.rounds,
            max_rounds=self.max_rounds,
            sync=sync,
            on_window=None if meter is None else meter.read,
        )


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


def power_energy(power_w: float | None, *, latency_ms: float) -> tuple[float, dict[str, Any]]:
    """Energy (mJ) as ``power_w * latency`` and the details keys that say where it came from.

    Without ``power_w``: NaN and a note saying how to get energy.
    """
    if power_w is None:
        return math.nan, {"energy_source": None, "energy_note": _ENERGY_NOTE}
    return power_w * latency_ms, {"energy_source": "power_w"}  # W * ms = mJ


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
