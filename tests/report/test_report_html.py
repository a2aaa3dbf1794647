from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from autocompress.core import Objective, pareto_front
from autocompress.report import format_metric
from autocompress.report.html import (
    ReportImage,
    render_report,
    report_header,
    trials_table_data,
    write_report,
)

ACC = Objective("accuracy", "maximize")
LAT = Objective("latency_ms", "minimize")
SIZE = Objective("size_kb", "minimize")
OBJECTIVES = [ACC, LAT, SIZE]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Every switch that could make Chromium reach the network (or a profile outside tmp) is off.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]
# A resource the browser would fetch: src/href/url()/@import pointing at http(s) or "//host".
REMOTE_RESOURCE = re.compile(
    r"""(?:src|href|srcset|action|poster|data)\s*=\s*["']?\s*(?:https?:)?//"""
    r"""|url\(\s*["']?\s*(?:https?:)?//|@import""",
    re.IGNORECASE,
)


@pytest.fixture
def trials(three_objective_trials):
    df = three_objective_trials.copy()
    df["fail_reason"] = ""
    df.loc[df["number"] == 5, "fail_reason"] = "<script>alert('x')</script> & friends"
    df["summary"] = [f"small_cnn <b>w{n}</b>" for n in df["number"]]
    return df


def _header(trials, **kwargs):
    config = {"name": "demo<run>", "seed": 0, "search": {"sampler": "nsga2", "n_trials": 8}}
    return report_header(
        Path("runs/demo"),
        config=config,
        objectives=OBJECTIVES,
        trials=trials,
        teacher_metrics=kwargs.get("teacher_metrics", {"accuracy": 0.9712}),
    )


def test_report_header_counts_and_dashboard(trials) -> None:
    header = _header(trials)
    assert header.run_name == "demo<run>"
    assert header.teacher_score == pytest.approx(0.9712)
    # 0, 1, 2, 3, 6 trained; 4 over budget; 5 failed; 7 running.
    counts = header.counts
    assert (counts.total, counts.complete, counts.over_budget) == (8, 5, 1)
    assert (counts.failed, counts.running, counts.other, header.n_front) == (1, 1, 0, 4)
    assert (counts.stopped, counts.skipped) == (0, 0)
    assert header.notice is None
    # Absolute: the page is read from anywhere, not from the folder the report was written in.
    study = Path("runs/demo").resolve() / "study.db"
    assert header.dashboard_command == f"optuna-dashboard sqlite:///{study}"
    assert ("search", "nsga2, n_trials 8, seed 0") in header.config_summary
    assert _header(trials, teacher_metrics=None).teacher_score is None


@pytest.fixture
def pruned_trials(trials):
    """``trials`` and three PRUNED ones: 8 stopped early (trained), 9 skipped by the prescreen,
    10 a skipped duplicate; and 7, once running, now failed too."""
    extra = trials.iloc[[3, 3, 3]].assign(
        number=[8, 9, 10],
        state="PRUNED",
        accuracy=np.nan,
        pruned_reason=[
            "stopped at rung 0 after 1 epoch(s) with accuracy 0.4125",
            "skipped: predicted dominated by the front",
            "duplicate of trial 3",
        ],
    )
    df = pd.concat([trials.assign(pruned_reason=""), extra], ignore_index=True)
    df.loc[df["number"] == 7, ["state", "fail_reason"]] = ["FAIL", "loss is NaN"]
    return df


def test_report_header_counts_stopped_and_skipped_trials_by_name(pruned_trials) -> None:
    header = _header(pruned_trials)
    counts = header.counts
    assert (counts.total, counts.complete, counts.over_budget) == (11, 5, 1)
    assert (counts.stopped, counts.skipped, counts.failed) == (1, 2, 2)
    assert (counts.running, counts.other) == (0, 0)  # a finished run: nothing "running or other"
    page = render_report(header, images=[], table=trials_table_data(pruned_trials, OBJECTIVES))
    assert (
        "11 trials: 5 complete, 1 over budget (not trained), 1 stopped early, "
        "2 skipped (not trained), 2 failed; 4 on the Pareto front"
    ) in page
    assert "running" not in page and "other" not in page


