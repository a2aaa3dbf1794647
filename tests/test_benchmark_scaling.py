"""The figures of ``benchmarks/scaling.py --simulate`` (benchmarks/simulated_scaling.py): steady
rate, utilisation, per-trial step medians and hypervolume per trial, on a study built by hand."""

from __future__ import annotations

import datetime
import importlib.util
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

T0 = datetime.datetime(2026, 1, 1, 12, 0, 0)


@pytest.fixture()
def bench():
    path = Path(__file__).parents[1] / "benchmarks" / "simulated_scaling.py"
    spec = importlib.util.spec_from_file_location("simulated_scaling_bench", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _study(rows) -> optuna.Study:
    """Trials finished at ``end`` seconds after T0: (state, end, values, user attributes)."""
    study = optuna.create_study(directions=["maximize", "minimize"])
    for state, end, values, attrs in rows:
        trial = create_trial(
            state=state,
            values=values,
            params={"x": 0},
            distributions={"x": CategoricalDistribution([0])},
            user_attrs=attrs,
        )
        trial.datetime_start = T0
        trial.datetime_complete = T0 + datetime.timedelta(seconds=end)
        study.add_trial(trial)
    return study


def test_rate_counts_evaluated_trials_after_the_first_n(bench):
    stopped = {"stopped_epochs": 1}
    study = _study(
        [
            (TrialState.COMPLETE, 10, [0.5, 2.0], {}),
            (TrialState.COMPLETE, 12, [0.9, 1.0], {}),
            (TrialState.PRUNED, 16, None, stopped),  # stopped early: evaluated
            (TrialState.PRUNED, 17, None, {"duplicate_of": 0}),  # skipped: not evaluated
            (TrialState.COMPLETE, 22, [0.7, 0.5], {}),
        ]
    )
    steps = {"ask": 0.01, "tell": 0.02, "price": 0.05, "proposal": 0.0, "evaluate": 9.0}
    times = {n: dict(steps) for n in range(5)}
    found = bench.throughput(study, times, workers=2, released=T0.timestamp())
    assert found["trials"] == 4
    # 2 completions after the second one (at 12 s), over the 10 s that follow it
    assert found["rate"] == pytest.approx(3600 * 2 / 10)
    # 4 evaluations of 9 s, by 2 workers over the 22 s since the release
    assert found["utilisation"] == pytest.approx(4 * 9.0 / (2 * 22))
    # Steady state: between the first wave's end (12 s) and the drain's start (16 s), one
    # completion in 4 s; the evaluations ([7, 16] and [13, 22]) fill 4 + 3 of the 2 x 4 s.
    assert found["steady"] == pytest.approx(3600 / 4)
    assert found["steady_busy"] == pytest.approx(7 / 8)
    assert found["total"] == pytest.approx(80.0)
    assert found["price"] == pytest.approx(50.0)


def test_hypervolume_history_in_completion_order(bench):
    study = _study(
        [
            (TrialState.COMPLETE, 30, [0.9, 1.0], {}),  # last to finish
            (TrialState.COMPLETE, 10, [0.5, 2.0], {}),
            (TrialState.PRUNED, 20, None, {"stopped_epochs": 3}),
        ]
    )
    reference = {"directions": ["maximize", "minimize"], "point": [0.0, 4.0], "hv": 2.7}
    history = bench.hv_history(study, reference)
    # (0.5 - 0) x (4 - 2) = 1.0; the stopped trial adds nothing; then (0.9 x 3) covers all
    assert history == pytest.approx([1.0 / 2.7, 1.0 / 2.7, 1.0])
    assert bench.first_reaching(history, 0.95) == 3
    assert bench.first_reaching(history[:2], 0.95) is None
