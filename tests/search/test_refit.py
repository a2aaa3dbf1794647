import json

import numpy as np
import optuna
import pandas as pd
import pytest
from typer.testing import CliRunner

from autocompress.cli import app
from autocompress.config import ConfigError, load_config, parse_config
from autocompress.core import hypervolume, load_trials, nadir_reference
from autocompress.search import run_search
from autocompress.search.refit import REFIT_ATTR, refit_run


def _front(run_dir):
    return pd.read_csv(run_dir / "pareto.csv")


def test_refit_trains_the_front_as_a_search_with_that_many_epochs_would(finished_run, tmp_path):
    source = finished_run.run_dir
    front = _front(source)
    # Same epochs as the search: every accuracy is reproduced exactly (same seeds, same
    # schedule, same teacher), so the refit trains the candidates the search trained.
    same = refit_run(source, epochs=3, out=tmp_path / "same")
    table = same.table
    assert sorted(table["refit_of"]) == sorted(front["number"])
    assert (table["state"] == "COMPLETE").all()
    assert table["accuracy"].tolist() == pytest.approx(table["search_accuracy"].tolist())
    by_number = front.set_index("number")
    assert table["search_accuracy"].tolist() == pytest.approx(
        by_number.loc[table["refit_of"], "accuracy"].tolist()
    )
    # Each refit trial holds its source trial's candidate and hardware cost.
    refit_trials = load_trials(same.run_dir).set_index("number")
    source_trials = finished_run.trials.set_index("number")
    for row in table.itertuples():
        assert json.loads(refit_trials.loc[row.trial, "candidate"]) == json.loads(
            source_trials.loc[row.refit_of, "candidate"]
        )
        assert refit_trials.loc[row.trial, "size_kb"] == source_trials.loc[row.refit_of, "size_kb"]
    # The teacher is reused, not retrained.
    teacher = "teacher/model.pt"
    assert (same.run_dir / teacher).read_bytes() == (source / teacher).read_bytes()
    assert pd.read_csv(same.run_dir / "refit.csv")["trial"].tolist() == table["trial"].tolist()

    shorter = refit_run(source, epochs=1, out=tmp_path / "short")
    assert list(shorter.table["refit_of"]) == list(table["refit_of"])
    assert shorter.table["accuracy"].tolist() != pytest.approx(table["accuracy"].tolist())
    assert shorter.table["accuracy"].min() > 0.1  # trained: above chance on digits


def test_refit_of_chosen_trials_resumes_and_refuses_another_selection(finished_run, tmp_path):
    source = finished_run.run_dir
    numbers = [int(n) for n in finished_run.trials["number"][:2]]
    out = tmp_path / "chosen"
    first = refit_run(source, epochs=1, out=out, trials=numbers + numbers[:1])  # repeat dropped
    assert first.table["refit_of"].tolist() == numbers
    again = refit_run(source, epochs=1, out=out, trials=numbers)
    pd.testing.assert_frame_equal(again.table, first.table)  # resumed: nothing retrained
    assert len(load_trials(out)) == 2
    with pytest.raises(ConfigError, match="choose another --out"):
        refit_run(source, epochs=1, out=out, trials=numbers[:1])
    with pytest.raises(ConfigError, match=r"train.epochs 1, asked 2"):
        refit_run(source, epochs=2, out=out, trials=numbers)


def test_refit_rejects_bad_input_with_the_reason(finished_run, tmp_path):
    source = finished_run.run_dir
    with pytest.raises(ValueError, match="has no trial 99"):
        refit_run(source, epochs=1, out=tmp_path / "a", trials=[99])
    with pytest.raises(ValueError, match="'epochs' parameter"):
        refit_run(source, epochs=0, out=tmp_path / "b")
    with pytest.raises(ValueError, match="its own folder"):
        refit_run(source, epochs=1, out=source)
    with pytest.raises(ConfigError, match="does not exist"):
        refit_run(tmp_path / "nothing", epochs=1)


def test_refit_skips_trials_that_were_never_trained(tmp_path, tiny_config_dict):
    tiny_config_dict["hardware"]["budget"] = {"max_size_kb": 0.8}
    tiny_config_dict["search"]["n_trials"] = 6
    run = run_search(parse_config(tiny_config_dict), runs_dir=tmp_path)
    over = run.trials[~run.trials["feasible"]]
    assert len(over), "the budget should leave some trial untrained"
    number = int(over["number"].iloc[0])
    with pytest.raises(ValueError, match=f"Trial {number} .* over the hardware budget"):
        refit_run(run.run_dir, epochs=1, out=tmp_path / "r", trials=[number])


def test_interrupted_refit_resumes_and_maps_the_retry_to_its_source(
    finished_run, tmp_path, interrupt_training
):
    restore = interrupt_training(2)  # a refit trains with early stopping off
    source, out = finished_run.run_dir, tmp_path / "cut"
    numbers = [int(n) for n in finished_run.trials["number"][:3]]
    with pytest.raises(KeyboardInterrupt):
        refit_run(source, epochs=1, out=out, trials=numbers)
    restore()
    table = refit_run(source, epochs=1, out=out, trials=numbers).table
    assert sorted(table["refit_of"]) == sorted(numbers)  # each once, the cut one by its retry
    assert (table["state"] == "COMPLETE").all()
    study = optuna.load_study(study_name="cut", storage=f"sqlite:///{out}/study.db")
    assert sum(REFIT_ATTR in t.user_attrs for t in study.trials) == 3  # queued once each
    assert (load_trials(out)["state"] == "COMPLETE").sum() == 3


