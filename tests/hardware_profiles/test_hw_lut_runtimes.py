"""Latency tables on the converted runtimes: ExecuTorch (.pte) and LiteRT (.tflite), on this host
and through an agent, keyed by the precision each layer is deployed at."""

import pytest
from torch import nn

from autocompress.compression.quantization import QuantConv2d
from autocompress.hardware_profiles import LUTProfile, RemoteProfile, build_lut
from autocompress.hardware_profiles.agent import serve
from autocompress.hardware_profiles.lut_table import DEPLOYED, LayerKey

_FAST = {"warmup": 0, "repeats": 2, "rounds": 1, "threads": 1}
RUNTIMES = [("executorch", "executorch"), ("litert", "ai_edge_litert")]


def _int8_key() -> LayerKey:
    return LayerKey(
        kind="conv",
        in_channels=8,
        out_channels=8,
        kernel=(3, 3),
        stride=(1, 1),
        padding=(1, 1),
        dilation=(1, 1),
        groups=1,
        input_size=(8, 8),
        bn=False,
        act="none",
        precision="int8",
    )


@pytest.mark.parametrize(("backend", "module"), RUNTIMES)
def test_a_lut_is_measured_with_the_converted_runtime(backend, module):
    pytest.importorskip(module)
    lut = build_lut([_int8_key()], backend=backend, **_FAST)
    assert lut.backend == backend and lut.precision == DEPLOYED
    assert lut.host["backend"] == backend and lut.overhead_ms > 0
    entry = lut.entries[_int8_key()]
    assert entry.alone_ms > 0 and entry.chain_ms > 0
    # The table prices a model made of that layer, at its deployed precision.
    model = nn.Sequential(QuantConv2d(8, 8, 3, padding=1, bias=False, w_bits=4, a_bits=8)).eval()
    metrics = LUTProfile(lut=lut).profile(model, input_shape=(8, 8, 8))
    assert metrics.details["hits"] == 1 and metrics.details["backend"] == backend


def test_a_lut_is_measured_on_an_agent_with_its_runtime():
    pytest.importorskip("ai_edge_litert")
    with serve(port=0) as agent:
        remote = RemoteProfile(url=agent.url, warmup=0, repeats=2, threads=1, runtime="litert")
        lut = build_lut([_int8_key()], backend="litert", remote=remote, **_FAST)
        with pytest.raises(ValueError, match="pass backend='litert' and quantized=True"):
            build_lut([_int8_key()], backend="onnxruntime", remote=remote, **_FAST)
    assert lut.host["remote"] == agent.url and lut.host["backend"] == "litert"
    assert lut.entries[_int8_key()].alone_ms > 0


def test_the_converted_runtimes_time_as_deployed_only():
    with pytest.raises(ValueError, match="'quantized' parameter of MeasuredProfile"):
        build_lut([_int8_key()], backend="executorch", quantized=False, **_FAST)


def test_a_lut_build_converts_each_module_once_over_its_rounds(monkeypatch):
    from autocompress.hardware_profiles import deployed, measured

    converted = []
    convert = deployed.deployed_onnx

    def counting(model, **kwargs):
        converted.append(id(model))
        return convert(model, **kwargs)

    monkeypatch.setattr(deployed, "deployed_onnx", counting)
    lut = build_lut([_int8_key()], backend="onnxruntime", **{**_FAST, "rounds": 3})
    # The overhead op, the context op (one shape before and after this layer), the layer and
    # the layer between two context ops: each converted once, though each is timed in every
    # round (the overhead op 3 times).
    assert len(converted) == len(set(converted)) == 4 and len(lut) == 1

    # Outside a build, every profile call converts: a model may have changed in between.
    converted.clear()
    profile = measured.MeasuredProfile(backend="onnxruntime", warmup=0, repeats=2)
    model = nn.Sequential(QuantConv2d(8, 8, 3, padding=1, w_bits=8, a_bits=8)).eval()
    for _ in range(2):
        profile.profile(model, input_shape=(8, 8, 8))
    with profile.reusing_conversions():
        for _ in range(2):
            profile.profile(model, input_shape=(8, 8, 8))
        profile.profile(model, input_shape=(8, 4, 4))  # another shape, another conversion
    assert len(converted) == 2 + 1 + 1
