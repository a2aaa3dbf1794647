"""Run the quickstart search and print the figures its acceptance rests on.

    python benchmarks/quickstart_front.py [--config configs/quickstart.yaml] [--runs-dir DIR]

Prints: teacher accuracy, best front accuracy and the gap, front size, the span of model sizes
on the front (largest / smallest), wall time and trials per minute.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from autocompress.config import load_config
from autocompress.search import run_search


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("configs/quickstart.yaml"))
    parser.add_argument("--runs-dir", type=Path, default=None)
    args = parser.parse_args()

    config = load_config(args.config)
    runs_dir = args.runs_dir or Path(tempfile.mkdtemp(prefix="autocompress-bench-"))
    start = time.perf_counter()
    result = run_search(config, runs_dir=runs_dir)
    wall = time.perf_counter() - start

    front, trials = result.front, result.trials
    teacher = result.teacher_metrics["accuracy"]
    best = front["accuracy"].max()
    completed = int((trials["state"] == "COMPLETE").sum())
    print(f"run folder            {result.run_dir}")
    print(
        f"trials                {len(trials)} ({completed} complete, "
        f"{int((~trials['feasible']).sum())} over budget)"
    )
    print(f"teacher accuracy      {teacher:.2%}")
    print(f"best front accuracy   {best:.2%}   gap {100 * (teacher - best):+.2f} points")
    print(f"front size            {len(front)} non-dominated points")
    print(
        f"front size_kb         {front['size_kb'].min():.3g} .. {front['size_kb'].max():.3g}"
        f"   span {front['size_kb'].max() / front['size_kb'].min():.1f}x"
    )
    print(
        f"front latency_ms      {front['latency_ms'].min():.3g} .. {front['latency_ms'].max():.3g}"
    )
    print(f"wall time             {wall:.0f} s   ({60 * len(trials) / wall:.1f} trials/min)")


if __name__ == "__main__":
    main()