@pytest.mark.slow
def test_refit_cli(finished_run, tmp_path):
    runner = CliRunner()
    out = tmp_path / "cli-refit"
    result = runner.invoke(
        app, ["refit", str(finished_run.run_dir), "--epochs", "1", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    front = _front(finished_run.run_dir)
    assert result.output.count("search trial") == len(front)
    assert "Pareto-optimal" in result.output and (out / "refit.csv").is_file()
    # The refit folder is a run folder: export works on it.
    export_args = ["export", str(out), "--trial", "0", "--out", str(tmp_path / "e")]
    exported = runner.invoke(app, export_args)
    assert exported.exit_code == 0, exported.output
    # ... and so does report, which adds the search-vs-refit accuracy plot.
    reported = runner.invoke(app, ["report", str(out)])
    assert reported.exit_code == 0, reported.output
    assert (out / "report" / "refit_accuracy.png").stat().st_size > 0
    assert "Search vs refit accuracy" in (out / "report" / "report.html").read_text()

    bad = runner.invoke(app, ["refit", str(finished_run.run_dir), "--epochs", "1", "--trials", "x"])
    assert bad.exit_code == 2 and "--trials must be comma-separated" in bad.output
    missing = runner.invoke(app, ["refit", str(finished_run.run_dir)])
    assert missing.exit_code != 0 and "--epochs" in missing.output


def test_slack_also_refits_the_trials_near_the_front(finished_run, tmp_path):
    source = finished_run.run_dir
    front = set(_front(source)["number"])
    done = finished_run.trials[
        (finished_run.trials["state"] == "COMPLETE") & finished_run.trials["feasible"]
    ]
    everything = refit_run(source, epochs=1, out=tmp_path / "all", slack=1.0).table
    assert set(everything["refit_of"]) == set(done["number"])  # a slack of 1 takes every trial
    assert front < set(done["number"]), "the tiny run should have trials off its front"
    with pytest.raises(ValueError, match="not both"):
        refit_run(source, epochs=1, out=tmp_path / "x", trials=[0], slack=0.1)
    with pytest.raises(ValueError, match="'slack' parameter"):
        refit_run(source, epochs=1, out=tmp_path / "y", slack=-0.1)


def _front_values(front, config):
    return front[[o.name for o in config.objectives()]].to_numpy(dtype=float)


@pytest.mark.slow
def test_refit_order_is_the_front_ends_then_greedy_volume_cut_by_budget(finished_run, tmp_path):
    source = finished_run.run_dir
    config = load_config(source / "config.yaml")
    front = _front(source)
    assert len(front) >= 3, "the tiny run should have a front of 3+ points"
    directions = [o.direction for o in config.objectives()]
    values = _front_values(front, config)
    numbers = front["number"].tolist()
    loss = np.where(np.array(directions) == "maximize", -values, values)
    extremes = list(dict.fromkeys(int(np.argmin(loss[:, j])) for j in range(loss.shape[1])))
    assert len(extremes) < len(front), "the tiny run should have a front point between its ends"

    everything = refit_run(source, epochs=1, out=tmp_path / "all").table["refit_of"].tolist()
    assert sorted(everything) == sorted(numbers)
    # The front's ends first (the most accurate point leads), then the point adding the most
    # hypervolume to them, in the box of the front's own worst values.
    assert everything[: len(extremes)] == [numbers[i] for i in extremes]
    assert everything[0] == front.loc[front["accuracy"].idxmax(), "number"]
    reference = nadir_reference(values, directions)
    added = {
        n: hypervolume(values[[*extremes, i]], directions, reference)
        for i, n in enumerate(numbers)
        if i not in extremes
    }
    assert added[everything[len(extremes)]] == pytest.approx(max(added.values()))

    budget = refit_run(source, epochs=1, out=tmp_path / "two", budget=2)
    assert budget.table["refit_of"].tolist() == everything[:2]
    assert len(refit_run(source, epochs=1, out=tmp_path / "big", budget=99).table) == len(front)
    # Re-running resumes; another budget is another selection.
    again = refit_run(source, epochs=1, out=tmp_path / "two", budget=2)
    pd.testing.assert_frame_equal(again.table, budget.table)
    with pytest.raises(ConfigError, match="choose another --out"):
        refit_run(source, epochs=1, out=tmp_path / "two", budget=3)
    with pytest.raises(ValueError, match="'budget' parameter"):
        refit_run(source, epochs=1, out=tmp_path / "x", budget=0)
    with pytest.raises(ValueError, match="or a budget, not both"):
        refit_run(source, epochs=1, out=tmp_path / "y", trials=[0], budget=1)
    result = CliRunner().invoke(
        app,
        ["refit", str(source), "--epochs", "1", "--budget", "1", "--out", str(tmp_path / "c")],
    )
    assert result.exit_code == 0, result.output
    assert result.output.count("search trial") == 1


def test_refit_reads_a_run_whose_study_lives_in_another_storage(tmp_path, tiny_config_dict):
    journal = tmp_path / "shared.journal"
    tiny_config_dict["search"].update(n_trials=3, storage=f"journal:{journal}")
    tiny_config_dict["train"]["epochs"] = 1
    run = run_search(parse_config(tiny_config_dict), runs_dir=tmp_path / "runs")
    assert not (run.run_dir / "study.db").exists()
    result = refit_run(run.run_dir, epochs=1)
    assert result.run_dir == tmp_path / "runs" / "tiny-refit"
    # Its own study in its folder; the same accuracies as the search (same epochs).
    assert (result.run_dir / "study.db").is_file()
    table = result.table
    assert table["accuracy"].tolist() == pytest.approx(table["search_accuracy"].tolist())
