"""Refit: train a finished run's Pareto front again with a longer fine-tune, as a run of its own.

The two-stage workflow (``benchmarks/search_efficiency.py``): search with a short fine-tune
(``train.epochs: 1`` ranks candidates almost as well as a long one, at a fraction of the cost),
then fine-tune only the front in full. A refit is an ordinary run folder (``RUN-refit`` by
default): the source run's config with ``train.epochs`` set to the refit's, its front's
candidates queued as trials (``study.enqueue_trial``, so each is trained exactly as a search with
that many epochs would train it: from the teacher, QAT + distillation, one cosine schedule) and
every efficiency feature off, so all of them are trained to the end. ``pareto``, ``export`` and
``report`` work on it unchanged, and re-running the same refit resumes it.

Besides the usual files it holds ``refit.csv``: per refit trial, the source trial, its accuracy in
the search and its accuracy after the refit.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from ..config import RunConfig, load_config, parse_config
from ..core.errors import ConfigError
from ..core.pareto import greedy_hypervolume_order, nadir_reference, pareto_front, to_loss
from ..core.rundir import RunDir
from ..core.trials import RETRY_ATTR, retried_trials, trials_dataframe
from ..report.tables import rank_agreement
from .driver import run_search
from .results import SearchResult
from .storage import make_storage
from .study import open_study

__all__ = [
    "REFIT_ATTR",
    "RefitResult",
    "refit_config",
    "refit_order",
    "refit_run",
]

REFIT_ATTR = "refit_of"  # user attribute of a refit trial: the source run's trial number
SOURCE_ATTR = "refit_source"  # study user attribute: the source run and the trials refit


@dataclass(frozen=True)
class RefitResult:
    """``table``: one row per refit trial (see :func:`refit_table`); ``tau``: its
    ``report.rank_agreement``."""

    run_dir: Path
    source: Path
    search: SearchResult
    table: pd.DataFrame
    tau: float


def refit_config(
    config: RunConfig, *, name: str, epochs: int, n_trials: int, n_jobs: int | None = None
) -> RunConfig:
    """The source run's ``config`` turned into its refit's: ``train.epochs = epochs``, trials in
    this process, in the refit folder's own study, each trained to the end and saved."""
    data = config.model_dump(mode="json")
    data["name"] = name
    data["train"]["epochs"] = epochs
    search = data["search"]
    search.update(n_trials=n_trials, timeout_s=None, save_models=True, backend="optuna")
    search["storage"] = None
    if n_jobs is not None:
        search["n_jobs"] = n_jobs
    for feature in ("early_stopping", "prescreen", "surrogate"):
        search[feature]["enabled"] = False
    return parse_config(data, source=f"refit of run {config.name!r}")


def _source_study(run_dir: Path, config: RunConfig) -> optuna.Study:
    run = RunDir(run_dir)
    if config.search.storage is None and not run.study_file.is_file():
        raise FileNotFoundError(
            f"{str(run_dir)!r} is not a run folder: {run.study_file.name} is missing "
            "(run `autocompress search CONFIG` first)."
        )
    storage = make_storage(config.search.storage or run.study_url)
    try:
        return optuna.load_study(study_name=config.name, storage=storage)
    except KeyError:
        raise FileNotFoundError(
            f"The storage of {str(run_dir)!r} holds no study named {config.name!r}."
        ) from None


