"""Check an exported artefact against the PyTorch candidate it was exported from.

For every export the same figures are produced (:class:`VerifyReport`, written as
``export_report.json`` and printed by ``autocompress export``):

* outputs: the artefact (onnxruntime session / loaded TorchScript / model rebuilt from the
  packed weights / ExecuTorch program) and the PyTorch candidate run on the whole validation
  split; the report has the
  largest absolute logit difference and the share of samples whose argmax (predicted class)
  agrees.
* the task's primary metric (accuracy for classification) of the artefact on the validation
  split, beside the PyTorch candidate's on the same data and the value recorded by the search.
* size: the artefact's bytes on disk beside ``model_size_bytes`` (the deployed size the search
  predicted: weights packed at their bits plus per-channel scales).
* latency: a batch-1 CPU timing of the artefact on this machine beside the latency the search
  predicted. The prediction is for the run's TARGET device (e.g. an analytic Cortex-A72 model)
  and the measurement is this host's CPU: the two are printed side by side, not compared.

Tolerance (:data:`TOLERANCES`). An export passes when ``max_abs_diff <= rel * logit_range``
(``logit_range`` = max - min of the candidate's logits over the batch) AND
``argmax_agreement >= min_argmax_agreement``. For dense outputs (a map per class, e.g.
segmentation) the difference checked is ``p999_abs_diff``, the 99.9th percentile of the
absolute differences (the largest of the batches'): with ~10^5 outputs per batch, a few
activations always sit on a rounding midpoint (below), and the largest difference measures
those, not the export. Per-pixel argmax agreement still has to hold.

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
* ``executorch``: rel 10%, agreement 95%, against the fake-quant candidate at the precision the
  program executes (:func:`~autocompress.hardware_profiles.executorch_backend.as_executed`:
  the candidate's weights, each int8 layer's input quantized at 8 bits, each float32 layer's
  not at all; the candidate itself when its quantized layers all have 8-bit inputs). The
  program is not the fake-quant bit for bit: PT2E calibrates its own int8 ranges, quantizes
  every layer's output and the logits to int8 (near-tied logits can land in one int8 step and
  swap argmax), folds batch norm first, and a 3-7-bit weight grid lies up to half an int8 step
  off the int8 grid. Measured on 7 digits candidates (3-4 layers, 2-8 bits): 1-5% of the logit
  range; argmax agreement 99.6-99.8% for those with 96-97% accuracy, down to 95.8% for
  undertrained ones (30-80% accuracy) whose logits are nearly tied. A wrong scale or zero point
  brings agreement near chance. The report also holds, as checks, the program against the
  candidate as searched (``candidate_*``, not judged) and against the PT2E-converted model run
  in PyTorch (``pt2e_*``: the same int8 arithmetic, so it is judged tighter,
  :data:`EXECUTORCH_LOWERING`; measured 0.4-0.9% of the range and >= 99.3% agreement).
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

from ..hardware_profiles.deployed import INTEGER_KERNELS
from ..tasks import Classification, Task

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
    "executorch": Tolerance(rel=0.1, min_argmax_agreement=0.95),
    "litert": Tolerance(rel=0.15, min_argmax_agreement=0.85),
}
# An ExecuTorch program against the PT2E-converted model it was lowered from (module doc).
EXECUTORCH_LOWERING = Tolerance(rel=0.03, min_argmax_agreement=0.98)


@dataclass(frozen=True)
class OutputComparison:
    n_samples: int
    max_abs_diff: float
    logit_range: float
    argmax_agreement: float
    exported_score: float
    reference_score: float
    metric: str = "accuracy"
    dense: bool = False  # outputs hold a map per class (more than 2 dimensions)
    p999_abs_diff: float = math.nan


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
    p999_abs_diff: float
    dense: bool
    logit_range: float
    max_abs_diff_bound: float
    argmax_agreement: float
    min_argmax_agreement: float
    passed: bool
    metric: str  # the task's primary metric, which the three scores are
    exported_score: float
    reference_score: float
    recorded_score: float
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
        # Dense outputs are checked at the 99.9th percentile (module docstring).
        difference = (
            f"99.9th percentile |output diff| {self.p999_abs_diff:.3g} "
            f"(max {self.max_abs_diff:.3g})"
            if self.dense
            else f"max |logit diff| {self.max_abs_diff:.3g}"
        )
        lines = [
            f"verification {verdict} ({self.format}, {self.n_samples} validation samples): "
            f"{difference} (bound {self.max_abs_diff_bound:.3g} = "
            f"{self.max_abs_diff_bound / self.logit_range if self.logit_range else 0:.2g} x "
            f"logit range {self.logit_range:.3g}), argmax agreement "
            f"{self.argmax_agreement:.2%} (min {self.min_argmax_agreement:.1%})",
            f"{self.metric}: exported {self.exported_score:.4g} | PyTorch candidate "
            f"{self.reference_score:.4g} | recorded {self.recorded_score:.4g}",
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


def within(comparison: OutputComparison, tolerance: Tolerance) -> bool:
    """``comparison`` meets ``tolerance`` (on the 99.9th percentile for dense outputs)."""
    checked = comparison.p999_abs_diff if comparison.dense else comparison.max_abs_diff
    return bool(
        checked <= tolerance.rel * comparison.logit_range
        and comparison.argmax_agreement >= tolerance.min_argmax_agreement
    )


@torch.no_grad()
def compare_outputs(
    run: Runner, reference: nn.Module, loader: Iterable, *, task: Task | None = None
) -> OutputComparison:
    """Run the artefact and the PyTorch model on every batch of ``loader``; compare their
    outputs, and score both with ``task`` (default: classification)."""
    task = task or Classification()
    reference = reference.cpu().eval()
    n = 0
    agree = 0.0
    totals: dict[str, dict[str, Any]] = {"exported": {}, "reference": {}}
    max_diff, p999, lo, hi = 0.0, 0.0, math.inf, -math.inf
    for batch in loader:
        x, y = task.split(batch)
        expected = reference(x.cpu()).numpy()
        got = np.asarray(run(x.cpu().numpy()))
        if got.shape != expected.shape:
            raise ValueError(
                f"The exported model returns logits of shape {got.shape} where the PyTorch "
                f"candidate returns {expected.shape}."
            )
        difference = np.abs(got - expected)
        max_diff = max(max_diff, float(difference.max()))
        p999 = max(p999, float(np.quantile(difference, 0.999)))
        lo, hi = min(lo, float(expected.min())), max(hi, float(expected.max()))
        # Per sample (per pixel for dense outputs): the top class or channel agrees.
        agree += float((got.argmax(1) == expected.argmax(1)).mean()) * len(y)
        for side, outputs in (("exported", got), ("reference", expected)):
            task.accumulate(totals[side], torch.from_numpy(outputs), y)
        n += len(y)
    if n == 0:
        raise ValueError(
            "The validation split is empty: check 'data.val_fraction' / 'data.limit_val'."
        )
    return OutputComparison(
        n_samples=n,
        max_abs_diff=max_diff,
        logit_range=hi - lo,
        argmax_agreement=agree / n,
        exported_score=float(task.compute(totals["exported"])[task.primary]),
        reference_score=float(task.compute(totals["reference"])[task.primary]),
        metric=task.primary,
        dense=expected.ndim > 2,
        p999_abs_diff=p999,
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
    recorded_score: float,
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
    passed = within(comparison, tolerance) and all(
        v for v in checks.values() if isinstance(v, bool)
    )
    return VerifyReport(
        format=format,
        artefact=artefact.name,
        files={p.name: p.stat().st_size for p in files},
        file_bytes=artefact.stat().st_size,
        predicted_bytes=int(predicted_bytes),
        n_samples=comparison.n_samples,
        max_abs_diff=comparison.max_abs_diff,
        p999_abs_diff=comparison.p999_abs_diff,
        dense=comparison.dense,
        logit_range=comparison.logit_range,
        max_abs_diff_bound=bound,
        argmax_agreement=comparison.argmax_agreement,
        min_argmax_agreement=tolerance.min_argmax_agreement,
        passed=bool(passed),
        metric=comparison.metric,
        exported_score=comparison.exported_score,
        reference_score=comparison.reference_score,
        recorded_score=float(recorded_score),
        measured_latency_ms=float(measured_latency_ms),
        latency_runtime=latency_runtime,
        predicted_latency_ms=float(predicted_latency_ms),
        predicted_latency_target=predicted_latency_target,
        layers=list(layers or []),
        checks=checks,
        notes=list(notes or []),
    )


__all__ = [
    "EXECUTORCH_LOWERING",
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
    "within",
]
