"""Pre-screening (``search.prescreen``): skip, untrained, candidates predicted not to matter.

After pricing, a sampled candidate's hardware costs are known but its accuracy is not. An
:class:`~autocompress.evaluators.accuracy_predictor.AccuracyPredictor` fitted on the study's
completed trials gives an optimistic bound on it (mean + kappa x std of its trees); when a
completed trial is at least that accurate at no higher cost in every hardware objective, the
candidate could not enter the front even if it did as well as hoped, so it is not trained. The
trial is recorded as PRUNED with the prediction and the trial that beats it; it does not count
towards ``search.n_trials``.

The predictor is refitted from the study every ``refit_every`` new completed trials (nothing is
pickled: a resumed or a second process refits it from the storage). ``max_consecutive_skips``
bounds a run of skips, so a predictor that is wrong everywhere cannot stall the search.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from ..config import PrescreenConfig
from ..core.objectives import MAXIMIZE
from ..core.objectives import Objective as ObjectiveSpec
from ..evaluators.accuracy_predictor import AccuracyPredictor
from ..spaces import Candidate

SKIPPED_ATTR = "skipped"  # user attribute of a skipped trial: the reason, as text


ACCURACY = ObjectiveSpec("accuracy", MAXIMIZE)


def cost_vector(
    values: dict[str, float], objectives: Sequence[ObjectiveSpec], *, score: str = "accuracy"
) -> dict[str, float]:
    """The hardware objectives of a trial as costs to minimise (a maximised one is negated),
    by name; ``score``, the task's primary metric, is not a cost."""
    return {
        o.name: (-values[o.name] if o.direction == MAXIMIZE else values[o.name])
        for o in objectives
        if o.name != score
    }


def trained_trials(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """The completed trials that were trained: what an accuracy predictor learns from."""
    return [
        t
        for t in trials
        if t.state == TrialState.COMPLETE and t.user_attrs.get("trained") and t.values
    ]


class Prescreener:
    """Decides, for a priced candidate, whether to skip it (thread-safe)."""

    def __init__(
        self,
        config: PrescreenConfig,
        *,
        objectives: Sequence[ObjectiveSpec],
        num_classes: int,
        input_shape: tuple[int, ...],
        seed: int = 0,
        score: ObjectiveSpec = ACCURACY,
        score_range: tuple[float, float] = (0.0, 1.0),
    ) -> None:
        self.config = config
        self.objectives = list(objectives)
        self.score = score  # the task's primary metric: what the predictor learns
        self.cost_names = [o.name for o in self.objectives if o.name != score.name]
        self._score_index = [o.name for o in self.objectives].index(score.name)
        self.predictor = AccuracyPredictor(
            num_classes=num_classes,
            input_shape=input_shape,
            n_estimators=100,
            random_state=seed,
            value_range=score.maximised_bounds(score_range),
        )
        self._fitted_on = 0
        self._lock = threading.Lock()

    def skip_reason(
        self, study: optuna.Study, candidate: Candidate, costs: dict[str, float]
    ) -> str | None:
        """Why to skip ``candidate`` (hardware ``costs`` as from :func:`cost_vector`), or None
        to train it."""
        trials = study.get_trials(deepcopy=False)
        completed = trained_trials(trials)
        if len(completed) < self.config.min_trials or self._skip_streak(trials) >= (
            self.config.max_consecutive_skips
        ):
            return None
        with self._lock:
            if not self.predictor.is_fitted or (
                len(completed) - self._fitted_on >= self.config.refit_every
            ):
                self.predictor.fit(
                    [Candidate.from_dict(t.user_attrs["candidate"]) for t in completed],
                    [self.score.maximised(t.values[self._score_index]) for t in completed],
                )
                self._fitted_on = len(completed)
            prediction = self.predictor.predict([candidate], return_std=True)
        mean, std = float(prediction.mean[0]), float(prediction.std[0])
        optimistic = mean + self.config.kappa * std
        mine = [costs[name] for name in self.cost_names]
        for t in completed:
            value = t.values[self._score_index]
            theirs = cost_vector(
                dict(zip([o.name for o in self.objectives], t.values, strict=True)),
                self.objectives,
                score=self.score.name,
            )
            if self.score.maximised(value) >= optimistic and all(
                theirs[name] <= own for name, own in zip(self.cost_names, mine, strict=True)
            ):
                return (
                    f"predicted {self.score.name} {self.score.maximised(mean):.4f} +- {std:.4f}; "
                    f"trial {t.number} reached {value:.4f} at no higher "
                    f"{'/'.join(self.cost_names)}"
                )
        return None

    @staticmethod
    def _skip_streak(trials: Sequence[FrozenTrial]) -> int:
        """Skipped trials since the last finished trial that was not skipped."""
        streak = 0
        for t in sorted(trials, key=lambda t: t.number, reverse=True):
            if not t.state.is_finished():
                continue
            if SKIPPED_ATTR not in t.user_attrs:
                break
            streak += 1
        return streak
