"""Time models on a remote edge device: a small HTTP agent that runs there, and its client.

On the device (needs onnxruntime: ``pip install 'autocompress[onnx]'``; the token can also be
given as ``--token``, but the environment keeps it out of the process list)::

    AUTOCOMPRESS_AGENT_TOKEN="$TOKEN" autocompress agent --host 192.168.1.20 --port 8765

On the machine that searches::

    profile = create_hardware_profile("remote", url="http://192.168.1.20:8765", token=TOKEN)

Protocol (answers are JSON; an error is ``{"error": message}`` with a 4xx/5xx status):

* ``GET /info``: facts about the device (platform, CPU count, onnxruntime version and
  execution providers) and the agent's limits.
* ``POST /time?warmup=5&repeats=30&threads=2&input_shape=1,3,32,32``: the body is the raw bytes
  of an ONNX model. The agent runs it with onnxruntime's CPU execution provider on random
  inputs (fixed seed), ``warmup`` untimed runs then ``repeats`` timed ones, and answers
  ``{median_ms, p10_ms, p90_ms, min_ms, max_ms, repeats, warmup, threads, samples_ms, ...}``.
  ``input_shape`` (full shape, batch included) is needed only when the model's single input has
  dynamic dimensions. Timings are serialised: concurrent requests wait for each other.

Security: the agent loads and runs whatever model it is sent. It listens on 127.0.0.1 unless
given another host explicitly; on a network, set a token (checked on every request, ``401``
otherwise) and use it only on a network you trust or through an SSH tunnel, since plain HTTP
carries the token and the model in clear text. A body over ``max_model_bytes`` is refused with
``413`` before it is read into memory, a body that is not a loadable ONNX model with ``400``;
no request can stop the server.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import math
import os
import platform
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from numbers import Real
from typing import Any

from torch import nn

from autocompress import __version__
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
from autocompress.hardware_profiles.measured import (
    _check_int,
    _check_power,
    _check_threads,
    float_onnx_bytes,
    latency_spread,
    power_energy,
)

__all__ = [
    "DEFAULT_MAX_MODEL_BYTES",
    "AgentServer",
    "RemoteProfile",
    "serve",
    "serve_forever",
]

DEFAULT_MAX_MODEL_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_REPEATS = 10_000
_INPUT_SEED = 0
# Largest random input the agent allocates per model input (elements).
_MAX_INPUT_ELEMS = 1 << 26
# An early error answer (401, 413, 400) to a POST first reads up to this much of the body, so
# the client sees the answer instead of a connection reset; a larger body is cut off.
_DRAIN_LIMIT = 16 * 1024 * 1024
_MAX_ERROR_CHARS = 600
# How often a background server checks for close(): the longest close() waits.
_POLL_INTERVAL_S = 0.05
_TIME_PARAMS = ("warmup", "repeats", "threads", "input_shape")
_LOGGER = logging.getLogger(__name__)
_REMOTE_NOTE = (
    "Measured on the remote device with onnxruntime's CPU provider and float kernels "
    "(quant_enabled=False): latency reflects architecture and pruning, not bit-widths."
)


# --------------------------------------------------------------------------------------------
# Server (runs on the device)
# --------------------------------------------------------------------------------------------


class AgentServer(ThreadingHTTPServer):
    """The agent's HTTP server; see the module docstring for the protocol.

    Made by :func:`serve` (running in a background thread) or :func:`serve_forever`
    (blocking). ``url`` is where clients reach it; :meth:`close` stops it.
    """

    daemon_threads = True

    def __init__(
        self,
        *,
        host: str,
        port: int,
        token: str | None,
        max_model_bytes: int,
        max_repeats: int,
        request_timeout_s: float,
    ) -> None:
        if ":" in host:
            self.address_family = socket.AF_INET6
        self.token = token
        self.max_model_bytes = max_model_bytes
        self.max_repeats = max_repeats
        self.request_timeout_s = request_timeout_s
        self.timing_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        super().__init__((host, port), _AgentHandler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        if ":" in str(host):
            host = f"[{host}]"
        return f"http://{host}:{port}"

    def close(self) -> None:
        """Stop serving (when running in a thread) and release the port."""
        if self._thread is not None:
            self.shutdown()
            self._thread.join()
            self._thread = None
        self.server_close()

    def __enter__(self) -> AgentServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def serve(
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    token: str | None = None,
    max_model_bytes: int = DEFAULT_MAX_MODEL_BYTES,
    max_repeats: int = DEFAULT_MAX_REPEATS,
    request_timeout_s: float = 60.0,
) -> AgentServer:
    """Start the agent in a background (daemon) thread and return its server.

    ``host``: address to listen on; the default accepts connections from this machine only.
    ``port``: 0 picks a free port (read it from ``server.url``). ``token``: if set, every
    request needs the header ``Authorization: Bearer <token>``. ``max_model_bytes``: largest
    model body accepted. ``max_repeats``: cap on ``warmup`` and ``repeats``.
    ``request_timeout_s``: socket timeout for a client that stops sending. Stop it with
    ``server.close()`` (or use it as a context manager).
    """
    server = _make_server(
        host=host,
        port=port,
        token=token,
        max_model_bytes=max_model_bytes,
        max_repeats=max_repeats,
        request_timeout_s=request_timeout_s,
        caller="serve",
    )
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": _POLL_INTERVAL_S},
        name="autocompress-agent",
        daemon=True,
    )
    server._thread = thread
    thread.start()
    return server


def serve_forever(
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    token: str | None = None,
    max_model_bytes: int = DEFAULT_MAX_MODEL_BYTES,
    max_repeats: int = DEFAULT_MAX_REPEATS,
    request_timeout_s: float = 60.0,
    on_ready: Callable[[AgentServer], None] | None = None,
) -> None:
    """Run the agent in this thread until Ctrl-C (the ``autocompress agent`` command).

    Same arguments as :func:`serve`; ``on_ready(server)`` is called once the port is bound
    (e.g. to print ``server.url``).
    """
    server = _make_server(
        host=host,
        port=port,
        token=token,
        max_model_bytes=max_model_bytes,
        max_repeats=max_repeats,
        request_timeout_s=request_timeout_s,
        caller="serve_forever",
    )
    try:
        if on_ready is not None:
            on_ready(server)
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def _make_server(
    *,
    host: Any,
    port: Any,
    token: Any,
    max_model_bytes: Any,
    max_repeats: Any,
    request_timeout_s: Any,
    caller: str,
) -> AgentServer:
    if not isinstance(host, str) or not host.strip():
        raise ValueError(
            f"The 'host' parameter of {caller} must be a non-empty str such as '127.0.0.1'. "
            f"Got {host!r} instead."
        )
    port = _check_int(port, name="port", minimum=0, owner=caller)
    if port > 65535:
        raise ValueError(
            f"The 'port' parameter of {caller} must be an int in [0, 65535]. Got {port} instead."
        )
    token = _check_token(token, owner=caller)
    max_model_bytes = _check_int(max_model_bytes, name="max_model_bytes", minimum=1, owner=caller)
    max_repeats = _check_int(max_repeats, name="max_repeats", minimum=1, owner=caller)
    request_timeout_s = _check_seconds(request_timeout_s, name="request_timeout_s", owner=caller)
    if token is None and not _is_loopback(host):
        warnings.warn(
            f"The autocompress agent listens on {host!r} without a token: anyone who can reach "
            "it can make this device run models. Pass token=... (--token).",
            stacklevel=3,
        )
    return AgentServer(
        host=host,
        port=port,
        token=token,
        max_model_bytes=max_model_bytes,
        max_repeats=max_repeats,
        request_timeout_s=request_timeout_s,
    )


class _HttpError(Exception):
    """An error answer: HTTP status and the message sent as ``{"error": message}``."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _AgentHandler(BaseHTTPRequestHandler):
    server: AgentServer
    server_version = f"autocompress-agent/{__version__}"

    def setup(self) -> None:
        self.timeout = self.server.request_timeout_s  # socket timeout for slow clients
        self._body_read = False
        super().setup()

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._handle(self._get)

    def do_POST(self) -> None:  # noqa: N802
        self._handle(self._post)

    def _handle(self, route: Callable[[], dict[str, Any]]) -> None:
        try:
            self._check_token()
            payload = route()
        except _HttpError as err:
            self._discard_body()
            self._send(err.status, {"error": err.message})
        except Exception as err:  # a bad request must never take the agent down
            _LOGGER.exception("agent: request %s failed", self.path)
            self._discard_body()
            self._send(
                HTTPStatus.INTERNAL_SERVER_ERROR, {"error": _clip(f"{type(err).__name__}: {err}")}
            )
        else:
            self._send(HTTPStatus.OK, payload)

    def _get(self) -> dict[str, Any]:
        path = urllib.parse.urlsplit(self.path).path
        if path != "/info":
            raise _HttpError(HTTPStatus.NOT_FOUND, f"No GET {path}; try GET /info or POST /time.")
        return _device_info(self.server)

    def _post(self) -> dict[str, Any]:
        parts = urllib.parse.urlsplit(self.path)
        if parts.path != "/time":
            raise _HttpError(HTTPStatus.NOT_FOUND, f"No POST {parts.path}; try POST /time.")
        params = _parse_time_query(parts.query, max_repeats=self.server.max_repeats)
        body = self._read_body()
        with self.server.timing_lock:
            return _time_model(body, **params)

    def _check_token(self) -> None:
        token = self.server.token
        if token is None:
            return
        sent = self.headers.get("Authorization", "")
        if not hmac.compare_digest(sent.encode(), f"Bearer {token}".encode()):
            raise _HttpError(
                HTTPStatus.UNAUTHORIZED,
                "Missing or wrong 'Authorization: Bearer <token>' header: pass the token the "
                "agent was started with (RemoteProfile(token=...)).",
            )

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raise _HttpError(HTTPStatus.LENGTH_REQUIRED, "Send the model with a Content-Length.")
        length = self._content_length()
        if length is None:
            raise _HttpError(HTTPStatus.LENGTH_REQUIRED, "Send the model with a Content-Length.")
        limit = self.server.max_model_bytes
        if length > limit:
            raise _HttpError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"The model is {length} bytes; this agent accepts at most {limit} "
                "(start it with a larger max_model_bytes).",
            )
        body = self.rfile.read(length)
        self._body_read = True
        if len(body) != length:
            raise _HttpError(
                HTTPStatus.BAD_REQUEST, f"Got {len(body)} of the {length} announced bytes."
            )
        return body

    def _content_length(self) -> int | None:
        value = self.headers.get("Content-Length")
        if value is None:
            return None
        try:
            length = int(value)
        except ValueError:
            length = -1
        if length < 0:
            raise _HttpError(HTTPStatus.BAD_REQUEST, f"Bad Content-Length {value!r}.")
        return length

    def _discard_body(self) -> None:
        """Read (up to a limit) a POST body left unread, so the client sees the answer."""
        if self.command != "POST" or self._body_read:
            return
        self._body_read = True
        try:
            length = self._content_length() or 0
        except _HttpError:
            return
        remaining = min(length, _DRAIN_LIMIT)
        try:
            while remaining > 0:
                chunk = self.rfile.read(min(remaining, 1 << 16))
                if not chunk:
                    break
                remaining -= len(chunk)
        except OSError:  # client gone or too slow: nothing left to answer
            pass

    def _send(self, status: HTTPStatus, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if status == HTTPStatus.UNAUTHORIZED:
                self.send_header("WWW-Authenticate", "Bearer")
            self.end_headers()
            self.wfile.write(data)
        except OSError:  # client hung up before the answer
            pass

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (base signature)
        _LOGGER.info("agent: %s %s", self.address_string(), format % args)


def _parse_time_query(query: str, *, max_repeats: int) -> dict[str, Any]:
    try:
        pairs = urllib.parse.parse_qs(query, keep_blank_values=True, strict_parsing=False)
    except ValueError as err:
        raise _HttpError(HTTPStatus.BAD_REQUEST, f"Bad query string: {err}") from None
    unknown = sorted(set(pairs) - set(_TIME_PARAMS))
    if unknown:
        raise _HttpError(
            HTTPStatus.BAD_REQUEST,
            f"Unknown query parameter(s) {unknown} of POST /time; valid: {list(_TIME_PARAMS)}.",
        )
    values = {key: value[-1] for key, value in pairs.items()}
    params: dict[str, Any] = {
        "warmup": _query_int(values, "warmup", default=5, low=0, high=max_repeats),
        "repeats": _query_int(values, "repeats", default=30, low=1, high=max_repeats),
        "threads": _query_int(values, "threads", default=None, low=1, high=4096),
        "input_shape": None,
    }
    if "input_shape" in values:
        text = values["input_shape"]
        try:
            shape = tuple(int(d) for d in text.split(","))
        except ValueError:
            shape = ()
        if not shape or any(d <= 0 for d in shape) or math.prod(shape) > _MAX_INPUT_ELEMS:
            raise _HttpError(
                HTTPStatus.BAD_REQUEST,
                "The 'input_shape' query parameter of POST /time must be comma-separated "
                f"positive ints with at most {_MAX_INPUT_ELEMS} elements in all, e.g. "
                f"1,3,32,32. Got {text!r} instead.",
            )
        params["input_shape"] = shape
    return params


def _query_int(
    values: dict[str, str], name: str, *, default: int | None, low: int, high: int
) -> int | None:
    if name not in values:
        return default
    text = values[name]
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise _HttpError(
            HTTPStatus.BAD_REQUEST,
            f"The '{name}' query parameter of POST /time must be an int in [{low}, {high}]. "
            f"Got {text!r} instead.",
        )
    return value


def _device_info(server: AgentServer) -> dict[str, Any]:
    info: dict[str, Any] = {
        "agent": "autocompress",
        "version": __version__,
        "platform": platform.platform(),
        "system": platform.system(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "max_model_bytes": server.max_model_bytes,
        "max_repeats": server.max_repeats,
        "onnxruntime": None,
    }
    try:
        import onnxruntime as ort
    except ImportError as err:
        info["onnxruntime_error"] = f"onnxruntime cannot be imported: {err}"
    else:
        info["onnxruntime"] = {
            "version": ort.__version__,
            "providers": ort.get_available_providers(),
        }
    return info


def _time_model(
    model_bytes: bytes,
    *,
    warmup: int,
    repeats: int,
    threads: int | None,
    input_shape: tuple[int, ...] | None,
) -> dict[str, Any]:
    try:
        import numpy as np
        import onnxruntime as ort
    except ImportError as err:
        raise _HttpError(
            HTTPStatus.SERVICE_UNAVAILABLE,
            f"onnxruntime is not installed on the agent's device ({err}): "
            "pip install 'autocompress[onnx]' there.",
        ) from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or 0  # 0 = onnxruntime's default
    options.log_severity_level = 3  # errors only
    try:
        session = ort.InferenceSession(
            model_bytes, sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as err:  # onnxruntime raises its own exception types for bad models
        raise _HttpError(
            HTTPStatus.BAD_REQUEST,
            _clip(f"The request body is not an ONNX model onnxruntime can load: {err}"),
        ) from None
    feeds = _random_feeds(session, input_shape=input_shape, np=np)
    try:
        for _ in range(warmup):
            session.run(None, feeds)
        samples_ms = []
        for _ in range(repeats):
            start = time.perf_counter()
            session.run(None, feeds)
            samples_ms.append((time.perf_counter() - start) * 1e3)
    except Exception as err:
        raise _HttpError(
            HTTPStatus.BAD_REQUEST,
            _clip(f"onnxruntime could not run the model on random inputs: {err}"),
        ) from None
    return {
        **latency_spread(samples_ms),
        "repeats": repeats,
        "warmup": warmup,
        "threads": threads,
        "input_shapes": {name: list(array.shape) for name, array in feeds.items()},
        "onnxruntime": ort.__version__,
        "provider": "CPUExecutionProvider",
        "samples_ms": samples_ms,
    }


_FLOAT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
}
_INT_TYPES = {
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
}


def _random_feeds(session: Any, *, input_shape: tuple[int, ...] | None, np: Any) -> dict[str, Any]:
    """Seeded random arrays for every model input (normal for floats, 0/1 for ints)."""
    inputs = session.get_inputs()
    if input_shape is not None and len(inputs) != 1:
        raise _HttpError(
            HTTPStatus.BAD_REQUEST,
            f"input_shape applies to single-input models; this one has {len(inputs)} inputs.",
        )
    rng = np.random.default_rng(_INPUT_SEED)
    feeds = {}
    for node in inputs:
        dims = list(node.shape)
        if input_shape is not None:
            fixed = len(input_shape) == len(dims) and all(
                not isinstance(d, int) or d == s for d, s in zip(dims, input_shape, strict=True)
            )
            if not fixed:
                raise _HttpError(
                    HTTPStatus.BAD_REQUEST,
                    f"input_shape {list(input_shape)} does not fit the model's input "
                    f"{node.name!r} of shape {dims}.",
                )
            dims = list(input_shape)
        if not all(isinstance(d, int) and d > 0 for d in dims):
            raise _HttpError(
                HTTPStatus.BAD_REQUEST,
                f"The model's input {node.name!r} has dynamic shape {dims}: pass input_shape.",
            )
        if math.prod(dims) > _MAX_INPUT_ELEMS:
            raise _HttpError(
                HTTPStatus.BAD_REQUEST,
                f"The model's input {node.name!r} of shape {dims} is larger than "
                f"{_MAX_INPUT_ELEMS} elements.",
            )
        if node.type in _FLOAT_TYPES:
            feeds[node.name] = rng.standard_normal(dims).astype(_FLOAT_TYPES[node.type])
        elif node.type in _INT_TYPES:
            feeds[node.name] = rng.integers(0, 2, size=dims).astype(_INT_TYPES[node.type])
        elif node.type == "tensor(bool)":
            feeds[node.name] = rng.random(dims) < 0.5
        else:
            raise _HttpError(
                HTTPStatus.BAD_REQUEST,
                f"The model's input {node.name!r} has type {node.type}; the agent makes random "
                f"inputs of {sorted({*_FLOAT_TYPES, *_INT_TYPES, 'tensor(bool)'})} only.",
            )
    return feeds


# --------------------------------------------------------------------------------------------
# Client (runs where the search runs)
# --------------------------------------------------------------------------------------------


@register_hardware_profile("remote")
class RemoteProfile(HardwareProfile):
    """Time real batch-1 inference on a remote device that runs the agent.

    Like ``MeasuredProfile(backend="onnxruntime")``, but the timing happens on the device: the
    model is deep-copied with ``quant_enabled=False`` on every module (float kernels, so the
    latency reflects architecture and pruning, NOT bit-widths), exported to ONNX in memory and
    POSTed to ``{url}/time``. ``latency_ms`` is the agent's median; ``details`` has its
    p10/p90/min/max and samples. ``size_bytes`` and ``peak_mem_bytes`` are computed here from
    the model's bits (same functions as the other profiles).

    ``url``: the agent's base URL, e.g. ``"http://192.168.1.20:8765"``. ``token``: the agent's
    token, sent as ``Authorization: Bearer <token>``. ``warmup``/``repeats``/``threads``: as in
    :class:`MeasuredProfile`, applied on the device. ``timeout_s``: seconds to wait for the
    agent per request. ``power_w``: average device power under load, for
    ``energy = power_w * latency``; without it energy is NaN with a note in ``details``.

    Environment proxies are ignored (the model and token go straight to ``url``). Agent and
    network failures raise ``RuntimeError`` with the agent's message. Keeps no per-call state:
    ``profile`` may be called from several threads (the agent times one model at a time).
    """

    def __init__(
        self,
        *,
        url: str,
        token: str | None = None,
        warmup: int = 5,
        repeats: int = 30,
        threads: int | None = None,
        timeout_s: float = 60.0,
        power_w: float | None = None,
    ) -> None:
        self.url = _check_url(url)
        self.token = _check_token(token, owner="RemoteProfile")
        self.warmup = _check_int(warmup, name="warmup", minimum=0, owner="RemoteProfile")
        self.repeats = _check_int(repeats, name="repeats", minimum=1, owner="RemoteProfile")
        self.threads = _check_threads(threads, owner="RemoteProfile")
        self.timeout_s = _check_seconds(timeout_s, name="timeout_s", owner="RemoteProfile")
        self.power_w = _check_power(power_w, owner="RemoteProfile")

    def __repr__(self) -> str:
        token = None if self.token is None else "***"
        return (
            f"RemoteProfile(url={self.url!r}, token={token!r}, warmup={self.warmup}, "
            f"repeats={self.repeats}, threads={self.threads}, timeout_s={self.timeout_s}, "
            f"power_w={self.power_w})"
        )

    def info(self) -> dict[str, Any]:
        """The agent's ``GET /info``: platform, CPU count, onnxruntime version and providers."""
        return self._request("GET", "/info")

    def profile(self, model: nn.Module, *, input_shape: tuple[int, ...]) -> HardwareMetrics:
        shape = check_input_shape(input_shape, caller="RemoteProfile.profile")
        costs = layer_costs(model, input_shape=shape)
        onnx_bytes = float_onnx_bytes(model, input_shape=shape)
        query = {"warmup": self.warmup, "repeats": self.repeats}
        if self.threads is not None:
            query["threads"] = self.threads
        result = self._request("POST", "/time", query=query, body=onnx_bytes)
        timing = _check_timing(result, url=self.url)
        latency_ms = timing.pop("median_ms")
        energy_mj, energy_details = power_energy(self.power_w, latency_ms=latency_ms)
        details: dict[str, Any] = {
            "url": self.url,
            "warmup": self.warmup,
            "repeats": self.repeats,
            "threads": self.threads,
            **timing,
            "onnx_bytes": len(onnx_bytes),
            "onnxruntime": result.get("onnxruntime"),
            "note": _REMOTE_NOTE,
            **energy_details,
        }
        return HardwareMetrics(
            latency_ms=latency_ms,
            energy_mj=energy_mj,
            size_bytes=model_size_bytes(model),
            peak_mem_bytes=peak_activation_bytes(costs),
            details=details,
        )

    def _request(
        self,
        method: str,
        path: str,
        *,
        query: dict[str, Any] | None = None,
        body: bytes | None = None,
    ) -> dict[str, Any]:
        url = self.url + path + (f"?{urllib.parse.urlencode(query)}" if query else "")
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/octet-stream"
        if self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(url, data=body, headers=headers, method=method)
        # No ProxyHandler: an http_proxy from the environment must not see the model or token.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        what = f"{method} {path}" + ("" if body is None else f" ({len(body)} bytes of ONNX)")
        try:
            with opener.open(request, timeout=self.timeout_s) as response:
                data = response.read()
        except urllib.error.HTTPError as err:
            raise RuntimeError(
                f"The agent at {self.url} answered {what} with HTTP {err.code}: "
                f"{_error_message(err)}"
            ) from None
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise RuntimeError(
                f"No answer from the agent at {self.url} to {what}: {reason}. Is "
                "`autocompress agent --host <address> --port <port>` running on the device, "
                "reachable from here, and does it accept models this large (see its /info)?"
            ) from None
        try:
            payload = json.loads(data)
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            raise RuntimeError(
                f"The agent at {self.url} answered {what} with something that is not a JSON "
                f"object: {_clip(data.decode(errors='replace'))!r}"
            )
        return payload


def _check_timing(result: dict[str, Any], *, url: str) -> dict[str, Any]:
    """The agent's latency figures as floats; RuntimeError when any is missing or not finite."""
    keys = ("median_ms", "p10_ms", "p90_ms", "min_ms", "max_ms")
    try:
        timing: dict[str, Any] = {key: float(result[key]) for key in keys}
        timing["samples_ms"] = [float(s) for s in result["samples_ms"]]
    except (KeyError, TypeError, ValueError):
        timing = {}
    values = [v for key, v in timing.items() if key != "samples_ms"] + timing.get("samples_ms", [])
    if not timing or not all(math.isfinite(v) and v >= 0 for v in values):
        raise RuntimeError(
            f"The agent at {url} answered POST /time without finite {list(keys)} and "
            f"samples_ms: {_clip(json.dumps(result))}"
        )
    return timing


def _error_message(err: urllib.error.HTTPError) -> str:
    try:
        raw = err.read()
    except OSError:
        raw = b""
    try:
        message = json.loads(raw)["error"]
    except (ValueError, KeyError, TypeError):
        message = raw.decode(errors="replace") or err.reason
    return _clip(str(message))


def _check_url(url: Any) -> str:
    parts = urllib.parse.urlsplit(url) if isinstance(url, str) else None
    if (
        parts is None
        or parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.query
        or parts.fragment
    ):
        raise ValueError(
            "The 'url' parameter of RemoteProfile must be the agent's base URL, "
            f"e.g. 'http://192.168.1.20:8765'. Got {url!r} instead."
        )
    return url.rstrip("/")


def _check_token(token: Any, *, owner: str) -> str | None:
    if token is None:
        return None
    # Printable ASCII without spaces: it goes into an HTTP header verbatim.
    if not isinstance(token, str) or not token or not all("!" <= c <= "~" for c in token):
        raise ValueError(
            f"The 'token' parameter of {owner} must be None or a non-empty str of printable "
            f"ASCII characters without spaces. Got {'a str' if isinstance(token, str) else token!r}"
            " instead."
        )
    return token


def _check_seconds(value: Any, *, name: str, owner: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, Real)
        or not (math.isfinite(value) and value > 0)
    ):
        raise ValueError(
            f"The '{name}' parameter of {owner} must be a positive finite number of seconds. "
            f"Got {value!r} instead."
        )
    return float(value)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_ERROR_CHARS else text[: _MAX_ERROR_CHARS - 3] + "..."