def _select(
    study: optuna.Study,
    config: RunConfig,
    run_dir: Path,
    numbers: Sequence[int] | None,
    *,
    slack: float = 0.0,
    budget: int | None = None,
) -> list[FrozenTrial]:
    """The source trials to refit: ``numbers`` (in that order), or the run's front and the trials
    within ``slack`` (of the primary metric, e.g. accuracy) of it in :func:`refit_order` of their
    search values (the first ``budget`` of them when given)."""
    frame = trials_dataframe(study)
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    explicit = numbers is not None
    if numbers is None:
        primary = config.make_task().primary
        near = pareto_front(frame, config.objectives(), slack={primary: slack})
        numbers = [int(n) for n in near["number"]]
        if not numbers:
            raise ValueError(f"Run {str(run_dir)!r} has no Pareto front yet: nothing to refit.")
    chosen = []
    for number in dict.fromkeys(numbers):  # drop repeats, keep the order
        trial = by_number.get(number)
        if trial is None:
            raise ValueError(f"Run {str(run_dir)!r} has no trial {number}.")
        usable = trial.state == TrialState.COMPLETE and trial.user_attrs.get("feasible", False)
        if not usable or "candidate" not in trial.user_attrs:
            raise ValueError(
                f"Trial {number} of {str(run_dir)!r} cannot be refit: it is {trial.state.name}"
                + ("" if trial.state != TrialState.COMPLETE else " but over the hardware budget")
                + ". `autocompress pareto RUN` lists the trials on the front."
            )
        chosen.append(trial)
    if explicit:
        return chosen
    values = np.array([t.values for t in chosen], dtype=float)
    order = refit_order(values, [o.direction for o in config.objectives()])
    return [chosen[i] for i in order][:budget]


def refit_order(values: np.ndarray, directions: Sequence[str]) -> list[int]:
    """The order in which a refit trains the rows of ``values`` (search values of the selected
    trials): the best row of each objective first, in objective order (the front's ends, which
    NSGA-II's crowding distance keeps too: with accuracy first, the most accurate point survives
    any budget), then greedy hypervolume order
    (:func:`~autocompress.core.pareto.greedy_hypervolume_order`), so a budget keeps the points
    that shape the front and an interrupted refit has refit those. The box is the selection's
    own (``nadir_reference``): against accuracy 0 the cheapest points would outweigh the
    accurate ones."""
    loss = to_loss(values, directions, func="refit_order")
    extremes = [int(np.argmin(loss[:, j])) for j in range(loss.shape[1])]
    reference = nadir_reference(values, directions)
    return greedy_hypervolume_order(values, directions, reference, start=extremes)


def _queue(
    study: optuna.Study, chosen: list[FrozenTrial], *, score: str, score_at: int, source: Path
) -> None:
    """Queue the chosen trials on a new refit study; on an existing one, check it refits the
    same trials (it then resumes)."""
    wanted = {"run": str(source.resolve()), "trials": [t.number for t in chosen]}
    if study.get_trials(deepcopy=False):
        held = study.user_attrs.get(SOURCE_ATTR) or {}
        # The same trials in another order are the same refit (the order is only the queue's).
        if held.get("run") != wanted["run"] or sorted(held.get("trials", [])) != sorted(
            wanted["trials"]
        ):
            raise ConfigError(
                f"The refit folder holds a refit of trials {held.get('trials')} of "
                f"{held.get('run')!r}, not of trials {wanted['trials']} of {wanted['run']!r}: "
                "choose another --out or delete it."
            )
        return
    study.set_user_attr(SOURCE_ATTR, wanted)
    for trial in chosen:
        attrs = {REFIT_ATTR: trial.number, f"search_{score}": trial.values[score_at]}
        study.enqueue_trial(trial.params, user_attrs=attrs)


def _origin(trial: FrozenTrial, by_number: dict[int, FrozenTrial]) -> FrozenTrial:
    """The queued refit trial that ``trial`` is (or retries, after an interruption)."""
    while REFIT_ATTR not in trial.user_attrs and RETRY_ATTR in trial.user_attrs:
        trial = by_number[trial.user_attrs[RETRY_ATTR]]
    return trial


def refit_table(study: optuna.Study, config: RunConfig) -> pd.DataFrame:
    """One row per refit trial that is not superseded by its retry: ``trial``, ``refit_of``,
    ``search_<primary metric>`` (e.g. ``search_accuracy``), the objectives after the refit,
    ``state`` and ``on_front``."""
    searched = f"search_{config.make_task().primary}"
    frame = trials_dataframe(study).set_index("number", drop=False)
    trials = study.get_trials(deepcopy=False)
    by_number = {t.number: t for t in trials}
    retried = retried_trials(trials)
    front = set(pareto_front(frame.reset_index(drop=True), config.objectives())["number"])
    names = [o.name for o in config.objectives()]
    rows = []
    for trial in trials:
        origin = _origin(trial, by_number)
        if trial.number in retried or REFIT_ATTR not in origin.user_attrs:
            continue
        row = frame.loc[trial.number]
        rows.append(
            {
                "trial": trial.number,
                "refit_of": origin.user_attrs[REFIT_ATTR],
                searched: origin.user_attrs.get(searched, math.nan),
                **{name: row[name] for name in names},
                "state": trial.state.name,
                "on_front": trial.number in front,
            }
        )
    columns = ["trial", "refit_of", searched, *names, "state", "on_front"]
    return pd.DataFrame(rows, columns=columns)


