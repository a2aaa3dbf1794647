"""Shared fixtures: a tiny but real run config (digits, few trials, one epoch), and trial tables
built by hand for the Pareto and report tests."""

from __future__ import annotations

import copy
import math
import os
import textwrap
from collections.abc import Callable

# Tiny models train fastest on one thread, and worker subprocesses inherit the variable: with
# the default (all cores) the 2-core CI machine spends its time on thread contention.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

TINY_CONFIG = {
    "name": "tiny",
    "seed": 0,
    "data": {"dataset": "digits", "val_fraction": 0.25, "batch_size": 128},
    "space": {
        "family": "small_cnn",
        "arch": {"depths": [2], "widths": [8, 16], "kernel_sizes": [3], "strides": [1, 2]},
        "w_bits": [2, 4, 8],
        "a_bits": [4, 8],
        "prune_ratios": [0.0, 0.5],
    },
    "teacher": {"epochs": 8, "lr": 0.01},
    "train": {"epochs": 3, "lr": 0.01},
    "hardware": {"profile": "analytic", "device": "cortex_a72"},
    "search": {
        "n_trials": 6,
        "sampler": "random",
        "objectives": ["accuracy", "latency_ms", "size_kb"],
    },
}


@pytest.fixture
def tiny_config_dict() -> dict:
    return copy.deepcopy(TINY_CONFIG)


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory):
    """One real tiny search shared by the tests that only read its results."""
    from autocompress.config import parse_config
    from autocompress.search import run_search

    runs_dir = tmp_path_factory.mktemp("runs")
    config = parse_config(copy.deepcopy(TINY_CONFIG))
    return run_search(config, runs_dir=runs_dir)


@pytest.fixture
def interrupt_training(monkeypatch):
    """``interrupt_training(n)``: the n-th ``TrainEvaluator.evaluate`` call from now raises
    KeyboardInterrupt (Ctrl-C mid-trial); the others train. Returns a function that undoes it.
    Searches that use it need early stopping off (its evaluator does not call ``evaluate``)."""
    from autocompress.evaluators.train import TrainEvaluator

    original = TrainEvaluator.evaluate

    def interrupt_on(n: int):
        calls = []

        def evaluate(self, model, candidate):
            calls.append(1)
            if len(calls) == n:
                raise KeyboardInterrupt
            return original(self, model, candidate)

        monkeypatch.setattr(TrainEvaluator, "evaluate", evaluate)
        return lambda: monkeypatch.setattr(TrainEvaluator, "evaluate", original)

    return interrupt_on


def _trials(rows: list[tuple]) -> pd.DataFrame:
    """Rows of (number, state, feasible, accuracy, latency_ms, size_kb) -> trials DataFrame."""
    df = pd.DataFrame(
        rows, columns=["number", "state", "feasible", "accuracy", "latency_ms", "size_kb"]
    )
    df["trained"] = df["state"] == "COMPLETE"
    df["energy_mj"] = df["latency_ms"] * 0.5
    df["peak_mem_kb"] = df["size_kb"] * 2.0
    return df


@pytest.fixture
def make_trials() -> Callable[[list[tuple]], pd.DataFrame]:
    return _trials


@pytest.fixture
def three_objective_trials() -> pd.DataFrame:
    """Hand-checked example (accuracy max, latency min, size min).

    Full front: 0, 6, 1, 2 (3 is dominated by all; 4 is infeasible; 5 failed).
    accuracy/latency front: 1, 6, 0.  accuracy/size front: 2, 0.  latency/size front: 1, 2.
    """
    return _trials(
        [
            (0, "COMPLETE", True, 0.90, 5.0, 10.0),
            (1, "COMPLETE", True, 0.80, 2.0, 50.0),
            (2, "COMPLETE", True, 0.70, 3.0, 5.0),
            (3, "COMPLETE", True, 0.60, 6.0, 60.0),
            (4, "COMPLETE", False, 0.95, 1.0, 1.0),
            (5, "FAIL", False, math.nan, math.nan, math.nan),
            (6, "COMPLETE", True, 0.85, 4.0, 20.0),
            (7, "RUNNING", True, math.nan, math.nan, math.nan),
        ]
    )


def _run_process(*command: str, cwd) -> str:
    import subprocess

    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


@pytest.fixture
def run_process() -> Callable[..., str]:
    """``run_process(*command, cwd=...)``: run a command to completion, fail the test with its
    output's tail if it fails, return stdout + stderr."""
    return _run_process


@pytest.fixture
def run_cli() -> Callable[..., str]:
    """``run_cli(*args, cwd=...)``: ``autocompress ARGS`` in a fresh interpreter, as
    :func:`run_process`."""
    import sys

    return lambda *args, cwd: _run_process(sys.executable, "-m", "autocompress.cli", *args, cwd=cwd)


# A user's network as a plain .py file: a stem, one residual block, a head declared first.
TINY_NET = '''
import torch
from torch import nn


class Block(nn.Module):
    """A residual block that keeps its input's shape."""

    def __init__(self, width):
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)

    def forward(self, x):
        return x + self.conv2(torch.relu(self.conv1(x)))


class Net(nn.Module):
    def __init__(self, num_classes=10, width=8):
        super().__init__()
        self.fc = nn.Linear(width, num_classes)  # declared before the layers that feed it
        self.stem = nn.Conv2d(1, width, 3, padding=1)
        self.block = Block(width)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        return self.fc(self.pool(self.block(torch.relu(self.stem(x)))).flatten(1))


def build(**kwargs):
    return Net(**kwargs)


def not_a_network():
    return 3


CONSTANT = 3
'''


@pytest.fixture
def tiny_net(tmp_path, monkeypatch):
    """``tiny_net.py`` in the current directory, where import strings find it."""
    (tmp_path / "tiny_net.py").write_text(textwrap.dedent(TINY_NET))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


# A small_cnn candidate with one layer of each kind of precision an ExecuTorch program has:
# 8 bits (int8), 16 bits (float32) and 4 bits (int8 wider than requested).
MIXED_BITS_ARCH = {"channels": [8, 16, 16], "kernels": [3, 5, 3], "strides": [1, 2, 1]}
MIXED_BITS = {
    "features.0.0": (8, 8),
    "features.1.0": (16, 16),
    "features.2.0": (4, 4),
    "classifier": (8, 8),
}
MIXED_BITS_SHAPE = (1, 8, 8)


@pytest.fixture(scope="session")
def mixed_bits_cnn():
    """``(model, input_shape)``: an eval-mode :data:`MIXED_BITS` candidate whose activation
    ranges and batch-norm statistics were set by three seeded training-mode batches. Shared:
    do not modify it."""
    from autocompress.compression.apply import build_compressed
    from autocompress.spaces import Candidate
    from autocompress.spaces.candidate import LayerChoice

    layers = {name: LayerChoice(*bits) for name, bits in MIXED_BITS.items()}
    model = build_compressed(
        Candidate("small_cnn", MIXED_BITS_ARCH, layers),
        num_classes=10,
        input_shape=MIXED_BITS_SHAPE,
    )
    generator = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(3):
        model(2 * torch.randn(64, *MIXED_BITS_SHAPE, generator=generator))
    return model.eval(), MIXED_BITS_SHAPE
