"""Shared fixtures: a tiny but real run config (digits, few trials, one epoch)."""

from __future__ import annotations

import copy
import os

# Tiny models train fastest on one thread, and worker subprocesses inherit the variable: with
# the default (all cores) the 2-core CI machine spends its time on thread contention.
os.environ.setdefault("OMP_NUM_THREADS", "1")

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
