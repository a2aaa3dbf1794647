"""The search progress printer, driven by an in-memory study (no training)."""

from __future__ import annotations

import io
import math
import threading

import optuna
import pytest
from optuna.trial import TrialState, create_trial
from rich.console import Console

from autocompress.config import parse_config
from autocompress.search.progress import ProgressSnapshot, TrialPrinter, progress_snapshot

# (accuracy, latency_ms, size_kb, feasible): 0 and 1 form the front, 2 is dominated by 0 and
# 3 is over budget (never trained, accuracy 0). Reference point over feasible trials:
# accuracy 0 (fixed), latency 6 + 10% of 2..6 = 6.4, size 60 + 10% of 10..60 = 65.
ROWS = [
    (0.9, 5.0, 10.0, True),
    (0.8, 2.0, 50.0, True),
    (0.7, 6.0, 60.0, True),
    (0.0, 1.0, 900.0, False),
]
# Box of 0 + box of 1 - their overlap, in (accuracy, 6.4 - latency, 65 - size):
EXPECTED_HV = 0.9 * 1.4 * 55 + 0.8 * 4.4 * 15 - 0.8 * 1.4 * 15


def _study() -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    for accuracy, latency, size, feasible in ROWS:
        attrs = {
            "accuracy": accuracy,
            "latency_ms": latency,
            "size_kb": size,
            "energy_mj": latency / 2,
            "peak_mem_kb": size,
            "feasible": feasible,
            "trained": feasible,
        }
        study.add_trial(create_trial(values=[accuracy, latency, size], user_attrs=attrs))
    study.add_trial(
        create_trial(state=TrialState.FAIL, user_attrs={"fail_reason": "boom: values [nan]"})
    )
    # Cut off by Ctrl-C: finished, but does not count towards n_trials (it is retried).
    study.add_trial(
        create_trial(state=TrialState.FAIL, user_attrs={"interrupted": True, "fail_reason": "x"})
    )
    return study


@pytest.fixture
def config(tiny_config_dict):
    return parse_config(tiny_config_dict)  # objectives: accuracy, latency_ms, size_kb


def test_progress_snapshot_counts_front_and_hypervolume(config) -> None:
    snapshot = progress_snapshot(_study(), config.objectives(), n_trials=10)
    assert snapshot.done == 5 and snapshot.total == 10 and snapshot.front_size == 2
    assert snapshot.hypervolume == pytest.approx(EXPECTED_HV)


def test_progress_snapshot_of_an_empty_front(config) -> None:
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={"fail_reason": "nan"}))
    snapshot = progress_snapshot(study, config.objectives(), n_trials=3)
    assert snapshot[:3] == (1, 3, 0) and math.isnan(snapshot.hypervolume)


def test_printer_without_terminal_prints_plain_lines(config) -> None:
    out = io.StringIO()
    printer = TrialPrinter(config.objectives(), Console(file=out, width=200, force_terminal=False))
    assert not printer.live
    study = _study()
    for trial in study.trials[:5]:
        printer(study, trial, 10)
    assert printer.last == ProgressSnapshot(5, 10, 2, pytest.approx(EXPECTED_HV))
    lines = out.getvalue().splitlines()
    assert len(lines) == 5  # one per trial, no bar
    assert lines[0] == (
        "[5/10] trial 0: acc 90.00% lat 5 ms energy 2.5 mJ size 10 kB | "
        f"front 2 HV {EXPECTED_HV:.4g}"
    )
    assert lines[3].startswith("[5/10] trial 3: over budget (not trained)")
    assert lines[4].startswith("[5/10] trial 4: failed: boom: values [nan]")  # markup escaped
    assert "\x1b[" not in out.getvalue()  # no cursor movement or colour in a CI log


def test_printer_on_a_terminal_shows_a_bar_with_the_fields(config) -> None:
    out = io.StringIO()
    console = Console(file=out, width=160, force_terminal=True, color_system=None)
    printer = TrialPrinter(config.objectives(), console)
    study = _study()
    with printer:
        printer(study, study.trials[0], 10)
        assert printer.active
    assert not printer.active
    text = out.getvalue()
    assert "[5/10] trial 0:" in text  # the line, above the bar
    assert "5/10 trials · front 2 · HV " + f"{EXPECTED_HV:.4g}" in text


def test_bar_stops_by_itself_when_all_trials_are_done(config) -> None:
    out = io.StringIO()
    printer = TrialPrinter(
        config.objectives(), Console(file=out, width=160, force_terminal=True), live=True
    )
    study = _study()
    printer(study, study.trials[0], 5)
    assert not printer.active and printer.last.done == 5
    printer(study, study.trials[1], 5)  # a straggler afterwards: a line, no second bar
    assert not printer.active
    text = out.getvalue()
    assert text.count("\x1b[?25l") == 1  # the cursor was hidden once: one bar
    assert text.endswith(
        "\x1b[?25h[5/5] trial 1: acc 80.00% lat 2 ms energy 1 mJ size 50 kB | "
        f"front 2 HV {EXPECTED_HV:.4g}\n"
    )


def test_printer_is_safe_with_concurrent_trials(config) -> None:
    out = io.StringIO()
    printer = TrialPrinter(
        config.objectives(), Console(file=out, width=200, force_terminal=True), live=True
    )
    study = _study()
    errors = []

    def finish(trial) -> None:
        try:
            printer(study, trial, 10)
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=finish, args=(t,)) for t in study.trials[:5] * 2]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    printer.close()
    assert errors == []
    assert out.getvalue().count("[5/10] trial ") == 10
    assert printer.last.front_size == 2
