"""Check an exported artefact against the PyTorch candidate it was exported from.

For every export the same figures are produced (:class:`VerifyReport`, written as
``export_report.json`` and printed by ``autocompress export``):

* outputs: the artefact (onnxruntime session / loaded TorchScript / model rebuilt from the
  packed weights) and the PyTorch candidate run on the whole validation split; the report has the
  largest absolute logit difference and the share of samples whose argmax (predicted class)
  agrees.
* accuracy of the artefact on the validation split, beside the PyTorch candidate's on the same
  data and the accuracy recorded during the search.
* size: the artefact's bytes on disk beside ``model_size_bytes`` (the deployed size the search
  predicted: weights packed at their bits plus per-channel scales).
* latency: a batch-1 CPU timing of the artefact on this machine beside the latency the search
  predicted. The prediction is for the run's TARGET device (e.g. an analytic Cortex-A72 model)
  and the measurement is this host's CPU: the two are printed side by side, not compared.

Tolerance (:data:`TOLERANCES`). An export passes when ``max_abs_diff <= rel * logit_range``
(``logit_range`` = max - min of the candidate's logits over the batch) AND
``argmax_agreement >= min_argmax_agreement``:

* ``state-dict`` and ``torchscript``: rel 1e-5, agreement 99.9%. The TorchScript trace runs the
  same kernels (difference 0); weights rebuilt from the packed integers may differ from the
  trained ones by one float32 ulp of a scale (``max|w| / qmax`` recomputed from ``q * scale``),
  a ~1e-7 relative change.
* ``onnx``: rel 2%, agreement 99%. The QDQ graph itself reproduces the fake-quant (with
  onnxruntime's graph optimisations off the measured difference is float rounding, ~1e-7 of the
  logit range, reported as ``max_abs_diff_unoptimized``). With the default optimisations
  onnxruntime also quantizes each float bias to int32 on the ``input_scale * weight_scale`` grid
  and accumulates in a different order, and an activation that then lands on the other side of a
  rounding midpoint moves by one quantization step. Measured: on the 18-point quickstart front
  at most 3e-6 absolute (~2e-7 of the logit range) with 100% argmax agreement; on a 10-layer MLP
  with 2..20-bit layers, where onnxruntime requantized the biases, 1e-3 of the range. 2% / 99%
  leaves room for deeper nets and a few midpoint flips in low-bit layers without hiding a wrong
  scale or zero point, which moves logits by far more.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

TIMING_WARMUP = 10
TIMING_REPEATS = 50
TIMING_THREADS = 1  # one intra-op thread: stable on a shared host, closer to a small edge CPU


@dataclass(frozen=True)
class Tolerance:
    """Pass criteria: ``max_abs_diff <= rel * logit_range`` and enough argmax agreement."""

    rel: float
    min_argmax_agreement: float


TOLERANCES = {
    "state-dict": Tolerance(rel=1e-5, min_argmax_agreement=0.999),
    "torchscript": Tolerance(rel=1e-5, min_argmax_agreement=0.999),
    "onnx": Tolerance(rel=0.02, min_argmax_agreement=0.99),
}


@dataclass(frozen=True)
class OutputComparison:
    n_samples: int
    max_abs_diff: float
    logit_range: float
    argmax_agreement: float
    exported_accuracy: float
    reference_accuracy: float


@dataclass
class VerifyReport:
    """Everything ``autocompress export`` checks about one artefact (see the module doc)."""

    format: str
    artefact: str
    files: dict[str, int]  # file name -> bytes on disk
    file_bytes: int  # the artefact file itself
    predicted_bytes: int
    n_samples: int
    max_abs_diff: float
    logit_range: float
    max_abs_diff_bound: float
    argmax_agreement: float
    min_argmax_agreement: float
    passed: bool
    exported_accuracy: float
    reference_accuracy: float
    recorded_accuracy: float
    measured_latency_ms: float
    latency_runtime: str
    predicted_latency_ms: float
    predicted_latency_target: str
    layers: list[dict[str, Any]] = field(default_factory=list)
    checks: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary_lines(self) -> list[str]:
        """Human-readable lines, each figure labelled with what it is measured on."""
        verdict = "PASSED" if self.passed else "FAILED"
        lines = [
            f"verification {verdict} ({self.format}, {self.n_samples} validation samples): "
            f"max |logit diff| {self.max_abs_diff:.3g} (bound {self.max_abs_diff_bound:.3g} = "
            f"{self.max_abs_diff_bound / self.logit_range if self.logit_range else 0:.0e} x "
            f"logit range {self.logit_range:.3g}), argmax agreement "
            f"{self.argmax_agreement:.2%} (min {self.min_argmax_agreement:.1%})",
            f"accuracy: exported {self.exported_accuracy:.2%} | PyTorch candidate "
            f"{self.reference_accuracy:.2%} | recorded {self.recorded_accuracy:.2%}",
            f"size on disk: {self.artefact} {self.file_bytes:,} B | predicted deployed size "
            f"{self.predicted_bytes:,} B ({self.file_bytes / max(self.predicted_bytes, 1):.2f}x)",
            f"latency: measured {self.measured_latency_ms:.4g} ms ({self.latency_runtime}) | "
            f"predicted {self.predicted_latency_ms:.4g} ms ({self.predicted_latency_target}); "
            "different machines, not expected to match",
        ]
        for name, value in self.checks.items():
            lines.append(f"check {name}: {value}")
        lines.extend(f"note: {note}" for note in self.notes)
        return lines


Runner = Callable[[np.ndarray], np.ndarray]


@torch.no_grad()
def compare_outputs(run: Runner, reference: nn.Module, loader: Iterable) -> OutputComparison:
    """Run the artefact and the PyTorch model on every batch of ``loader``; compare logits."""
    reference = reference.cpu().eval()
    n = agree = correct_exported = correct_reference = 0
    max_diff, lo, hi = 0.0, math.inf, -math.inf
    for x, y in loader:
        expected = reference(x.cpu()).numpy()
        got = np.asarray(run(x.cpu().numpy()))
        if got.shape != expected.shape:
            raise ValueError(
                f"The exported model returns logits of shape {got.shape} where the PyTorch "
                f"candidate returns {expected.shape}."
            )
        max_diff = max(max_diff, float(np.abs(got - expected).max()))
        lo, hi = min(lo, float(expected.min())), max(hi, float(expected.max()))
        labels = y.numpy()
        agree += int((got.argmax(1) == expected.argmax(1)).sum())
        correct_exported += int((got.argmax(1) == labels).sum())
        correct_reference += int((expected.argmax(1) == labels).sum())
        n += len(labels)
    if n == 0:
        raise ValueError(
            "The validation split is empty: check 'data.val_fraction' / 'data.limit_val'."
        )
    return OutputComparison(
        n_samples=n,
        max_abs_diff=max_diff,
        logit_range=hi - lo,
        argmax_agreement=agree / n,
        exported_accuracy=correct_exported / n,
        reference_accuracy=correct_reference / n,
    )


def time_runner(
    run: Runner,
    example: np.ndarray,
    *,
    warmup: int = TIMING_WARMUP,
    repeats: int = TIMING_REPEATS,
) -> float:
    """Median wall-clock milliseconds of ``run(example)``."""
    for _ in range(warmup):
        run(example)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(example)
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def _onnxruntime():
    try:
        import onnxruntime as ort  # heavy, optional
    except ImportError as err:
        raise ImportError(
            "Checking an ONNX export needs onnxruntime: pip install 'autocompress[onnx]'."
        ) from err
    return ort


def onnx_runtime_label(threads: int | None = TIMING_THREADS) -> str:
    count = "default threads" if threads is None else f"{threads} thread{'s' * (threads > 1)}"
    return f"onnxruntime {_onnxruntime().__version__} CPU, {count}, batch 1, this host"


def onnx_session(
    model: Path | bytes, *, optimize: bool = True, threads: int | None = TIMING_THREADS
):
    """An onnxruntime CPU session of ``model`` (a file or serialized bytes): default graph
    optimisations unless ``optimize`` is False; ``threads`` intra-op threads (None: onnxruntime's
    default)."""
    ort = _onnxruntime()
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    options.intra_op_num_threads = threads or 0
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, sess_options=options, providers=["CPUExecutionProvider"])


# onnxruntime's integer kernels, as its QDQ fusions produce them.
INTEGER_KERNELS = (
    "QLinearConv",
    "QLinearMatMul",
    "QGemm",
    "ConvInteger",
    "MatMulInteger",
    "MatMulIntegerToFloat",
    "DynamicQuantizeMatMul",
)


def onnxruntime_ops(path: Path) -> dict[str, int]:
    """How many nodes of each op type onnxruntime runs for ``path`` after its default graph
    optimisations: shows whether QDQ groups became integer kernels (:data:`INTEGER_KERNELS`)."""
    import tempfile

    import onnx

    ort = _onnxruntime()
    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.log_severity_level = 3  # the "hardware specific optimizations" warning
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        graph = onnx.load(options.optimized_model_filepath).graph
    counts: dict[str, int] = {}
    for node in graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


def onnx_runner(path: Path, *, optimize: bool = True, threads: int | None = TIMING_THREADS):
    session = onnx_session(path, optimize=optimize, threads=threads)
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: np.ascontiguousarray(x, dtype=np.float32)})[0]


def torch_runner(module: nn.Module, *, threads: int | None = TIMING_THREADS) -> Runner:
    """Run a (scripted or eager) module on numpy input under ``inference_mode``."""
    module = module.cpu().eval()

    def run(x: np.ndarray) -> np.ndarray:
        previous = torch.get_num_threads()
        if threads is not None:
            torch.set_num_threads(threads)
        try:
            with torch.inference_mode():
                return module(torch.from_numpy(np.ascontiguousarray(x))).numpy()
        finally:
            torch.set_num_threads(previous)

    return run


def build_report(
    *,
    format: str,
    artefact: Path,
    files: Iterable[Path],
    comparison: OutputComparison,
    predicted_bytes: int,
    recorded_accuracy: float,
    measured_latency_ms: float,
    latency_runtime: str,
    predicted_latency_ms: float,
    predicted_latency_target: str,
    layers: list[dict[str, Any]] | None = None,
    checks: dict[str, Any] | None = None,
    notes: list[str] | None = None,
) -> VerifyReport:
    """Apply the format's tolerance to ``comparison`` and collect the figures in one report."""
    if format not in TOLERANCES:
        raise ValueError(
            f"The 'format' parameter of build_report must be one of {list(TOLERANCES)}. "
            f"Got {format!r} instead."
        )
    tolerance = TOLERANCES[format]
    bound = tolerance.rel * comparison.logit_range
    checks = dict(checks or {})
    passed = (
        comparison.max_abs_diff <= bound
        and comparison.argmax_agreement >= tolerance.min_argmax_agreement
        and all(v for v in checks.values() if isinstance(v, bool))
    )
    return VerifyReport(
        format=format,
        artefact=artefact.name,
        files={p.name: p.stat().st_size for p in files},
        file_bytes=artefact.stat().st_size,
        predicted_bytes=int(predicted_bytes),
        n_samples=comparison.n_samples,
        max_abs_diff=comparison.max_abs_diff,
        logit_range=comparison.logit_range,
        max_abs_diff_bound=bound,
        argmax_agreement=comparison.argmax_agreement,
        min_argmax_agreement=tolerance.min_argmax_agreement,
        passed=bool(passed),
        exported_accuracy=comparison.exported_accuracy,
        reference_accuracy=comparison.reference_accuracy,
        recorded_accuracy=float(recorded_accuracy),
        measured_latency_ms=float(measured_latency_ms),
        latency_runtime=latency_runtime,
        predicted_latency_ms=float(predicted_latency_ms),
        predicted_latency_target=predicted_latency_target,
        layers=list(layers or []),
        checks=checks,
        notes=list(notes or []),
    )


__all__ = [
    "INTEGER_KERNELS",
    "TOLERANCES",
    "OutputComparison",
    "Tolerance",
    "VerifyReport",
    "build_report",
    "compare_outputs",
    "onnx_runner",
    "onnx_runtime_label",
    "onnx_session",
    "onnxruntime_ops",
    "time_runner",
    "torch_runner",
]
