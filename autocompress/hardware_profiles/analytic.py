"""Roofline latency + energy-per-operation estimate of a model on a described edge device."""

from __future__ import annotations

import os
from typing import Any

from torch import nn

from autocompress.hardware_profiles._base import (
    HardwareMetrics,
    HardwareProfile,
    register_hardware_profile,
)
from autocompress.hardware_profiles.device_spec import (
    DeviceSpec,
    MacCost,
    list_devices,
    load_device,
)
from autocompress.hardware_profiles.graph import (
    LayerCost,
    check_input_shape,
    layer_costs,
    metrics_with_memory,
)

__all__ = ["AnalyticProfile", "DeviceSpec", "layer_row", "list_devices", "load_device"]

_PJ_TO_MJ = 1e-9
_S_TO_MS = 1e3


@register_hardware_profile("analytic")
class AnalyticProfile(HardwareProfile):
    """Cost a model on a :class:`DeviceSpec` without running it there.

    Per Conv/Linear layer (see :mod:`.graph` for how MACs and bytes are counted):

    * precision and peak rate from :meth:`DeviceSpec.mac_cost` (fallback to the next supported
      precision, or BitFusion-style scaling on bit-flexible devices), with non-uniform weights
      at :meth:`DeviceSpec.weight_compute_bits` (int8 unless the spec declares shifts);
    * compute time = MACs / (peak * efficiency), the efficiency from
      :meth:`DeviceSpec.efficiency` (``compute_efficiency`` unless the spec has calibration
      terms per precision or for depthwise/grouped convs); with a ``channel_tile``, the MACs
      of a partly filled last block of output channels count as full;
    * memory time = off-chip bytes / memory bandwidth. When the whole model's weights fit in
      ``onchip_memory_bytes`` they are assumed resident on chip (loaded once, reused across
      inferences), so they cost SRAM energy and no bandwidth time; activations always go
      off-chip. On-chip bandwidth is assumed never to be the bottleneck;
    * latency = max(compute, memory) + layer_overhead_s (roofline: compute and transfers
      overlap), summed over layers run one after another;
    * energy = MACs * pJ/MAC + off-chip bytes * DRAM pJ/byte + on-chip bytes * SRAM pJ/byte;
    * a sparse layer is priced dense, unless the device declares a kernel for its N:M pattern
      (``DeviceSpec.sparse``) and its input width is a multiple of M: then its MAC time and
      energy are divided by the declared speedup and its weight is read in its sparse encoding.

    Attention calls are costed the same way, in fp32, from their MACs and bytes (see
    :mod:`.graph`), as rows of ``details["attention"]``; other layers than these are free
    (fused); static power is not modelled. ``details`` holds one row per Conv/Linear call
    (``"layers"``) and per attention call, plus the totals.
    """

    def __init__(self, *, device: str | os.PathLike[str] | DeviceSpec) -> None:
        if not isinstance(device, str | os.PathLike | DeviceSpec):
            raise ValueError(
                "The 'device' parameter of AnalyticProfile must be a device name "
                f"{list_devices()}, a YAML path or a DeviceSpec. Got {device!r} instead."
            )
        self.device = device if isinstance(device, DeviceSpec) else load_device(device)

    def __repr__(self) -> str:
        return f"AnalyticProfile(device={self.device.name!r})"

    def profile(self, model: nn.Module, *, input_shape: tuple[int, ...]) -> HardwareMetrics:
        shape = check_input_shape(input_shape, caller="AnalyticProfile.profile")
        costs = layer_costs(model, input_shape=shape, attention=True)
        # Dedupe by name: a layer called twice stores its weights once.
        total_weight_bytes = sum({c.name: c.weight_bytes for c in costs}.values())
        weights_on_chip = total_weight_bytes <= self.device.onchip_memory_bytes
        rows = [layer_row(self.device, c, weights_on_chip=weights_on_chip) for c in costs]
        # Kept apart so that "layers" lists the Conv/Linear calls that every profile sees
        # (LUTProfile's analytic fallback matches its rows to them one by one).
        layers = [c for c in costs if c.kind != "attention"]
        return metrics_with_memory(
            model,
            layers,
            latency_ms=sum(r["latency_ms"] for r in rows),
            energy_mj=sum(r["energy_mj"] for r in rows),
            details={
                "device": self.device.name,
                "total_macs": sum(c.macs for c in costs),
                "weight_bytes": total_weight_bytes,
                "weights_on_chip": weights_on_chip,
                "layers": [r for r in rows if r["kind"] != "attention"],
                "attention": [r for r in rows if r["kind"] == "attention"],
            },
        )


def layer_row(spec: DeviceSpec, cost: LayerCost, *, weights_on_chip: bool) -> dict[str, Any]:
    """One layer's row of :attr:`HardwareMetrics.details` on ``spec`` (see
    :class:`AnalyticProfile`): its MACs, bytes, compute and memory time, latency and energy.
    ``weights_on_chip``: the whole model's weights fit in ``spec.onchip_memory_bytes``."""
    w_bits = spec.weight_compute_bits(cost.w_bits, cost.quantizer)
    mac: MacCost = spec.mac_cost(w_bits=w_bits, a_bits=cost.a_bits)
    kernel = spec.sparse.get(cost.sparsity) if cost.sparse_aligned else None
    speedup = kernel.speedup if kernel is not None else 1.0
    # Without a sparse kernel the zeros are multiplied and the dense weight is read.
    weight = cost.sparse_weight_bytes if kernel is not None else cost.weight_bytes
    total_bytes = cost.total_bytes - cost.weight_bytes + weight
    onchip_bytes = weight if weights_on_chip else 0
    offchip_bytes = total_bytes - onchip_bytes
    efficiency = spec.efficiency(
        precision=spec.compute_precision(w_bits=w_bits, a_bits=cost.a_bits),
        layer=cost.layer_class,
    )
    macs: float = cost.macs
    if spec.channel_tile is not None and cost.out_channels > 0:
        # A partly filled block of output channels takes the time of a full one.
        macs = cost.macs * spec.tiled_channels(cost.out_channels) / cost.out_channels
    compute_s = macs / (mac.peak_macs_per_s * efficiency) / speedup
    memory_s = offchip_bytes / spec.memory_bandwidth_bytes_per_s
    latency_s = max(compute_s, memory_s) + spec.layer_overhead_s
    energy_pj = (
        cost.macs * mac.energy_pj / speedup
        + offchip_bytes * spec.energy_per_dram_byte_pj
        + onchip_bytes * spec.energy_per_sram_byte_pj
    )
    row = {
        "name": cost.name,
        "kind": cost.kind,
        "macs": cost.macs,
        "w_bits": cost.w_bits,
        "a_bits": cost.a_bits,
        "precision": mac.precision,
        "offchip_bytes": offchip_bytes,
        "onchip_bytes": onchip_bytes,
        "compute_ms": compute_s * _S_TO_MS,
        "memory_ms": memory_s * _S_TO_MS,
        "bound": "compute" if compute_s >= memory_s else "memory",
        "latency_ms": latency_s * _S_TO_MS,
        "energy_mj": energy_pj * _PJ_TO_MJ,
    }
    if cost.quantizer != "uniform":  # rows of uniform layers stay as they were
        row["quantizer"] = cost.quantizer
    if cost.sparse_weight_bytes is not None:
        row["sparsity"] = cost.sparsity
        row["sparse_speedup"] = speedup
    return row
