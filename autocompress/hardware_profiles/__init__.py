"""What a candidate model costs on an edge target: latency, energy, size, peak memory.

``create_hardware_profile("analytic", device="cortex_a72")`` estimates from a cited device spec
(roofline + energy per operation, bit-width aware); ``create_hardware_profile("measured")``
times real inference on this host (float kernels: architecture and pruning only). Importing this
package registers both; onnxruntime is imported only when the measured profile uses it.
"""

from autocompress.hardware_profiles._base import (
    HardwareMetrics,
    HardwareProfile,
    create_hardware_profile,
    list_hardware_profiles,
    register_hardware_profile,
)
from autocompress.hardware_profiles.analytic import AnalyticProfile
from autocompress.hardware_profiles.device_spec import (
    DeviceSpec,
    MacCost,
    list_devices,
    load_device,
)
from autocompress.hardware_profiles.graph import (
    LayerCost,
    layer_costs,
    model_size_bytes,
    peak_activation_bytes,
)
from autocompress.hardware_profiles.measured import MeasuredProfile

__all__ = [
    "AnalyticProfile",
    "DeviceSpec",
    "HardwareMetrics",
    "HardwareProfile",
    "LayerCost",
    "MacCost",
    "MeasuredProfile",
    "create_hardware_profile",
    "layer_costs",
    "list_devices",
    "list_hardware_profiles",
    "load_device",
    "model_size_bytes",
    "peak_activation_bytes",
    "register_hardware_profile",
]
