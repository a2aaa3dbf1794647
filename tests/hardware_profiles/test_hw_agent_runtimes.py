"""The agent times ExecuTorch programs and LiteRT models too, told apart by their bytes, and
the remote profile sends them converted as the measured profile would."""

import pytest
from torch import nn

from autocompress.compression.quantization import QuantConv2d, QuantLinear
from autocompress.hardware_profiles import RemoteProfile
from autocompress.hardware_profiles.agent import serve
from autocompress.hardware_profiles.onnx_timing import model_runtime

SHAPE = (3, 8, 8)


def _model() -> nn.Module:
    return nn.Sequential(
        QuantConv2d(3, 8, 3, padding=1, w_bits=4, a_bits=8),
        nn.ReLU(),
        QuantConv2d(8, 8, 3, padding=1, w_bits=16, a_bits=16),
        nn.Flatten(),
        QuantLinear(8 * 8 * 8, 10, w_bits=8, a_bits=8),
    ).eval()


def test_the_runtime_is_told_from_the_file_identifier():
    assert model_runtime(b"<\x00\x00\x00ET12eh00") == "executorch"
    assert model_runtime(b"\x1c\x00\x00\x00TFL3\x14\x00") == "litert"
    assert model_runtime(b"\x08\n\x12\x0cautocompress") == "onnxruntime"


@pytest.mark.parametrize(
    ("runtime", "module", "precision_key"),
    [("executorch", "executorch", "layers"), ("litert", "ai_edge_litert", "layer_precision")],
)
def test_remote_profile_times_a_converted_program_on_the_agent(runtime, module, precision_key):
    pytest.importorskip(module)
    with serve(port=0) as agent:
        assert agent.url  # bound
        profile = RemoteProfile(url=agent.url, warmup=1, repeats=3, threads=1, runtime=runtime)
        metrics = profile.profile(_model(), input_shape=SHAPE)
        info = profile.info()
    assert metrics.latency_ms > 0 and info["runtimes"][runtime] is True
    details = metrics.details
    assert details["runtime"] == runtime and details[precision_key]
    assert details["rounds"] >= 3 and "repeatability" in details


def test_remote_runtime_is_checked():
    with pytest.raises(ValueError, match="'runtime' parameter of RemoteProfile"):
        RemoteProfile(url="http://127.0.0.1:9", runtime="tflite")
    with pytest.raises(ValueError, match="'quantized' parameter of RemoteProfile"):
        RemoteProfile(url="http://127.0.0.1:9", runtime="executorch", quantized=False)
