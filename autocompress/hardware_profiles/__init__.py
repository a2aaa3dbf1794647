"""What a candidate model costs on an edge target: latency, energy, size, peak memory.

Registered profiles (``list_hardware_profiles()``):

- ``analytic``: roofline + energy per operation from a cited device spec, bit-width aware;
- ``measured``: real inference timed on this host (float kernels: architecture and pruning
  only; or int8 kernels through ExecuTorch's XNNPACK delegate), with NVML GPU energy on CUDA;
- ``remote``: the same timing done by ``autocompress agent`` on a target device over HTTP;
- ``lut``: per-layer latencies measured once (``autocompress profile build-lut``), or imported
  from a table measured elsewhere (``profile import-lut``, :func:`import_lut_csv`), and summed;
- ``learned``: a per-layer gradient-boosted predictor with a model-level correction, trained
  from measurements (``autocompress profile fit``, or :func:`fit_latency_predictor`).

onnxruntime, ExecuTorch and scikit-learn are imported only when a profile that needs them is
used.
"""

from autocompress.hardware_profiles._base import (
    HardwareMetrics,
    HardwareProfile,
    create_hardware_profile,
    list_hardware_profiles,
    register_hardware_profile,
)
from autocompress.hardware_profiles.agent import AgentServer, serve
from autocompress.hardware_profiles.analytic import AnalyticProfile
from autocompress.hardware_profiles.calibration import AnalyticCalibration, calibrate_analytic
from autocompress.hardware_profiles.device_spec import (
    DeviceSpec,
    MacCost,
    list_devices,
    load_device,
)
from autocompress.hardware_profiles.fidelity import LatencyFidelity, latency_fidelity
from autocompress.hardware_profiles.graph import (
    LayerCost,
    layer_costs,
    model_size_bytes,
    peak_activation_bytes,
)
from autocompress.hardware_profiles.host import host_device_spec
from autocompress.hardware_profiles.learned import LearnedProfile
from autocompress.hardware_profiles.lut import LUTProfile
from autocompress.hardware_profiles.lut_build import build_lut, layer_shapes_of_space
from autocompress.hardware_profiles.lut_calibration import TableCalibration, calibrate_to_lut
from autocompress.hardware_profiles.lut_import import import_lut_csv
from autocompress.hardware_profiles.lut_table import LatencyLUT, LayerKey
from autocompress.hardware_profiles.lut_trace import model_layers
from autocompress.hardware_profiles.measured import MeasuredProfile
from autocompress.hardware_profiles.predictor import LatencyPredictor, fit_predictor
from autocompress.hardware_profiles.predictor_fit import PredictorFit, fit_latency_predictor
from autocompress.hardware_profiles.remote import RemoteProfile

__all__ = [
    "AgentServer",
    "AnalyticCalibration",
    "AnalyticProfile",
    "DeviceSpec",
    "HardwareMetrics",
    "HardwareProfile",
    "LUTProfile",
    "LatencyFidelity",
    "LatencyLUT",
    "LatencyPredictor",
    "LayerCost",
    "LayerKey",
    "LearnedProfile",
    "MacCost",
    "MeasuredProfile",
    "PredictorFit",
    "RemoteProfile",
    "TableCalibration",
    "build_lut",
    "calibrate_analytic",
    "calibrate_to_lut",
    "create_hardware_profile",
    "fit_latency_predictor",
    "fit_predictor",
    "host_device_spec",
    "import_lut_csv",
    "latency_fidelity",
    "layer_shapes_of_space",
    "layer_costs",
    "list_devices",
    "list_hardware_profiles",
    "load_device",
    "model_layers",
    "model_size_bytes",
    "peak_activation_bytes",
    "register_hardware_profile",
    "serve",
]
