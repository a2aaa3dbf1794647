import math

import pandas as pd
import pytest

from autocompress.export.pick import Condition, PickError, PickRule, parse_rule, pick_trial


def _trials() -> pd.DataFrame:
    rows = [
        # number, state, feasible, accuracy, latency_ms, energy_mj, size_kb
        (0, "COMPLETE", True, 0.97, 0.050, 0.004, 9.0),
        (1, "COMPLETE", True, 0.93, 0.030, 0.002, 3.0),
        (2, "COMPLETE", True, 0.96, 0.030, 0.003, 5.0),  # ties trial 1 on latency, more accurate
        (3, "COMPLETE", False, 0.99, 0.010, 0.001, 1.0),  # over budget: never picked
        (4, "FAIL", False, math.nan, math.nan, math.nan, math.nan),
        (5, "COMPLETE", True, 0.95, math.nan, 0.005, 4.0),  # unknown latency
        (6, "COMPLETE", True, 0.96, 0.030, 0.003, 6.0),  # same as 2 but a later trial
    ]
    columns = ["number", "state", "feasible", "accuracy", "latency_ms", "energy_mj", "size_kb"]
    return pd.DataFrame(rows, columns=columns)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("fastest", PickRule("latency_ms", "min")),
        ("smallest", PickRule("size_kb", "min")),
        ("most accurate", PickRule("accuracy", "max")),
        ("lowest energy", PickRule("energy_mj", "min")),
        ("MAX accuracy", PickRule("accuracy", "max")),
        (
            "fastest with accuracy >= 0.95",
            PickRule("latency_ms", "min", (Condition("accuracy", ">=", 0.95),)),
        ),
        (
            "min peak_mem_kb with accuracy>.9 and size_kb < 1e1",
            PickRule(
                "peak_mem_kb",
                "min",
                (Condition("accuracy", ">", 0.9), Condition("size_kb", "<", 10.0)),
            ),
        ),
    ],
)
def test_parse_rule(text: str, expected: PickRule) -> None:
    assert parse_rule(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("quickest", r"expected fastest, smallest.*got 'quickest'.*Understood so far: nothing"),
        ("most", r"got 'most'"),
        ("fastest with", r"expected a metric name, got the end.*Understood so far: min latency_ms"),
        ("fastest with 9 >= 0.9", r"got '9'"),
        ("fastest with accuracy = 0.9", r"at '= 0.9'"),
        ("fastest with accuracy >= high", r"expected a number after 'accuracy >='"),
        (
            "smallest with accuracy >= 0.9 or latency_ms < 1",
            r"expected 'and'.*got 'or'.*Understood so far: min size_kb with accuracy >= 0.9",
        ),
        ("fastest; import os", r"Cannot read the pick rule"),
        ("", r"non-empty str"),
    ],
)
def test_bad_rules_say_what_was_understood(text: str, message: str) -> None:
    with pytest.raises(PickError, match=message):
        parse_rule(text)


def test_pick_ranks_feasible_completed_trials_only() -> None:
    trials = _trials()
    assert pick_trial(trials, "most accurate").trial == 0  # 3 is more accurate but infeasible
    assert pick_trial(trials, "smallest").trial == 1
    assert pick_trial(trials, "lowest energy").trial == 1
    assert pick_trial(trials, "smallest with accuracy >= 0.95").trial == 5
    assert pick_trial(trials, "most accurate with latency_ms <= 0.04").trial == 2


def test_ties_go_to_the_more_accurate_then_the_earlier_trial() -> None:
    pick = pick_trial(_trials(), "fastest")
    assert pick.trial == 2  # 1, 2 and 6 tie on latency; 2 and 6 are more accurate; 2 is earlier
    assert pick.eligible == 4  # trial 5 has no latency, so it cannot be ranked by it
    assert pick.row["accuracy"] == pytest.approx(0.96)


def test_no_trial_satisfying_the_rule_is_a_clear_error() -> None:
    with pytest.raises(PickError) as err:
        pick_trial(_trials(), "fastest with accuracy >= 0.98")
    message = str(err.value)
    assert "understood as: min latency_ms with accuracy >= 0.98" in message
    assert "accuracy of those trials spans 0.93 .. 0.97" in message