def test_trials_table_shows_why_trials_stopped(pruned_trials) -> None:
    rows = {r.number: r for r in trials_table_data(pruned_trials, OBJECTIVES).rows}
    assert rows[8].status == "stopped at rung 0 after 1 epoch(s) with accuracy 0.4125"
    assert rows[9].status == "skipped: predicted dominated by the front"
    assert rows[10].status == "skipped: duplicate of trial 3"
    assert [rows[n].css_class for n in (8, 9, 10)] == ["stopped", "skipped", "skipped"]
    assert rows[7].status == "failed: loss is NaN"
    assert rows[9].cells[2] == "-"  # never trained: no accuracy
    bare = pruned_trials.assign(pruned_reason="")
    rows = {r.number: r for r in trials_table_data(bare, OBJECTIVES).rows}
    assert rows[8].status == "skipped" and rows[8].css_class == "skipped"


def test_report_says_in_words_that_there_is_nothing_to_plot(trials) -> None:
    failed = trials[trials["state"] == "FAIL"].copy()
    failed = pd.concat([failed, failed.assign(number=6)], ignore_index=True)
    failed["fail_reason"] = ["CUDA out of memory", "CUDA out of memory"]
    header = _header(failed)
    assert header.notice == (
        "No completed trial within the hardware budget yet: nothing to plot. 2 trials: "
        "0 complete, 2 failed. Most common failure (2 of 2): CUDA out of memory"
    )
    page = render_report(header, images=[], table=trials_table_data(failed, OBJECTIVES))
    assert f'<p class="notice">{header.notice}</p>' in page


def test_trials_table_marks_front_failed_and_over_budget(trials) -> None:
    table = trials_table_data(trials, OBJECTIVES)
    assert table.columns[:5] == ["trial", "status", "accuracy ↑", "latency_ms ↓", "size_kb ↓"]
    assert table.columns[-1] == "summary" and "energy_mj" in table.columns
    assert [r.number for r in table.rows] == list(range(8))
    assert table.front_numbers == pareto_front(trials, OBJECTIVES)["number"].tolist()
    by_number = {r.number: r for r in table.rows}
    assert {n for n, r in by_number.items() if r.on_front} == {0, 1, 2, 6}
    assert by_number[0].status == "front" and by_number[0].css_class == "front"
    assert by_number[5].status == "failed: <script>alert('x')</script> & friends"
    assert by_number[5].css_class == "failed"
    assert by_number[4].status.startswith("over budget") and by_number[4].cells[2] == "-"
    assert by_number[3].status == "complete" and by_number[7].status == "running"
    assert by_number[0].cells[2:5] == ["90.0%", "5.00 ms", "10.0 kB"]


def test_rendered_page_escapes_text_from_the_run(trials) -> None:
    page = render_report(_header(trials), images=[], table=trials_table_data(trials, OBJECTIVES))
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; friends" in page
    assert "small_cnn &lt;b&gt;w0&lt;/b&gt;" in page and "<b>w0</b>" not in page
    assert "demo&lt;run&gt;" in page
    assert f"optuna-dashboard sqlite:///{Path('runs/demo').resolve()}/study.db" in page
    assert "97.1%" in page  # teacher accuracy
    assert page.count('<tr class="front">') == 2 * 4  # front table + all-trials table


def test_rendered_page_inlines_images(tmp_path: Path, trials) -> None:
    png = tmp_path / "x.png"
    png.write_bytes(PNG_MAGIC + b"rest")
    image = ReportImage("A <title>", png, "caption & more")
    page = render_report(
        _header(trials), images=[image], table=trials_table_data(trials, OBJECTIVES)
    )
    encoded = base64.b64encode(png.read_bytes()).decode()
    assert f'src="data:image/png;base64,{encoded}"' in page
    assert "A &lt;title&gt;" in page and "caption &amp; more" in page


