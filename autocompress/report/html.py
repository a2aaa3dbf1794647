"""A run's review page: one self-contained ``report.html`` beside the PNGs it shows.

The page opens offline and can be mailed or archived alone: images are inlined as base64 PNG
data URIs and the only style is an inline ``<style>`` block; there are no scripts, fonts or
links to fetch. Every piece of text that comes from the run folder (trial summaries, failure
reasons, config values) is escaped with ``html.escape``.

As elsewhere in ``autocompress.report``, ``report_header`` and ``trials_table_data`` compute
what the page shows (tests check those) and ``render_*`` only formats it.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd

from autocompress.core.objectives import MAXIMIZE, Objective
from autocompress.core.pareto import check_trials_frame, pareto_front
from autocompress.core.rundir import MODEL_SPEC_FILE, RunDir
from autocompress.core.trials import HARDWARE_METRICS, metric_columns
from autocompress.report.counts import (
    STOPPED,
    TrialCounts,
    count_trials,
    nothing_to_plot,
    pruned_kind,
    text_cell,
)
from autocompress.report.tables import format_metric

REPORT_FILE = "report.html"
_SUMMARY_LIMIT = 120


class ReportHeader(NamedTuple):
    """What the top of the page says about the run.

    ``counts``: how many trials ended which way (complete, over budget, stopped early,
    skipped, failed, running; see ``report.counts``). ``teacher_score``: the teacher's
    ``teacher_metric`` (the task's primary metric), ``None`` when ``teacher/spec.json`` is
    missing. ``notice``: what the page says in words when there is no
    front to plot, else ``None``. ``dashboard_command`` names the study by its absolute path,
    so it runs from any folder.
    """

    run_name: str
    run_dir: str
    config_summary: list[tuple[str, str]]
    objectives: tuple[Objective, ...]
    teacher_metric: str
    teacher_score: float | None
    counts: TrialCounts
    n_front: int
    dashboard_command: str
    notice: str | None


class TableRow(NamedTuple):
    """One trial: its number, status text, on_front flag and display cells (plain text)."""

    number: int
    status: str
    on_front: bool
    css_class: str
    cells: list[str]


class TrialsTableData(NamedTuple):
    """Column headers, one row per trial by number, and the front as ``pareto_front`` orders
    it (best first objective first)."""

    columns: list[str]
    rows: list[TableRow]
    front_numbers: list[int]


class ReportImage(NamedTuple):
    title: str
    path: Path
    caption: str = ""


class ReportResult(NamedTuple):
    """What ``write_report`` wrote: the page, the PNGs in it, the trial of the layer chart."""

    html: Path
    images: list[Path]
    trial: int | None


def write_report(
    run_dir: str | os.PathLike[str],
    *,
    trial: int | None = None,
    out_dir: str | os.PathLike[str] | None = None,
) -> ReportResult:
    """Write ``report.html`` and its PNGs for the run in ``run_dir`` into ``out_dir``
    (default ``run_dir/report``).

    ``trial`` picks the trial of the per-layer chart; by default the most accurate front point.
    Raises ``ConfigError`` when ``config.yaml`` is missing or invalid, ``FileNotFoundError``
    when the run has no trials yet, and ``ValueError`` when ``trial`` has no candidate.
    """
    # Imported here: the config and the study loader pull in torch and Optuna, which
    # ``import autocompress.report`` must not.
    from autocompress.config import load_config
    from autocompress.core.pareto import hypervolume_history
    from autocompress.core.trials import load_trials
    from autocompress.report.figures import (
        default_trial,
        layer_bars_data,
        plot_layer_bars,
        plot_parallel_coordinates,
        plot_pareto_3d,
        plot_refit_accuracy,
    )
    from autocompress.report.plots import plot_hypervolume, plot_pareto
    from autocompress.report.tables import rank_agreement

    run_dir = Path(run_dir)
    run = RunDir(run_dir)
    out_dir = run.report_dir if out_dir is None else Path(out_dir)
    config = load_config(run.config_file)
    trials = load_trials(run_dir)
    objectives = config.objectives()
    if trial is not None:
        layer_bars_data(trials, trial=trial)  # fail on a bad --trial before drawing anything
    else:
        trial = default_trial(trials, objectives, score=config.make_task().score)
    out_dir.mkdir(parents=True, exist_ok=True)

    images = [
        ReportImage(
            "Pareto front: 2-D projections",
            plot_pareto(trials, objectives, out_dir / "pareto.png"),
            "Every objective pair. Filled blue: non-dominated in that pair; hollow blue: on the "
            "full front but hidden in this projection; grey: dominated; red x: over budget.",
        )
    ]
    if len(objectives) >= 3:
        names = ", ".join(o.name for o in objectives[:3])
        images.append(
            ReportImage(
                "Pareto front: 3-D",
                plot_pareto_3d(trials, objectives, out_dir / "pareto_3d.png"),
                f"The first three objectives ({names}); trials on their front filled and "
                "labelled by number (trials at one point share a label), other trials of the "
                "full front hollow.",
            )
        )
    history = hypervolume_history(trials, objectives)
    notice = nothing_to_plot(trials, objectives)
    images.append(
        ReportImage(
            "Hypervolume",
            plot_hypervolume(history, out_dir / "hypervolume.png", message=notice),
            "Hypervolume of the front after each trial, against one reference point derived "
            "from the whole run.",
        )
    )
    images.append(
        ReportImage(
            "Per-layer compression of the front",
            plot_parallel_coordinates(trials, objectives, out_dir / "parallel_coordinates.png"),
            "One line per front trial: w_bits, a_bits, prune_ratio (and rank_ratio where a "
            "trial factorizes) of each layer, then the "
            "objectives; each axis spans its own min..max (printed below/above it). Where a "
            "trial's architecture has no such layer its line has a gap, bridged by dots. An axis "
            "with the same value on every line is left out and named below the figure.",
        )
    )
    refit_file = run.refit_table
    if refit_file.is_file():  # written by `autocompress refit`
        refit = pd.read_csv(refit_file)
        tau = rank_agreement(refit)
        agreement = "" if math.isnan(tau) else f" Kendall tau {tau:.2f}."
        images.append(
            ReportImage(
                "Search vs refit accuracy",
                plot_refit_accuracy(refit, out_dir / "refit_accuracy.png"),
                "Each refit trial's accuracy in the search it came from (x) and after the "
                "refit (y); filled: on the refit front, labelled by the search's trial."
                + agreement,
            )
        )
    if trial is not None:
        images.append(
            ReportImage(
                f"Layers of trial {trial}",
                plot_layer_bars(trials, out_dir / f"layers_trial_{trial}.png", trial=trial),
                "Bits of weights and input activations (32 = left in float) and the fraction "
                "of output channels pruned, per layer. Pick another trial with --trial N.",
            )
        )

    teacher = _teacher_metrics(run_dir)
    header = report_header(
        run_dir,
        config=config.model_dump(mode="json"),
        objectives=objectives,
        trials=trials,
        teacher_metrics=teacher,
    )
    note = sparse_pricing_note(
        trials, objectives, device=_sparse_kernels(config.hardware.profile, config.hardware.device)
    )
    if note:
        header = header._replace(notice=" ".join(filter(None, [header.notice, note])))
    page = render_report(header, images=images, table=trials_table_data(trials, objectives))
    path = out_dir / REPORT_FILE
    path.write_text(page, encoding="utf-8")
    return ReportResult(html=path, images=[image.path for image in images], trial=trial)


def report_header(
    run_dir: str | os.PathLike[str],
    *,
    config: Mapping[str, Any],
    objectives: Sequence[Objective],
    trials: pd.DataFrame,
    teacher_metrics: Mapping[str, Any] | None,
) -> ReportHeader:
    """Header data from the run's config (as a plain dict), its trials and teacher metrics."""
    check_trials_frame(trials, objectives, func="report_header")
    run_dir = Path(run_dir)
    metric = _primary_metric(config)
    score = (teacher_metrics or {}).get(metric)
    # The page is read away from the shell that wrote it: a relative path would name the
    # study relative to wherever the reader happens to be.
    study_url = RunDir(run_dir.resolve()).study_url
    return ReportHeader(
        run_name=str(config.get("name", run_dir.name)),
        run_dir=str(run_dir),
        config_summary=_config_summary(config),
        objectives=tuple(objectives),
        teacher_metric=metric,
        teacher_score=None if score is None else float(score),
        counts=count_trials(trials),
        n_front=len(pareto_front(trials, objectives)),
        dashboard_command=f"optuna-dashboard {shlex.quote(study_url)}",
        notice=nothing_to_plot(trials, objectives),
    )


def sparse_pricing_note(
    trials: pd.DataFrame,
    objectives: Sequence[Objective],
    *,
    device: tuple[str, Sequence[str]] | None,
) -> str | None:
    """What the page must say when front trials have sparse layers that the analytic profile
    priced dense: ``device`` is ``(name, N:M patterns it declares sparse kernels for)``, None
    for a profile that is not analytic (it measures or looks up what it prices). None when
    there is nothing to say."""
    if device is None or "candidate" not in trials.columns:
        return None
    name, kernels = device
    patterns: set[str] = set()
    for text in pareto_front(trials, objectives)["candidate"]:
        if not isinstance(text, str) or not text:
            continue
        for layer in json.loads(text).get("layers", {}).values():
            value = layer.get("sparsity", 0.0)
            if value not in (0, 0.0):
                patterns.add(value if isinstance(value, str) else "unstructured")
    unpriced = sorted(patterns - set(kernels))
    if not unpriced:
        return None
    return (
        f"Sparsity ({', '.join(unpriced)}) reduces size only; latency priced dense because "
        f"{name} declares no sparse kernels"
        + (f" for it (it declares {', '.join(sorted(kernels))})." if kernels else ".")
    )


def _sparse_kernels(profile: str, device: str) -> tuple[str, list[str]] | None:
    if profile != "analytic":
        return None
    from autocompress.hardware_profiles.device_spec import load_device  # pydantic + yaml

    try:
        spec = load_device(device)
    except ValueError:  # a user spec moved away since the run: nothing to say about it
        return None
    return spec.name, list(spec.sparse)


def _primary_metric(config: Mapping[str, Any]) -> str:
    from autocompress.tasks import create_task  # torch: not on ``import autocompress.report``

    return create_task(config.get("task", "classification")).primary


def trials_table_data(trials: pd.DataFrame, objectives: Sequence[Objective]) -> TrialsTableData:
    """Every trial by number: status, objectives, the other metrics, summary.

    Status is "front" for Pareto-optimal trials, "failed: <reason>" for failed ones, "over
    budget" for trials rejected before training, the ``pruned_reason`` of a PRUNED trial
    (led by "stopped early: " or "skipped: " unless it says so itself), else the Optuna state
    in lower case.
    """
    check_trials_frame(trials, objectives, func="trials_table_data")
    objectives = list(objectives)
    names = [o.name for o in objectives]
    others = [m for m in metric_columns(trials) if m not in names]
    arrows = {o.name: "↑" if o.direction == MAXIMIZE else "↓" for o in objectives}
    columns = ["trial", "status", *(f"{n} {arrows[n]}" for n in names), *others, "summary"]
    front_numbers = [int(n) for n in pareto_front(trials, objectives)["number"]]
    front = set(front_numbers)

    rows = []
    for _, row in trials.sort_values("number", kind="mergesort").iterrows():
        number = int(row["number"])
        state = str(row["state"])
        on_front = number in front
        if on_front:
            status, css = "front", "front"
        elif state == "FAIL":
            reason = text_cell(row.get("fail_reason", ""))
            status, css = f"failed: {reason}" if reason else "failed", "failed"
        elif state == "COMPLETE" and not _true(row["feasible"]):
            status, css = "over budget (not trained)", "infeasible"
        elif state == "PRUNED":
            reason = text_cell(row.get("pruned_reason", ""))
            kind = pruned_kind(reason)
            css = "stopped" if kind == STOPPED else "skipped"
            # The recorded reasons name their kind ("stopped at rung 1 ...", "skipped: ..."):
            # the label leads only a reason that does not.
            if not reason:
                status = kind
            elif reason.startswith(css):
                status = reason
            else:
                status = f"{kind}: {reason}"
        else:
            status, css = state.lower(), ""
        # An untrained trial's task metrics are placeholders (accuracy 0): shown as -.
        trained = css not in ("infeasible", "skipped")
        metric_cells = [
            format_metric(n, row[n]) if trained or n in HARDWARE_METRICS else "-"
            for n in [*names, *others]
        ]
        summary = text_cell(row.get("summary", ""))
        if len(summary) > _SUMMARY_LIMIT:
            summary = summary[: _SUMMARY_LIMIT - 1] + "…"
        cells = [str(number), status, *metric_cells, summary]
        rows.append(TableRow(number, status, on_front, css, cells))
    return TrialsTableData(columns, rows, front_numbers)


def render_report(
    header: ReportHeader, *, images: Sequence[ReportImage], table: TrialsTableData
) -> str:
    """The whole page as one string: header, figures (inlined PNG), front and trials tables."""
    e = html.escape
    counts = (
        f"{header.counts.total} trials: {header.counts.describe()}; "
        f"{header.n_front} on the Pareto front"
    )
    notice = f'<p class="notice">{e(header.notice)}</p>' if header.notice else ""
    teacher = (
        "not found (teacher/spec.json is missing)"
        if header.teacher_score is None
        else format_metric(header.teacher_metric, header.teacher_score)
    )
    objectives = ", ".join(
        f"{o.name} {'↑' if o.direction == MAXIMIZE else '↓'}" for o in header.objectives
    )
    summary_rows = "".join(
        f"<tr><th>{e(key)}</th><td>{e(value)}</td></tr>" for key, value in header.config_summary
    )
    figures = "".join(_render_image(image) for image in images)
    by_number = {row.number: row for row in table.rows}
    front_rows = [by_number[n] for n in table.front_numbers if n in by_number]
    front = TrialsTableData(table.columns, front_rows, table.front_numbers)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>autocompress report: {e(header.run_name)}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>autocompress run <code>{e(header.run_name)}</code></h1>",
        f'<p class="meta">{e(header.run_dir)}</p>',
        '<div class="cards">',
        f'<div class="card"><b>Teacher (fp32) {e(header.teacher_metric)}</b>{e(teacher)}</div>',
        f'<div class="card"><b>Trials</b>{e(counts)}</div>',
        f'<div class="card"><b>Objectives</b>{e(objectives)}</div>',
        "</div>",
        f'<table class="config">{summary_rows}</table>',
        "<p>Browse the study interactively (<code>pip install optuna-dashboard</code>):</p>",
        f"<pre>{e(header.dashboard_command)}</pre>",
        "<h2>Figures</h2>",
        notice,
        figures,
        f"<h2>Pareto front ({len(front.rows)} trials)</h2>",
        _render_table(front),
        f"<h2>All trials ({len(table.rows)})</h2>",
        _render_table(table),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _render_image(image: ReportImage) -> str:
    e = html.escape
    data = base64.b64encode(Path(image.path).read_bytes()).decode("ascii")
    caption = f"<figcaption>{e(image.caption)}</figcaption>" if image.caption else ""
    return (
        f"<figure><h3>{e(image.title)}</h3>"
        f'<img alt="{e(image.title)}" src="data:image/png;base64,{data}">{caption}</figure>'
    )


def _render_table(table: TrialsTableData) -> str:
    e = html.escape
    head = "".join(f"<th>{e(c)}</th>" for c in table.columns)
    body = "".join(
        f'<tr class="{e(row.css_class)}">'
        + "".join(f"<td>{e(c)}</td>" for c in row.cells)
        + "</tr>"
        for row in table.rows
    )
    if not table.rows:
        body = f'<tr><td colspan="{len(table.columns)}">none</td></tr>'
    return f'<table class="trials"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _config_summary(config: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The few config fields a reader needs to place the run; the rest is in config.yaml."""

    def get(*keys: str) -> Any:
        value: Any = config
        for key in keys:
            value = value.get(key) if isinstance(value, Mapping) else None
        return value

    budget = {k: v for k, v in (get("hardware", "budget") or {}).items() if v is not None}
    hardware = f"{get('hardware', 'profile')}"
    if get("hardware", "profile") == "analytic":
        hardware += f" ({get('hardware', 'device')})"
    rows = [
        ("data", str(get("data", "dataset"))),
        ("family", str(get("space", "family"))),
        ("arch space", json.dumps(get("space", "arch"), separators=(", ", ": "))),
        ("w_bits / a_bits", f"{get('space', 'w_bits')} / {get('space', 'a_bits')}"),
        ("prune ratios", str(get("space", "prune_ratios"))),
        ("rank ratios", str(get("space", "rank_ratios") or [1.0])),
        ("quantizers", str(get("space", "quantizers") or ["uniform"])),
        *(
            [("sparsity", f"{get('space', 'sparsity')} ({get('space', 'sparsity_importance')})")]
            if (get("space", "sparsity") or [0.0]) != [0.0]
            else []
        ),
        ("hardware", hardware),
        ("budget", ", ".join(f"{k} {v:g}" for k, v in budget.items()) or "none"),
        (
            "search",
            f"{get('search', 'sampler')}, n_trials {get('search', 'n_trials')}, seed {get('seed')}",
        ),
        (
            "training",
            f"teacher {get('teacher', 'epochs')} epochs, candidates {get('train', 'epochs')} "
            f"epochs QAT, kd_alpha {get('train', 'kd_alpha')}",
        ),
    ]
    return rows


def _teacher_metrics(run_dir: Path) -> dict[str, Any] | None:
    path = RunDir(run_dir).teacher_dir / MODEL_SPEC_FILE
    if not path.is_file():
        return None
    try:
        return dict(json.loads(path.read_text()).get("metrics", {}))
    except (ValueError, AttributeError):
        return None  # a half-written or foreign spec: the header says "not found"


def _true(value: Any) -> bool:
    return not pd.isna(value) and bool(value)


_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:24px;
color:#1d1d1f;max-width:1400px}
h1{font-size:1.6em;margin-bottom:0}
h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}
h3{font-size:1.05em;margin:0 0 6px}
.meta{color:#666;margin-top:4px}
.cards{display:flex;gap:12px;flex-wrap:wrap;margin:16px 0}
.card{background:#f4f6fa;border:1px solid #dde3ee;border-radius:6px;padding:10px 14px;
min-width:220px}
.card b{display:block;font-size:.8em;color:#555;text-transform:uppercase;letter-spacing:.04em}
pre,code{font-family:ui-monospace,"DejaVu Sans Mono",monospace}
pre{background:#f4f4f4;padding:8px 12px;border-radius:4px;overflow-x:auto}
figure{margin:0 0 28px}figure img{max-width:100%;border:1px solid #eee}
figcaption{color:#555;font-size:.9em;margin-top:4px}
table{border-collapse:collapse;font-size:.85em}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
table.config th{background:#f4f6fa;font-weight:600}
table.trials th{background:#eef1f6;position:sticky;top:0}
table.trials td:nth-child(n+3){text-align:right;white-space:nowrap}
table.trials td:last-child{text-align:left;white-space:normal}
tr.front{background:#e3efff;font-weight:600}tr.failed{background:#fde8e8;color:#8a1f1f}
tr.infeasible,tr.skipped{color:#999}tr.stopped{color:#7a5a00}
.notice{background:#fff4d6;border:1px solid #e8c66a;border-radius:6px;padding:10px 14px}
"""
