import http.client
import json
import math
import socket
import sys
import threading
import urllib.parse

import pytest
import torch
from torch import nn

from autocompress.hardware_profiles import (
    MeasuredProfile,
    RemoteProfile,
    create_hardware_profile,
    list_hardware_profiles,
    model_size_bytes,
    serve,
)
from autocompress.hardware_profiles import agent as agent_module
from autocompress.hardware_profiles.onnx_timing import BadModelError, time_onnx_model

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

_SHAPE = (3, 32, 32)


class _FakeQuantConv(nn.Conv2d):
    """A layer with bits and a quant switch: the remote copy must run it with quant off."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.w_bits, self.a_bits, self.quant_enabled = 4, 8, True

    def forward(self, x):
        if self.quant_enabled:
            x = torch.round(x * 16) / 16
        return super().forward(x)


def _model() -> nn.Module:
    return nn.Sequential(
        _FakeQuantConv(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * 32 * 32, 10),
    )


def _raw(url, method, path, *, body=None, headers=None):
    """``(status, headers, JSON payload)`` of one request, without RemoteProfile."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), json.loads(response.read())
    finally:
        conn.close()


def _tiny_onnx(*, dynamic: bool) -> bytes:
    """A one-node Relu model; its input's batch dim is symbolic when ``dynamic``."""
    from onnx import TensorProto, helper

    dims = ["N" if dynamic else 1, 4]
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


@pytest.fixture
def agent():
    with serve(port=0) as server:
        yield server


def test_remote_registered_and_keyword_only(agent):
    assert "remote" in list_hardware_profiles()
    profile = create_hardware_profile("remote", url=agent.url + "/", repeats=3)
    assert isinstance(profile, RemoteProfile) and profile.url == agent.url
    with pytest.raises(TypeError):
        RemoteProfile(agent.url)


def test_info_reports_device_facts(agent):
    info = RemoteProfile(url=agent.url).info()
    assert info["agent"] == "autocompress" and info["cpu_count"] >= 1
    assert info["platform"] and info["machine"]
    assert info["onnxruntime"]["version"] == ort.__version__
    assert "CPUExecutionProvider" in info["onnxruntime"]["providers"]
    assert info["max_model_bytes"] == agent_module.DEFAULT_MAX_MODEL_BYTES


def test_remote_latency_close_to_local_onnxruntime(agent):
    model = _model().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    remote = RemoteProfile(url=agent.url, warmup=3, repeats=20, threads=1, power_w=2.5)
    m = remote.profile(model, input_shape=_SHAPE)
    assert math.isfinite(m.latency_ms) and m.latency_ms > 0
    d = m.details
    assert d["repeats"] == 20 and len(d["samples_ms"]) >= 20 and d["threads"] == 1
    # The figure is the smallest round median: within the samples, not necessarily p10..p90.
    assert d["min_ms"] <= m.latency_ms <= d["max_ms"] and d["p10_ms"] <= d["p90_ms"]
    assert m.latency_ms == pytest.approx(min(d["round_medians_ms"]))
    assert m.energy_mj == pytest.approx(2.5 * m.latency_ms) and d["energy_source"] == "power_w"
    assert m.size_bytes == model_size_bytes(model) and m.peak_mem_bytes > 0
    assert model[0].quant_enabled is True and model.training  # only a float copy travelled
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    local = MeasuredProfile(backend="onnxruntime", warmup=3, repeats=20, threads=1)
    local_ms = local.profile(model, input_shape=_SHAPE).latency_ms
    assert local_ms / 10 < m.latency_ms < local_ms * 10  # same runtime, same host


def test_no_power_gives_nan_energy_with_a_note(agent):
    m = RemoteProfile(url=agent.url, warmup=0, repeats=2).profile(_model(), input_shape=_SHAPE)
    assert math.isnan(m.energy_mj) and "power_w" in m.details["energy_note"]


def test_token_is_required_on_every_request():
    with serve(port=0, token="s3cret-token") as server:
        for token in (None, "wrong"):
            with pytest.raises(RuntimeError, match="HTTP 401"):
                RemoteProfile(url=server.url, token=token).info()
        status, headers, payload = _raw(server.url, "POST", "/time", body=_tiny_onnx(dynamic=False))
        assert status == 401 and headers["WWW-Authenticate"] == "Bearer"
        assert "Bearer" in payload["error"]
        good = RemoteProfile(url=server.url, token="s3cret-token", warmup=0, repeats=2)
        assert good.info()["agent"] == "autocompress"
        assert good.profile(_model(), input_shape=_SHAPE).latency_ms > 0
        assert "s3cret" not in repr(good)