def _data_images(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([^"]+)"', page)]


@pytest.fixture(scope="module")
def real_report(finished_run, tmp_path_factory):
    """The report of the shared tiny run, written once for the tests that only read it."""
    return write_report(finished_run.run_dir, out_dir=tmp_path_factory.mktemp("report"))


def test_write_report_of_a_real_run(finished_run, real_report) -> None:
    from autocompress.report.figures import default_trial

    result = real_report
    assert result.html == result.images[0].parent / "report.html"
    assert result.trial == default_trial(finished_run.trials, OBJECTIVES)
    names = [p.name for p in result.images]
    assert names == [
        "pareto.png",
        "pareto_3d.png",
        "hypervolume.png",
        "parallel_coordinates.png",
        f"layers_trial_{result.trial}.png",
    ]
    page = result.html.read_text(encoding="utf-8")
    # Self-contained: each PNG is inlined byte for byte; nothing is fetched from anywhere.
    assert _data_images(page) == [p.read_bytes() for p in result.images]
    assert all(p.read_bytes().startswith(PNG_MAGIC) for p in result.images)
    assert "http://" not in page and "https://" not in page
    assert not REMOTE_RESOURCE.search(page)
    assert "<script" not in page.lower() and "<link" not in page.lower()
    teacher = json.loads((finished_run.run_dir / "teacher" / "spec.json").read_text())
    assert format_metric("accuracy", teacher["metrics"]["accuracy"]) in page
    assert f"optuna-dashboard sqlite:///{finished_run.run_dir}/study.db" in page
    assert "autocompress run <code>tiny</code>" in page


def test_write_report_from_trials_csv_with_two_objectives(
    tmp_path: Path, trials, tiny_config_dict
) -> None:
    from autocompress.config import dump_config, parse_config

    # A run folder without study.db or teacher: the report reads trials.csv and says so.
    tiny_config_dict["search"]["objectives"] = ["accuracy", "latency_ms"]
    (tmp_path / "config.yaml").write_text(dump_config(parse_config(tiny_config_dict)))
    trials.assign(candidate="").to_csv(tmp_path / "trials.csv", index=False)
    result = write_report(tmp_path)
    assert result.html == tmp_path / "report" / "report.html"
    assert result.trial is None  # no candidates: no per-layer chart
    assert [p.name for p in result.images] == [
        "pareto.png",
        "hypervolume.png",
        "parallel_coordinates.png",
    ]  # two objectives: no 3-D plot
    page = result.html.read_text(encoding="utf-8")
    assert "<script" not in page.lower()
    assert "failed: &lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; friends" in page
    assert "not found (teacher/spec.json is missing)" in page


def test_write_report_of_a_run_whose_trials_all_failed(
    tmp_path: Path, monkeypatch, trials, tiny_config_dict
) -> None:
    from autocompress.config import dump_config, parse_config

    # Written from the run's parent with a relative path, as `autocompress report RUN` is.
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(dump_config(parse_config(tiny_config_dict)))
    failed = trials.assign(
        state="FAIL", candidate="", fail_reason="CUDA out of memory", accuracy=np.nan
    )
    failed.to_csv(run / "trials.csv", index=False)
    result = write_report(Path("run"))
    assert result.trial is None
    assert all(p.read_bytes().startswith(PNG_MAGIC) for p in result.images)
    page = result.html.read_text(encoding="utf-8")
    assert (
        '<p class="notice">No completed trial within the hardware budget yet: nothing to plot. '
        "8 trials: 0 complete, 8 failed. Most common failure (8 of 8): CUDA out of memory</p>"
    ) in page
    assert f"optuna-dashboard sqlite:///{run.resolve()}/study.db" in page


def test_write_report_refuses_an_unknown_trial(finished_run, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'trial' parameter of layer_bars_data"):
        write_report(finished_run.run_dir, out_dir=tmp_path, trial=999)
    assert not (tmp_path / "report.html").exists()


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_report_renders_in_headless_chromium(real_report, tmp_path: Path) -> None:
    import matplotlib.image

    result = real_report
    screenshot = tmp_path / "screenshot.png"
    command = [
        CHROMIUM,
        *CHROMIUM_FLAGS,
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        f"--screenshot={screenshot}",
        "--window-size=1280,2000",
        result.html.resolve().as_uri(),
    ]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert screenshot.read_bytes().startswith(PNG_MAGIC)
    image = matplotlib.image.imread(screenshot)
    assert image.shape[:2] == (2000, 1280)
    pixels = image[..., :3].reshape(-1, 3)
    assert (pixels != pixels[0]).any()  # not one flat colour: the page drew something
    # Figures, not only text: many distinct colours, and dark or saturated pixels in quantity.
    assert len(np.unique(pixels, axis=0)) > 100
    assert (pixels.min(axis=1) < 0.8).mean() > 0.01
