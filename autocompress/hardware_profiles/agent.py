"""The timing agent: a small HTTP server that runs on a remote edge device and times models.

Its client, :class:`~autocompress.hardware_profiles.remote.RemoteProfile` (the ``remote``
hardware profile), lives in :mod:`autocompress.hardware_profiles.remote`.

On the device (needs onnxruntime: ``pip install 'autocompress[onnx]'``; the token can also be
given as ``--token``, but the environment keeps it out of the process list)::

    AUTOCOMPRESS_AGENT_TOKEN="$TOKEN" autocompress agent --host 192.168.1.20 --port 8765

On the machine that searches::

    profile = create_hardware_profile("remote", url="http://192.168.1.20:8765", token=TOKEN)

Protocol (answers are JSON; an error is ``{"error": message}`` with a 4xx/5xx status):

* ``GET /info``: facts about the device (platform, CPU count, onnxruntime version and
  execution providers) and the agent's limits.
* ``POST /time?warmup=5&repeats=30&threads=2&input_shape=1,3,32,32``: the body is the raw bytes
  of an ONNX model, an ExecuTorch program (``.pte``) or a LiteRT model (``.tflite``). The agent
  runs it with onnxruntime's CPU execution provider, ExecuTorch's runtime or the LiteRT
  interpreter on random inputs (fixed seed; see
  :mod:`~autocompress.hardware_profiles.onnx_timing`), by the timing rule of
  :mod:`~autocompress.hardware_profiles.timing`, and answers
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
import importlib.util
import ipaddress
import json
import logging
import math
import os
import platform
import socket
import threading
import urllib.parse
import warnings
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from autocompress import __version__
from autocompress.core.validation import check_int
from autocompress.hardware_profiles.agent_protocol import check_token, clip_message
from autocompress.hardware_profiles.checks import check_seconds
from autocompress.hardware_profiles.onnx_timing import (
    MAX_INPUT_ELEMS,
    BadModelError,
    RuntimeMissingError,
    time_model,
)

__all__ = [
    "DEFAULT_MAX_MODEL_BYTES",
    "AgentServer",
    "serve",
]

DEFAULT_MAX_MODEL_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_REPEATS = 10_000
# An early error answer (401, 413, 400) to a POST first reads up to this much of the body, so
# the client sees the answer instead of a connection reset; a larger body is cut off.
_DRAIN_LIMIT = 16 * 1024 * 1024
# How often a background server checks for close(): the longest close() waits.
_POLL_INTERVAL_S = 0.05
_TIME_PARAMS = ("warmup", "repeats", "threads", "input_shape")
_LOGGER = logging.getLogger(__name__)


class AgentServer(ThreadingHTTPServer):
    """The agent's HTTP server; see the module docstring for the protocol.

    Made by :func:`serve` (in a background thread, or blocking this one). ``url`` is where
    clients reach it; :meth:`close` stops it.
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
    block: bool = False,
    on_ready: Callable[[AgentServer], None] | None = None,
) -> AgentServer:
    """Start the agent and return its server.

    ``host``: address to listen on; the default accepts connections from this machine only.
    ``port``: 0 picks a free port (read it from ``server.url``). ``token``: if set, every
    request needs the header ``Authorization: Bearer <token>``. ``max_model_bytes``: largest
    model body accepted. ``max_repeats``: cap on ``warmup`` and ``repeats``.
    ``request_timeout_s``: socket timeout for a client that stops sending. ``on_ready(server)``
    is called once the port is bound (e.g. to print ``server.url``).

    By default the agent serves in a background (daemon) thread: stop it with
    ``server.close()`` (or use it as a context manager). ``block=True`` serves in this thread
    until Ctrl-C and then releases the port (the ``autocompress agent`` command).
    """
    if not isinstance(host, str) or not host.strip():
        raise ValueError(
            f"The 'host' parameter of serve must be a non-empty str such as '127.0.0.1'. "
            f"Got {host!r} instead."
        )
    port = check_int(port, name="port", where="serve", minimum=0)
    if port > 65535:
        raise ValueError(
            f"The 'port' parameter of serve must be an int in [0, 65535]. Got {port} instead."
        )
    token = check_token(token, where="serve")
    max_model_bytes = check_int(max_model_bytes, name="max_model_bytes", where="serve", minimum=1)
    max_repeats = check_int(max_repeats, name="max_repeats", where="serve", minimum=1)
    request_timeout_s = check_seconds(request_timeout_s, name="request_timeout_s", where="serve")
    if token is None and not _is_loopback(host):
        warnings.warn(
            f"The autocompress agent listens on {host!r} without a token: anyone who can reach "
            "it can make this device run models. Pass token=... (--token).",
            stacklevel=2,
        )
    server = AgentServer(
        host=host,
        port=port,
        token=token,
        max_model_bytes=max_model_bytes,
        max_repeats=max_repeats,
        request_timeout_s=request_timeout_s,
    )
    if block:
        try:
            if on_ready is not None:
                on_ready(server)
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
        return server
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": _POLL_INTERVAL_S},
        name="autocompress-agent",
        daemon=True,
    )
    server._thread = thread
    thread.start()
    if on_ready is not None:
        on_ready(server)
    return server


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
                HTTPStatus.INTERNAL_SERVER_ERROR,
                {"error": clip_message(f"{type(err).__name__}: {err}")},
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
            try:
                return time_model(body, **params)
            except BadModelError as err:
                raise _HttpError(HTTPStatus.BAD_REQUEST, str(err)) from None
            except RuntimeMissingError as err:
                raise _HttpError(HTTPStatus.SERVICE_UNAVAILABLE, str(err)) from None

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
        if not shape or any(d <= 0 for d in shape) or math.prod(shape) > MAX_INPUT_ELEMS:
            raise _HttpError(
                HTTPStatus.BAD_REQUEST,
                "The 'input_shape' query parameter of POST /time must be comma-separated "
                f"positive ints with at most {MAX_INPUT_ELEMS} elements in all, e.g. "
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
    # Which runtimes can time a .pte or .tflite body here (found, not imported: they are heavy).
    info["runtimes"] = {
        "executorch": importlib.util.find_spec("executorch") is not None,
        "litert": importlib.util.find_spec("ai_edge_litert") is not None,
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


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
