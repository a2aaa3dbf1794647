"""The run folder users trust with hours of training: a resumed or extended search continues
instead of replaying, never trains a candidate twice, survives kill -9 anywhere, lets one
process in at a time, and a refused start changes nothing."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from autocompress.cli import app
from autocompress.config import parse_config
from autocompress.core import load_trials, pareto_front
from autocompress.search import run_search
from autocompress.search.study import DUPLICATE_ATTR, count_done, repeat_streak

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def quick(tiny_config_dict):
    """The tiny config with one-epoch training: a trial takes a fraction of a second."""
    tiny_config_dict["teacher"]["epochs"] = 1
    tiny_config_dict["train"]["epochs"] = 1
    return tiny_config_dict


@pytest.fixture
def four_candidates(quick):
    """A space of exactly four candidates: one hidden layer and the classifier, 4 or 8 bits."""
    quick["space"] = {
        "family": "mlp",
        "arch": {"depths": [1], "widths": [8]},
        "w_bits": [4, 8],
        "a_bits": [8],
        "prune_ratios": [0.0],
    }
    return quick


def _counted(trials: pd.DataFrame) -> pd.DataFrame:
    return trials[
        trials["state"].eq("COMPLETE")
        | (trials["state"].eq("PRUNED") & trials["pruned_reason"].str.startswith("stopped"))
    ]


def test_an_extended_run_draws_new_candidates(tmp_path, quick):
    quick["search"]["n_trials"] = 3
    first = run_search(parse_config(quick), runs_dir=tmp_path).trials
    quick["search"]["n_trials"] = 6
    after = run_search(parse_config(quick), runs_dir=tmp_path).trials
    assert len(_counted(after)) == 6
    earlier = set(first["candidate"])
    assert not earlier & set(after[after["number"] >= 3]["candidate"])


def test_a_repeated_candidate_is_skipped_not_trained(tmp_path, four_candidates):
    four_candidates["search"]["n_trials"] = 4
    result = run_search(parse_config(four_candidates), runs_dir=tmp_path)
    trials, study = result.trials, result.study
    counted = _counted(trials)
    assert len(counted) == 4 and counted["candidate"].nunique() == 4
    repeats = [t for t in study.trials if DUPLICATE_ATTR in t.user_attrs]
    assert repeats, "drawing all of 4 candidates at random repeats some on the way"
    for repeat in repeats:
        original = study.trials[repeat.user_attrs[DUPLICATE_ATTR]]
        assert original.number < repeat.number
        assert original.user_attrs["candidate"] == repeat.user_attrs["candidate"]
        assert repeat.state.name == "PRUNED" and "trained" not in repeat.user_attrs
        assert not (result.run_dir / "trials" / str(repeat.number)).exists()
    assert count_done(study.trials) == 4


def test_an_exhausted_space_ends_the_search(tmp_path, four_candidates, caplog):
    four_candidates["search"]["n_trials"] = 6
    with caplog.at_level(logging.WARNING, logger="autocompress"):
        result = run_search(parse_config(four_candidates), runs_dir=tmp_path)
    counted = _counted(result.trials)
    assert len(counted) == 4 and counted["candidate"].nunique() == 4
    assert "search space looks exhausted" in caplog.text


def test_repeat_streak_counts_the_last_finished_repeats_in_a_row():
    from optuna.trial import TrialState, create_trial

    def trial(state=TrialState.PRUNED, repeat=True):
        attrs = {DUPLICATE_ATTR: 0} if repeat else {}
        values = [1.0] if state == TrialState.COMPLETE else None
        return create_trial(state=state, values=values, user_attrs=attrs)

    fresh = trial(TrialState.COMPLETE, repeat=False)
    running = create_trial(state=TrialState.RUNNING)
    assert repeat_streak([]) == 0
    assert repeat_streak([trial(), fresh, trial(), trial(), running]) == 2
    assert repeat_streak([trial(), trial(), fresh]) == 0


# --- kill -9 ---------------------------------------------------------------------------------


def _command(config_file: Path, runs: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "autocompress.cli",
        "search",
        str(config_file),
        "--runs-dir",
        str(runs),
        *extra,
    ]


def _kill_when(command: list[str], ready, *, timeout: float = 240.0, poll: float = 0.01) -> None:
    """Start ``command`` and kill -9 it as soon as ``ready()`` holds."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            assert process.poll() is None, "the search ended before the moment to kill it"
            assert time.monotonic() < deadline, "the moment to kill the search never came"
            time.sleep(poll)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()


