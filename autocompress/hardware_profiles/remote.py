"""The client of the timing agent: ``RemoteProfile``, the ``remote`` hardware profile.

It exports a candidate model to ONNX in memory with float kernels (``quant_enabled=False``),
POSTs it to an ``autocompress agent`` running on the target edge device and turns the agent's
timings into :class:`~autocompress.hardware_profiles.HardwareMetrics`, while size and peak
memory are computed here from the model; the agent itself, its HTTP protocol and its security
notes are in :mod:`autocompress.hardware_profiles.agent`, and what both sides share (the token
rule, the length cap of error messages) in :mod:`~autocompress.hardware_profiles.agent_protocol`.
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from torch import nn

from autocompress.core.validation import check_int
from autocompress.hardware_profiles._base import (
    HardwareMetrics,
    HardwareProfile,
    register_hardware_profile,
)
from autocompress.hardware_profiles.agent_protocol import check_token, clip_message
from autocompress.hardware_profiles.checks import check_power, check_seconds, check_threads
from autocompress.hardware_profiles.deployed import ConversionReuse, precision_summary
from autocompress.hardware_profiles.graph import check_input_shape, layer_costs, metrics_with_memory
from autocompress.hardware_profiles.measured import power_energy

__all__ = ["RemoteProfile"]

_REMOTE_NOTE = (
    "Measured on the remote device with {runtime} on its CPU, as deployed: layers with at most "
    "8-bit weights and inputs run int8 kernels, the others float."
)
_RUNTIMES = ("onnxruntime", "executorch", "litert")
# How repeatable the agent's figure is (agents with round-based timing send these).
_REPEATABILITY_KEYS = ("statistic", "rounds", "round_medians_ms", "repeatability", "stable")
_REMOTE_FLOAT_NOTE = (
    "Measured on the remote device with onnxruntime's CPU provider and float kernels "
    "(quantized=False): latency reflects architecture and pruning, not bit-widths."
)


@register_hardware_profile("remote")
class RemoteProfile(ConversionReuse, HardwareProfile):
    """Time real batch-1 inference on a remote device that runs the agent.

    Like ``MeasuredProfile(backend="onnxruntime")``, but the timing happens on the device: with
    ``runtime="onnxruntime"`` (the default) the model is exported to ONNX in memory as deployed
    (``quantized=True``, the default: layers with at most 8-bit weights and inputs as int8 QDQ,
    the others fp32; ``quantized=False``: the float twin) and POSTed to ``{url}/time``.
    ``runtime="executorch"`` / ``"litert"`` converts the model here as ``MeasuredProfile`` with
    that backend does (int8 where the bits allow) and sends the ``.pte`` / ``.tflite``; the
    agent needs that runtime installed. ``latency_ms`` is the agent's figure (the smallest round
    median; an older agent's median); ``details`` has its spread, repeatability and samples,
    and each layer's precision. ``size_bytes`` and ``peak_mem_bytes`` are computed here from the
    model's bits (same functions as the other profiles).

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
        quantized: bool = True,
        runtime: str = "onnxruntime",
    ) -> None:
        self.url = _check_url(url)
        self.token = check_token(token, where="RemoteProfile")
        self.warmup = check_int(warmup, name="warmup", where="RemoteProfile", minimum=0)
        self.repeats = check_int(repeats, name="repeats", where="RemoteProfile", minimum=1)
        self.threads = check_threads(threads, where="RemoteProfile")
        self.timeout_s = check_seconds(timeout_s, name="timeout_s", where="RemoteProfile")
        self.power_w = check_power(power_w, where="RemoteProfile")
        if not isinstance(quantized, bool):
            raise ValueError(
                "The 'quantized' parameter of RemoteProfile must be true or false. "
                f"Got {quantized!r} instead."
            )
        self.quantized = quantized
        if runtime not in _RUNTIMES:
            raise ValueError(
                f"The 'runtime' parameter of RemoteProfile must be one of {list(_RUNTIMES)}. "
                f"Got {runtime!r} instead."
            )
        if runtime != "onnxruntime" and not quantized:
            raise ValueError(
                f"The 'quantized' parameter of RemoteProfile must be true with runtime "
                f"{runtime!r} (the device runs the converted program as deployed)."
            )
        self.runtime = runtime

    def __repr__(self) -> str:
        token = None if self.token is None else "***"
        return (
            f"RemoteProfile(url={self.url!r}, token={token!r}, warmup={self.warmup}, "
            f"repeats={self.repeats}, threads={self.threads}, timeout_s={self.timeout_s}, "
            f"power_w={self.power_w}, quantized={self.quantized}, runtime={self.runtime!r})"
        )

    def info(self) -> dict[str, Any]:
        """The agent's ``GET /info``: platform, CPU count, onnxruntime version and providers."""
        return self._request("GET", "/info")

    def profile(self, model: nn.Module, *, input_shape: tuple[int, ...]) -> HardwareMetrics:
        shape = check_input_shape(input_shape, caller="RemoteProfile.profile")
        costs = layer_costs(model, input_shape=shape)
        onnx_bytes, precision = self._program(model, shape)
        query = {"warmup": self.warmup, "repeats": self.repeats}
        if self.threads is not None:
            query["threads"] = self.threads
        result = self._request("POST", "/time", query=query, body=onnx_bytes)
        timing = _check_timing(result, url=self.url)
        latency_ms = timing.pop("latency_ms")
        energy_mj, energy_details = power_energy(self.power_w, latency_ms=latency_ms)
        details: dict[str, Any] = {
            "url": self.url,
            "warmup": self.warmup,
            "repeats": self.repeats,
            "threads": self.threads,
            **timing,
            **{key: result[key] for key in _REPEATABILITY_KEYS if key in result},
            "onnx_bytes": len(onnx_bytes),
            "onnxruntime": result.get("onnxruntime"),
            "quantized": self.quantized,
            "runtime": self.runtime,
            # After the conversion's details: their note speaks of this host, not the device.
            **precision,
            "note": _REMOTE_NOTE.format(runtime=self.runtime)
            if self.quantized
            else _REMOTE_FLOAT_NOTE,
            **energy_details,
        }
        return metrics_with_memory(
            model, costs, latency_ms=latency_ms, energy_mj=energy_mj, details=details
        )

    def _program(self, model: nn.Module, shape: tuple[int, ...]) -> tuple[bytes, dict[str, Any]]:
        """The bytes the device runs, converted here (kept while :meth:`reusing_conversions`),
        and what they say about each layer's precision (planned for ONNX: the agent does not
        send its optimised graph back)."""
        converted = self._converted(model, shape, runtime=self.runtime, quantized=self.quantized)
        if self.runtime == "executorch":
            from autocompress.hardware_profiles import executorch_backend as et

            details = et.measured_details(converted, threads=self.threads or 0)
            details.pop("executorch_threads")  # the device's, not this host's
            return converted.buffer, details
        if self.runtime == "litert":
            return converted
        return converted.model_bytes, {
            "precisions": converted.planned,
            "precision_note": precision_summary(
                converted.requested, converted.planned, converted.planned
            ),
        }

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
        what = f"{method} {path}" + ("" if body is None else f" ({len(body)} bytes of model)")
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
                f"object: {clip_message(data.decode(errors='replace'))!r}"
            )
        return payload


def _check_timing(result: dict[str, Any], *, url: str) -> dict[str, Any]:
    """The agent's latency figures as floats; RuntimeError when any is missing or not finite."""
    keys = ("median_ms", "p10_ms", "p90_ms", "min_ms", "max_ms")
    try:
        timing: dict[str, Any] = {key: float(result[key]) for key in keys}
        timing["samples_ms"] = [float(s) for s in result["samples_ms"]]
        # The figure to report; agents before the round-based timing sent only the median.
        timing["latency_ms"] = float(result.get("latency_ms", timing["median_ms"]))
    except (KeyError, TypeError, ValueError):
        timing = {}
    values = [v for key, v in timing.items() if key != "samples_ms"] + timing.get("samples_ms", [])
    if not timing or not all(math.isfinite(v) and v >= 0 for v in values):
        raise RuntimeError(
            f"The agent at {url} answered POST /time without finite {list(keys)} and "
            f"samples_ms: {clip_message(json.dumps(result))}"
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
    return clip_message(str(message))


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
