from __future__ import annotations

from typer.testing import CliRunner

from autocompress.cli import app

runner = CliRunner()


def _flat(output: str) -> str:
    # rich wraps long paths at the terminal width; the checks look for whole words.
    return output.replace("\n", "")


def test_report_writes_into_the_run_folder_by_default(finished_run):
    run = finished_run.run_dir
    result = runner.invoke(app, ["report", str(run)])
    assert result.exit_code == 0, result.output
    html = run / "report" / "report.html"
    assert html.is_file() and str(html) in _flat(result.output)
    assert f"optuna-dashboard sqlite:///{run}/study.db" in result.output
    for name in ("pareto.png", "pareto_3d.png", "hypervolume.png", "parallel_coordinates.png"):
        assert (run / "report" / name).is_file()


def test_report_with_trial_and_out(finished_run, tmp_path):
    trial = int(finished_run.trials["number"].iloc[-1])
    result = runner.invoke(
        app, ["report", str(finished_run.run_dir), "--trial", str(trial), "--out", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "report.html").is_file()
    assert (tmp_path / f"layers_trial_{trial}.png").is_file()
    assert f"layers_trial_{trial}.png" not in {p.name for p in (finished_run.run_dir).iterdir()}


def test_report_of_an_unknown_trial_is_an_error(finished_run, tmp_path):
    args = ["report", str(finished_run.run_dir), "--trial", "999", "--out", str(tmp_path)]
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert "'trial'" in result.output and "Got 999 instead" in _flat(result.output)


def test_report_of_a_folder_that_is_not_a_run(tmp_path):
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2
    assert "config.yaml" in _flat(result.output)
    assert not (tmp_path / "report").exists()
