"""Export every point of the quickstart front to ONNX and compare it with the fp32 teacher.

    python benchmarks/export_gain.py [--run RUN_DIR] [--config configs/quickstart.yaml]
                                     [--n-trials N] [--runs-dir DIR] [--repeats 200]

Without --run the quickstart search is run first (into a temporary folder unless --runs-dir is
given). Prints, per front trial: accuracy, the exported ONNX file size beside the teacher's fp32
ONNX file (ratio), and onnxruntime CPU latency (batch 1, 1 thread, median of --repeats runs,
best of three interleaved rounds so that a busy host disturbs both sides alike) beside the
teacher's (ratio), plus whether the export passed its verification.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from autocompress.compression.serialization import load_model
from autocompress.config import load_config, parse_config
from autocompress.core import load_trials, pareto_front
from autocompress.export.onnx_export import export_onnx
from autocompress.export.trial import ONNX_FILE, export_trial
from autocompress.export.verify import onnx_runner, onnx_runtime_label, time_runner
from autocompress.search import run_search

ROUNDS = 3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=None, help="an existing run folder")
    parser.add_argument("--config", type=Path, default=Path("configs/quickstart.yaml"))
    parser.add_argument("--n-trials", type=int, default=None)
    parser.add_argument("--runs-dir", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=200)
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
    teacher_path = out_root / "teacher.onnx"
    export_onnx(teacher.eval(), teacher_path, input_shape=tuple(spec["input_shape"]))
    example = torch.randn((1, *spec["input_shape"]), generator=torch.Generator().manual_seed(0))
    example = example.numpy()

    rows, runners = [], {"teacher": onnx_runner(teacher_path)}
    for number in front["number"].astype(int):
        result = export_trial(
            run_dir, trial=number, out_dir=out_root / f"trial_{number}", format="onnx"
        )
        path = result.out_dir / ONNX_FILE
        runners[number] = onnx_runner(path)
        rows.append((number, result, path))

    # Interleaved rounds: every model is timed once per round, the best round median is kept.
    latency = {key: [] for key in runners}
    for _ in range(ROUNDS):
        for key, run in runners.items():
            latency[key].append(time_runner(run, example, repeats=args.repeats))
    latency_ms = {key: min(values) for key, values in latency.items()}

    teacher_bytes = teacher_path.stat().st_size
    teacher_ms = latency_ms["teacher"]
    print(f"run folder      {run_dir}")
    print(f"exports         {out_root}")
    print(f"timing          {onnx_runtime_label()}, median of {args.repeats}, best of {ROUNDS}")
    print(
        f"teacher (fp32)  accuracy {spec['metrics']['accuracy']:.2%}  "
        f"onnx {teacher_bytes / 1024:.1f} kB  latency {teacher_ms:.4f} ms"
    )
    header = (
        f"{'trial':>5} {'acc':>7} {'onnx kB':>8} {'/teacher':>8} {'pred kB':>8} "
        f"{'ort ms':>8} {'/teacher':>8} {'max|dlogit|':>11} {'verified':>8}  bits (w/a per layer)"
    )
    print(header)
    print("-" * len(header))
    size_ratios, speed_ratios = [], []
    for number, result, path in rows:
        report = result.report
        size_ratio = path.stat().st_size / teacher_bytes
        speed_ratio = latency_ms[number] / teacher_ms
        size_ratios.append(size_ratio)
        speed_ratios.append(speed_ratio)
        bits = " ".join(f"{layer['w_bits']}/{layer['a_bits']}" for layer in report.layers)
        print(
            f"{number:>5} {report.exported_score:>7.2%} {path.stat().st_size / 1024:>8.1f} "
            f"{size_ratio:>8.2f} {report.predicted_bytes / 1024:>8.1f} "
            f"{latency_ms[number]:>8.4f} {speed_ratio:>8.2f} {report.max_abs_diff:>11.2e} "
            f"{'yes' if report.passed else 'NO':>8}  {bits}"
        )
    print(
        f"front median: size {np.median(size_ratios):.2f}x the teacher's ONNX file, "
        f"latency {np.median(speed_ratios):.2f}x the teacher's (onnxruntime CPU)"
    )


if __name__ == "__main__":
    main()
