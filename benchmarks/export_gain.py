"""Export every point of the quickstart front and compare it with the fp32 teacher, per runtime.

    python benchmarks/export_gain.py [--run RUN_DIR] [--config configs/quickstart.yaml]
                                     [--n-trials N] [--runs-dir DIR] [--repeats 200]
                                     [--formats onnx executorch litert]

Without --run the quickstart search is run first (into a temporary folder unless --runs-dir is
given). For each runtime of --formats (onnx: onnxruntime; executorch: ExecuTorch's XNNPACK
delegate; litert: the LiteRT interpreter; the last two need their extras), the teacher is
converted for that runtime in float32 and every front trial is exported with
``autocompress export --format``. Printed per front trial: accuracy, the artefact's size beside
the teacher's (ratio), and its CPU latency in the same runtime (batch 1, 1 thread, median of
--repeats runs, best of three interleaved rounds so that a busy host disturbs both sides alike)
beside the teacher's (ratio), whether the export passed its verification, and for a model
slower than the fp32 teacher, the reasons the export's report gives (layers left in float,
operators outside the runtime's fast path, kernels narrower than 8 bits run as int8).
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from autocompress.compression.serialization import load_model
from autocompress.config import load_config, parse_config
from autocompress.core import load_trials, pareto_front
from autocompress.export.onnx_export import export_onnx
from autocompress.export.trial import export_trial
from autocompress.export.verify import INTEGER_KERNELS, onnx_runner, time_runner
from autocompress.search import run_search

ROUNDS = 3
FORMATS = ("onnx", "executorch", "litert")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=None, help="an existing run folder")
    parser.add_argument("--config", type=Path, default=Path("configs/quickstart.yaml"))
    parser.add_argument("--n-trials", type=int, default=None)
    parser.add_argument("--runs-dir", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--formats", nargs="+", choices=FORMATS, default=["onnx"])
    args = parser.parse_args()

    run_dir = args.run
    if run_dir is None:
        config = load_config(args.config)
        if args.n_trials is not None:
            data = config.model_dump(mode="json")
            data["search"]["n_trials"] = args.n_trials
            config = parse_config(data, source=f"{args.config} (--n-trials)")
        runs_dir = args.runs_dir or Path(tempfile.mkdtemp(prefix="autocompress-export-"))
        run_dir = run_search(config, runs_dir=runs_dir).run_dir
    config = load_config(run_dir / "config.yaml")
    front = pareto_front(load_trials(run_dir), config.objectives()).sort_values("number")
    out_root = Path(tempfile.mkdtemp(prefix="autocompress-export-gain-"))
    teacher, spec = load_model(run_dir / "teacher")
    shape = tuple(spec["input_shape"])
    example = torch.randn((1, *shape), generator=torch.Generator().manual_seed(0)).numpy()
    print(f"run folder      {run_dir}")
    print(f"exports         {out_root}")
    print(f"teacher (fp32)  accuracy {spec['metrics']['accuracy']:.2%}")
    for fmt in args.formats:
        compare(fmt, run_dir, front, teacher.eval(), shape, example, out_root / fmt, args.repeats)


def compare(
    fmt: str,
    run_dir: Path,
    front: Any,
    teacher: nn.Module,
    shape: tuple[int, ...],
    example: np.ndarray,
    out: Path,
    repeats: int,
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    teacher_path, teacher_run, label, threads = _teacher(fmt, teacher, shape, example, out)
    rows, runners = [], {"teacher": teacher_run}
    for number in front["number"].astype(int):
        result = export_trial(run_dir, trial=number, out_dir=out / f"trial_{number}", format=fmt)
        runners[number] = _runner(fmt, result.artefact)
        rows.append((number, result))

    # Interleaved rounds: every model is timed once per round, the best round median is kept.
    latency: dict[Any, list[float]] = {key: [] for key in runners}
    with threads():
        for _ in range(ROUNDS):
            for key, run in runners.items():
                latency[key].append(time_runner(run, example, repeats=repeats))
    latency_ms = {key: min(values) for key, values in latency.items()}

    teacher_bytes, teacher_ms = teacher_path.stat().st_size, latency_ms["teacher"]
    print()
    print(f"== {fmt}: {label}, 1 thread, median of {repeats}, best of {ROUNDS}")
    print(f"teacher fp32 {fmt}: {teacher_bytes / 1024:.1f} kB, {teacher_ms:.4f} ms")
    header = (
        f"{'trial':>5} {'acc':>7} {'kB':>8} {'/teacher':>8} {'pred kB':>8} {'ms':>8} "
        f"{'/teacher':>8} {'verified':>8}  slower than fp32 because"
    )
    print(header)
    print("-" * len(header))
    size_ratios, speed_ratios = [], []
    for number, result in rows:
        report, size = result.report, result.artefact.stat().st_size
        size_ratios.append(size / teacher_bytes)
        speed_ratios.append(latency_ms[number] / teacher_ms)
        why = "; ".join(slower_reasons(report)) if speed_ratios[-1] > 1 else ""
        print(
            f"{number:>5} {report.exported_score:>7.2%} {size / 1024:>8.1f} "
            f"{size_ratios[-1]:>8.2f} {report.predicted_bytes / 1024:>8.1f} "
            f"{latency_ms[number]:>8.4f} {speed_ratios[-1]:>8.2f} "
            f"{'yes' if report.passed else 'NO':>8}  {why}"
        )
    slower = sum(r > 1 for r in speed_ratios)
    print(
        f"front median ({fmt}): size {np.median(size_ratios):.2f}x the teacher's, latency "
        f"{np.median(speed_ratios):.2f}x the teacher's; {slower} of {len(rows)} slower than fp32"
    )


def slower_reasons(report: Any) -> list[str]:
    """What the export's report says that can make a compressed model slower than fp32."""
    reasons = []
    floats = [
        layer.get("name", "?")
        for layer in report.layers
        if layer.get("precision") in ("float32", "fp32") or layer.get("weight_format") == "float32"
    ]
    if floats:
        reasons.append(f"{len(floats)} layer(s) in float ({', '.join(floats[:3])})")
    outside = report.checks.get("ops_outside_delegate")
    if outside:
        reasons.append(f"operators outside XNNPACK: {outside}")
    widened = report.checks.get("widened_layers") or []
    if widened:
        reasons.append(f"{len(widened)} layer(s) below 8 bits run as int8")
    ops = report.checks.get("onnxruntime_ops")
    if ops is not None:
        integer = sum(n for op, n in ops.items() if op in INTEGER_KERNELS)
        emulated = sum(layer.get("weight_format") != "float32" for layer in report.layers)
        if integer < emulated:
            reasons.append(
                f"{emulated - integer} of {emulated} quantized layer(s) got no fused integer "
                "kernel: DequantizeLinear + float Conv/Gemm (the QDQ export keeps the fake-quant "
                "model's float layer outputs)"
            )
    if not reasons:
        reasons.append(
            "every layer runs int8: the runtime's int8 kernels are no faster than fp32 for "
            "these layer sizes on this CPU"
        )
    return reasons