def test_oversized_model_is_refused_with_413():
    with serve(port=0, max_model_bytes=1024) as server:
        status, _, payload = _raw(server.url, "POST", "/time", body=b"\0" * 50_000)
        assert status == 413 and "at most 1024" in payload["error"]
        with pytest.raises(RuntimeError, match="HTTP 413"):
            RemoteProfile(url=server.url).profile(_model(), input_shape=_SHAPE)
        assert _raw(server.url, "GET", "/info")[0] == 200  # still serving


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/time", b"this is not an onnx model", 400, "not an ONNX model"),
        ("/time", b"", 400, "not an ONNX model"),
        ("/time?repeats=0", b"x", 400, "'repeats' query parameter"),
        ("/time?warmup=many", b"x", 400, "'warmup' query parameter"),
        ("/time?input_shape=1,-3", b"x", 400, "'input_shape' query parameter"),
        ("/time?turbo=1", b"x", 400, "Unknown query parameter"),
        ("/nowhere", b"x", 404, "POST /time"),
    ],
)
def test_bad_requests_get_a_message_and_the_agent_survives(agent, path, body, status, message):
    got, _, payload = _raw(agent.url, "POST", path, body=body)
    assert got == status and message in payload["error"]
    assert _raw(agent.url, "GET", "/info")[0] == 200


def test_dynamic_input_needs_input_shape(agent):
    body = _tiny_onnx(dynamic=True)
    status, _, payload = _raw(agent.url, "POST", "/time?repeats=2", body=body)
    assert status == 400 and "dynamic shape" in payload["error"]
    status, _, payload = _raw(agent.url, "POST", "/time?repeats=2&input_shape=3,4", body=body)
    assert status == 200 and payload["input_shapes"] == {"x": [3, 4]}
    assert payload["repeats"] == 2 and len(payload["samples_ms"]) >= 2
    assert payload["min_ms"] <= payload["median_ms"] <= payload["max_ms"]
    status, _, payload = _raw(
        agent.url, "POST", "/time?input_shape=3,5", body=_tiny_onnx(dynamic=False)
    )
    assert status == 400 and "does not fit" in payload["error"]


def test_unexpected_error_answers_500_and_keeps_serving(agent, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(agent_module, "time_model", broken)
    status, _, payload = _raw(agent.url, "POST", "/time", body=b"x")
    assert status == 500 and "disk on fire" in payload["error"]
    assert _raw(agent.url, "GET", "/info")[0] == 200


def test_concurrent_profiles_all_succeed(agent):
    profile = RemoteProfile(url=agent.url, warmup=0, repeats=3)
    results, errors = [], []

    def work():
        try:
            results.append(profile.profile(_model(), input_shape=_SHAPE).latency_ms)
        except Exception as err:  # collected and reported below
            errors.append(err)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 4 and all(r > 0 for r in results)


def test_unreachable_agent_is_a_clear_error():
    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(RuntimeError, match="No answer from the agent"):
        RemoteProfile(url=f"http://127.0.0.1:{port}", timeout_s=5).info()


def test_lan_host_without_token_warns():
    with pytest.warns(UserWarning, match="without a token"), serve(host="0.0.0.0", port=0):
        pass


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"url": "ftp://device:21"}, "url"),
        ({"url": "device:8765"}, "url"),
        ({"url": "http://device:8765/?x=1"}, "url"),
        ({"url": "http://d:1", "token": ""}, "token"),
        ({"url": "http://d:1", "token": "two words"}, "token"),
        ({"url": "http://d:1", "repeats": 0}, "repeats"),
        ({"url": "http://d:1", "warmup": -1}, "warmup"),
        ({"url": "http://d:1", "threads": 0}, "threads"),
        ({"url": "http://d:1", "timeout_s": 0}, "timeout_s"),
        ({"url": "http://d:1", "power_w": float("inf")}, "power_w"),
    ],
)
def test_invalid_remote_arguments(kwargs, param):
    with pytest.raises(ValueError, match=f"'{param}' parameter of RemoteProfile"):
        RemoteProfile(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"port": 70000}, "port"),
        ({"port": -1}, "port"),
        ({"host": ""}, "host"),
        ({"token": "line\nbreak"}, "token"),
        ({"max_model_bytes": 0}, "max_model_bytes"),
        ({"request_timeout_s": -1}, "request_timeout_s"),
    ],
)
def test_invalid_serve_arguments(kwargs, param):
    with pytest.raises(ValueError, match=f"'{param}' parameter of serve"):
        serve(**kwargs)


def test_missing_onnxruntime_answers_503(agent, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime raises
    status, _, payload = _raw(agent.url, "POST", "/time", body=_tiny_onnx(dynamic=False))
    assert status == 503 and "onnxruntime is not installed" in payload["error"]


def test_time_onnx_model_without_the_server():
    result = time_onnx_model(
        _tiny_onnx(dynamic=True), warmup=0, repeats=3, threads=1, input_shape=(2, 4)
    )
    assert result["input_shapes"] == {"x": [2, 4]} and len(result["samples_ms"]) >= 3
    with pytest.raises(BadModelError, match="not an ONNX model"):
        time_onnx_model(b"not onnx", warmup=0, repeats=1, threads=None, input_shape=None)