def refit_run(
    run_dir: Path,
    *,
    epochs: int,
    out: Path | None = None,
    trials: Sequence[int] | None = None,
    slack: float = 0.0,
    budget: int | None = None,
    n_jobs: int | None = None,
    on_trial: Callable[[optuna.Study, FrozenTrial, int], None] | None = None,
) -> RefitResult:
    """Fine-tune the front of ``run_dir`` for ``epochs`` epochs each, as the run ``out``
    (default: ``RUN-refit`` beside it); resumes an interrupted refit.

    ``slack``: also refit the trials that would be on the front were they that much more
    accurate (a fraction, e.g. 0.02): the search's short fine-tunes rank candidates with some
    noise, so a point just behind the short front may lead the refit one. ``trials``: refit
    exactly these trial numbers instead. ``budget``: refit at most this many of the front (and
    slack) trials: those that together span the most hypervolume by their search values (greedy:
    each next one adds the most). Without it the whole selection is refit, in that order."""
    run_dir = Path(run_dir)
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"The 'epochs' parameter of refit_run must be an int >= 1. Got {epochs!r}")
    if not (isinstance(slack, int | float) and math.isfinite(slack) and 0 <= slack <= 1):
        raise ValueError(f"The 'slack' parameter of refit_run must be in [0, 1]. Got {slack!r}")
    if trials is not None and slack:
        raise ValueError("Give the trials to refit or a slack around the front, not both.")
    if budget is not None and (
        isinstance(budget, bool) or not isinstance(budget, int) or budget < 1
    ):
        raise ValueError(f"The 'budget' parameter of refit_run must be an int >= 1. Got {budget!r}")
    if trials is not None and budget is not None:
        raise ValueError("Give the trials to refit or a budget, not both.")
    source, refit = RunDir(run_dir), RunDir(out) if out is not None else None
    source_config = load_config(source.config_file)
    score = source_config.score_objective()
    if score is None:
        primary = source_config.make_task().primary
        raise ValueError(f"Run {str(run_dir)!r} has no {primary} objective: nothing to refit.")
    refit = refit or RunDir(run_dir.parent / f"{run_dir.name}-refit")
    out = refit.path
    if out.resolve() == run_dir.resolve():
        raise ValueError("A refit needs its own folder: --out must differ from RUN.")
    source_study = _source_study(run_dir, source_config)
    chosen = _select(source_study, source_config, run_dir, trials, slack=slack, budget=budget)
    config = refit_config(
        source_config, name=out.name, epochs=epochs, n_trials=len(chosen), n_jobs=n_jobs
    )
    if refit.config_file.is_file():
        held = load_config(refit.config_file)
        if held.fingerprint() != config.fingerprint():
            raise ConfigError(
                f"{str(out)!r} holds a run made with another config (train.epochs "
                f"{held.train.epochs}, asked {epochs}): choose another --out or delete it."
            )
    # The teacher depends on neither train.epochs nor the run name: reuse the trained one.
    if source.teacher_dir.is_dir() and not refit.teacher_dir.exists():
        shutil.copytree(source.teacher_dir, refit.teacher_dir)
    out.mkdir(parents=True, exist_ok=True)
    study, _ = open_study(config, out, where=f"The refit folder {out}")
    score_at = [o.name for o in source_config.objectives()].index(score.name)
    _queue(study, chosen, score=score.name, score_at=score_at, source=run_dir)

    result = run_search(config, runs_dir=out.parent, on_trial=on_trial)
    table = refit_table(result.study, config)
    table.to_csv(refit.refit_table, index=False)
    tau = rank_agreement(table)
    return RefitResult(run_dir=out, source=run_dir, search=result, table=table, tau=tau)