def _teacher(
    fmt: str, teacher: nn.Module, shape: tuple[int, ...], example: np.ndarray, out: Path
) -> tuple[Path, Callable, str, Callable[[], contextlib.AbstractContextManager]]:
    """The fp32 teacher as ``fmt``'s artefact, its runner, the runtime's label and a context
    that fixes the runtime's threads while timing."""
    if fmt == "onnx":
        from autocompress.export.verify import onnx_runtime_label

        path = out / "teacher.onnx"
        export_onnx(teacher, path, input_shape=shape)
        return path, onnx_runner(path), onnx_runtime_label(), contextlib.nullcontext
    if fmt == "executorch":
        from autocompress.hardware_profiles.executorch_backend import (
            executorch_runner,
            executorch_threads,
            executorch_version,
            lower_to_executorch,
        )

        path = out / "teacher.pte"
        path.write_bytes(lower_to_executorch(teacher, input_shape=shape).buffer)

        @contextlib.contextmanager
        def one_thread() -> Iterator[None]:
            with executorch_threads(1):
                yield

        label = f"ExecuTorch {executorch_version()} XNNPACK CPU"
        return path, executorch_runner(path), label, one_thread
    from autocompress.hardware_profiles.litert import convert_litert, litert_runner, litert_versions

    path = out / "teacher.tflite"
    path.write_bytes(convert_litert(teacher, input_shape=shape, calibration=[example]).content)
    runner = litert_runner(path.read_bytes(), threads=1)
    return path, runner, f"LiteRT {litert_versions()}", contextlib.nullcontext


def _runner(fmt: str, path: Path) -> Callable:
    if fmt == "onnx":
        return onnx_runner(path)
    if fmt == "executorch":
        from autocompress.hardware_profiles.executorch_backend import executorch_runner

        return executorch_runner(path)
    from autocompress.hardware_profiles.litert import litert_runner

    return litert_runner(path.read_bytes(), threads=1)


if __name__ == "__main__":
    main()