def _check_run(run: Path, objectives, n_trials: int) -> pd.DataFrame:
    trials = load_trials(run)
    counted = _counted(trials)
    assert len(counted) == n_trials
    # Distinct candidates, except a trial retried after an interruption (recorded as such).
    study_trials = {t["number"]: t for t in trials.to_dict("records")}
    assert counted["candidate"].nunique() == len(counted), counted[["number", "candidate"]]
    assert all(study_trials[n]["state"] != "RUNNING" for n in study_trials)
    # The files agree with the study: the front written is the front of the trials written.
    written = pd.read_csv(run / "trials.csv", keep_default_na=False)
    front = pd.read_csv(run / "pareto.csv")
    recomputed = pareto_front(load_trials(run), objectives)
    assert sorted(front["number"]) == sorted(recomputed["number"])
    assert len(written) == len(trials)
    for number in counted[counted["trained"]]["number"]:
        assert (run / "trials" / str(number) / "spec.json").is_file()
    return trials


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["teacher", "mid-trial", "writing results"])
def test_kill_9_anywhere_then_rerun_loses_and_repeats_nothing(tmp_path, quick, moment):
    quick["train"]["epochs"] = 3
    quick["search"]["n_trials"] = 5
    quick["search"]["early_stopping"] = {"enabled": False}
    config_file = tmp_path / "tiny.yaml"
    config_file.write_text(yaml.safe_dump(quick))
    runs = tmp_path / "runs"
    run = runs / "tiny"
    command = _command(config_file, runs)
    if moment == "teacher":
        quick["teacher"]["epochs"] = 8  # a window wide enough to land in
        config_file.write_text(yaml.safe_dump(quick))
        _kill_when(command, lambda: (run / "study.db").is_file())
        assert not (run / "teacher" / "spec.json").exists()
    elif moment == "mid-trial":
        _kill_when(command, lambda: (run / "trials" / "2" / "worker.json").is_file())
    else:
        # The result files are written after the last trial: kill -9 while the temporary files
        # of that write exist (drawing the plots takes long enough to catch).
        written = (".trials.*", ".pareto.*", ".hypervolume.*")
        _kill_when(command, lambda: any(any(run.glob(p)) for p in written), poll=0.002)
    subprocess.run(command, check=True, capture_output=True, timeout=600)
    objectives = parse_config(quick).objectives()
    trials = _check_run(run, objectives, n_trials=5)
    # Extending the run adds only candidates it has not evaluated.
    subprocess.run([*command, "--n-trials", "7"], check=True, capture_output=True, timeout=600)
    extended = _check_run(run, objectives, n_trials=7)
    new = _counted(extended[extended["number"] > trials["number"].max()])
    assert len(new) == 2 and not set(new["candidate"]) & set(_counted(trials)["candidate"])


# --- one run per folder ----------------------------------------------------------------------


@pytest.mark.slow
def test_of_eight_simultaneous_starts_exactly_one_runs(tmp_path, quick):
    quick["search"]["n_trials"] = 2
    config_file = tmp_path / "tiny.yaml"
    config_file.write_text(yaml.safe_dump(quick))
    command = _command(config_file, tmp_path / "runs")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    starts = [
        subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        for _ in range(8)
    ]
    outputs = [(p.wait(timeout=600), p.communicate()[0]) for p in starts]
    codes = sorted(code for code, _ in outputs)
    assert codes == [0] + [2] * 7, [out[-500:] for _, out in outputs]
    for code, output in outputs:
        if code == 2:
            assert "Another search (pid" in output and "Traceback" not in output, output
    study_trials = load_trials(tmp_path / "runs" / "tiny")
    assert len(_counted(study_trials)) == 2


# --- a refused or failed start changes nothing ----------------------------------------------


def _checksums(folder: Path) -> dict[str, str]:
    # Lock files coordinate the processes in a folder; they are not its content.
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.suffix != ".lock"
    }


def test_a_refused_start_leaves_every_byte_of_the_run_unchanged(finished_run, tmp_path):
    run = finished_run.run_dir
    config_file = tmp_path / "tiny.yaml"
    config_file.write_text((run / "config.yaml").read_text())
    before = _checksums(run)
    args = ["search", str(config_file), "--runs-dir", str(run.parent)]
    for override in ("hardware.device=pixel9", "train.epochs=7"):
        result = CliRunner().invoke(app, [*args, "--set", override])
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output
    assert _checksums(run) == before


def test_a_failed_first_start_can_be_retried_after_the_fix(tmp_path, quick):
    config_file = tmp_path / "tiny.yaml"
    config_file.write_text(yaml.safe_dump(quick))
    args = ["search", str(config_file), "--runs-dir", str(tmp_path), "--n-trials", "1"]
    failed = CliRunner().invoke(app, [*args, "--set", "hardware.device=pixel9"])
    assert failed.exit_code == 2 and "pixel9" in failed.output
    fixed = CliRunner().invoke(app, args)
    assert fixed.exit_code == 0, fixed.output


def test_a_damaged_teacher_cache_is_trained_again(finished_run, tmp_path, tiny_config_dict, caplog):
    runs = tmp_path / "runs"
    run = shutil.copytree(finished_run.run_dir, runs / "tiny")
    teacher = run / "teacher" / "model.pt"
    teacher.write_bytes(teacher.read_bytes()[:100])
    before = len(_counted(load_trials(run)))  # other tests may have extended the shared run
    with caplog.at_level(logging.WARNING, logger="autocompress"):
        result = run_search(parse_config(tiny_config_dict), runs_dir=runs)
    assert (
        f"{teacher} cannot be loaded" in caplog.text and "Training the teacher again" in caplog.text
    )
    assert result.teacher_metrics["accuracy"] > 0.5
    assert len(_counted(result.trials)) == before  # the run's trials kept, nothing redone
