"""Facts about this machine: what is stored with a measurement (:func:`host_facts`) and a first
guess of its roofline :class:`DeviceSpec` (:func:`host_device_spec`), both read from the one
parse of ``/proc/cpuinfo`` in :func:`read_cpuinfo`."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from autocompress.core.validation import check_int
from autocompress.hardware_profiles.device_spec import DeviceSpec

__all__ = ["CpuInfo", "cpu_model", "host_device_spec", "host_facts", "read_cpuinfo"]

# What host_device_spec assumes when /proc/cpuinfo does not say (non-Linux hosts).
_DEFAULT_MHZ = 2000.0
_DEFAULT_L2_BYTES = 1024**2


class CpuInfo(NamedTuple):
    """What ``/proc/cpuinfo`` says about the first CPU listed: ``model`` name, clock ``mhz``
    and instruction-set ``flags``; None / empty where it does not say (or does not exist)."""

    model: str | None
    mhz: float | None
    flags: frozenset[str]


def read_cpuinfo(path: str | os.PathLike[str] = "/proc/cpuinfo") -> CpuInfo:
    """Parse ``path`` (Linux's ``/proc/cpuinfo`` format); a missing or unreadable file gives an
    empty :class:`CpuInfo`, never an error."""
    model, mhz, flags = None, None, frozenset()
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, ValueError):
        return CpuInfo(model, mhz, flags)
    for line in lines:
        field, _, value = line.partition(":")
        field = field.strip()
        if field == "model name" and model is None:
            model = value.strip()
        elif field == "cpu MHz" and mhz is None:
            try:
                mhz = float(value)
            except ValueError:
                pass
        elif field == "flags" and not flags:
            flags = frozenset(value.split())
    return CpuInfo(model, mhz, flags)


def cpu_model() -> str:
    """This CPU's model name (``platform`` facts where ``/proc/cpuinfo`` has none)."""
    return read_cpuinfo().model or platform.processor() or platform.machine()


def host_facts(*, backend: str, threads: int | None) -> dict[str, Any]:
    """Machine and library facts stored with a LUT or predictor, so a reader knows where the
    numbers were measured and can tell when they no longer apply."""
    facts: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "machine": platform.machine(),
        "system": platform.platform(),
        "logical_cpus": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "backend": backend,
        "threads": threads,
    }
    if backend == "onnxruntime":
        try:
            import onnxruntime

            facts["onnxruntime"] = onnxruntime.__version__
        except ImportError:  # the measurement itself reports the missing extra
            facts["onnxruntime"] = None
    return facts


def host_device_spec(*, threads: int = 1, quantized: bool = False) -> DeviceSpec:
    """A first-guess :class:`DeviceSpec` of this host, meant to be calibrated.

    Peak = ``threads`` x clock x SIMD fp32 lanes (16 with AVX-512, 8 with AVX2, else 4) x 2 FMA
    pipes, read from ``/proc/cpuinfo`` where it exists (2 GHz and 4 lanes otherwise). With
    ``quantized`` (the host runs int8 kernels for <= 8-bit layers, as a quantized
    MeasuredProfile times them) it also computes 8 bits, at 4x the fp32 peak with VNNI
    instructions (one 4-way int8 dot product per lane) and 2x without. Memory
    bandwidth (10 GB/s per thread), ``compute_efficiency`` 0.5 and ``layer_overhead_s`` 5 us are
    engineering guesses; on-chip memory is the L2 of cpu0 (1 MiB if unknown). Energy fields are
    Horowitz (ISSCC 2014) 45 nm placeholders: energy is not calibrated for the host.
    """
    threads = check_int(threads, name="threads", where="host_device_spec", minimum=1)
    info = read_cpuinfo()
    mhz = _DEFAULT_MHZ if info.mhz is None else info.mhz
    lanes = 16 if "avx512f" in info.flags else 8 if "avx2" in info.flags else 4
    fp32_peak = threads * mhz * 1e6 * lanes * 2
    peak, energy, kernels = {32: fp32_peak}, {32: 4.6}, "fp32 kernels"
    if quantized:
        vnni = bool({"avx512_vnni", "avx_vnni"} & set(info.flags))
        peak[8] = fp32_peak * (4 if vnni else 2)
        energy[8] = 0.2  # Horowitz: 8-bit multiply 0.2 pJ
        kernels = f"int8 ({'VNNI' if vnni else 'no VNNI'}) and fp32 kernels"
    return DeviceSpec(
        name="host",
        description=f"This host ({cpu_model()}), {threads} thread(s), {kernels}; first guess.",
        kind="cpu",
        supported_bits=sorted(peak),
        peak_macs_per_s=peak,
        memory_bandwidth_bytes_per_s=1e10 * threads,
        onchip_memory_bytes=_l2_bytes(),
        energy_per_mac_pj=energy,
        energy_per_dram_byte_pj=162.5,
        energy_per_sram_byte_pj=12.5,
        layer_overhead_s=5e-6,
        compute_efficiency=0.5,
        sources=[
            f"/proc/cpuinfo: {mhz:.0f} MHz, {lanes} fp32 SIMD lanes, 2 FMA pipes assumed",
            "M. Horowitz, Computing's energy problem, ISSCC 2014 (energy placeholders)",
            "bandwidth, efficiency and overhead: guesses to be fitted by calibrate_analytic",
        ],
    )


def _l2_bytes() -> int:
    try:
        text = Path("/sys/devices/system/cpu/cpu0/cache/index2/size").read_text().strip()
        units = {"K": 1024, "M": 1024**2}
        return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)
    except (OSError, ValueError, IndexError):
        return _DEFAULT_L2_BYTES
