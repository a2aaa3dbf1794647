"""Model-based proposals (``search.surrogate``): train next the candidate that should grow the
front the most.

A candidate's hardware costs are known before training (pricing is cheap); only its accuracy is
not. After ``min_trials`` completed trials, each finished trial triggers a proposal: predict the
accuracy of a pool of ``pool_size`` untried, priced candidates with an
:class:`~autocompress.evaluators.accuracy_predictor.AccuracyPredictor` fitted on the completed
trials, and queue (``study.enqueue_trial``) the one whose optimistic point (accuracy
``mean + kappa * std``, exact costs) adds the most hypervolume to the current front. The pool
persists across proposals: each one draws ``refresh`` new candidates at random from the space,
and the tried and the oldest make room for them. Pricing and the zero-shot proxy cost as much
as a short fine-tune per candidate on small data, so re-drawing a whole pool for every trial
would cost several trials' worth.
The sampler still draws the trials nobody queued (the first ``min_trials``; any trial when no
pool candidate would add volume), so the search keeps exploring.

Trials running at once (``search.n_jobs`` threads, workers, Ray) are pending results: a
constant liar. Each RUNNING trial counts, while proposals are ranked, as if it had already
reached its optimistic point (the one it would be ranked by as a pool candidate) at its exact
costs. A candidate identical to a running one is never proposed, and one close to it in the
objective space (similar costs, no better hopes) gains little or nothing, so concurrent
proposals spread over the front instead of all taking the same best guess. The lie is the
optimistic point, not a pessimistic one: a worst-accuracy lie is dominated, adds nothing to the
front and would change no ranking. Without running trials (one process, one thread) the
ranking is exactly the sequential one.

Everything goes through Optuna's public API: a queued trial is an ordinary trial with fixed
parameters, so resumes, workers sharing a study and the trial accounting are unchanged.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from ..config import SurrogateConfig
from ..core.objectives import Objective as ObjectiveSpec
from ..core.pareto import hypervolume, non_dominated_mask, reference_from_values
from ..evaluators.accuracy_predictor import AccuracyPredictor
from ..spaces import Candidate, JointSearchSpace
from .prescreen import ACCURACY, trained_trials

PROPOSED_ATTR = "proposed"  # user attribute of a queued trial: its optimistic accuracy and gain


def _key(candidate: Candidate) -> str:
    return json.dumps(candidate.to_dict(), sort_keys=True)


class Proposer:
    """``study.optimize`` callback that queues the next candidate (thread-safe).

    ``price(candidate) -> (metrics, feasible)``: the run's hardware pricing (the Objective's).
    ``budget_left(trials)``: whether another trial will run (a queued trial that never runs
    would sit in the study as WAITING). ``proxy(candidate)``: a cheap estimate of the score measured
    without training (e.g. the teacher's inherited weights after BatchNorm recalibration), fed to
    the predictor as one more feature; cached per candidate.
    """

    def __init__(
        self,
        config: SurrogateConfig,
        *,
        space: JointSearchSpace,
        objectives: Sequence[ObjectiveSpec],
        price: Callable[[Candidate], tuple[dict[str, float], bool]],
        budget_left: Callable[[Sequence[FrozenTrial]], bool] = lambda trials: True,
        proxy: Callable[[Candidate], float] | None = None,
        seed: int = 0,
        score: ObjectiveSpec = ACCURACY,
        score_range: tuple[float, float] = (0.0, 1.0),
    ) -> None:
        self.config = config
        self.score = score  # the task's primary metric: what the predictor learns
        self.score_range = score_range  # the values it can take: predictions are clipped to it
        self.space = space
        self.objectives = list(objectives)
        self.directions = [o.direction for o in self.objectives]
        self.names = [o.name for o in self.objectives]
        self.price = price
        self.budget_left = budget_left
        self.proxy = proxy
        self._proxies: dict[str, float] = {}
        self.predictor = AccuracyPredictor(
            num_classes=space.num_classes,
            input_shape=space.input_shape,
            n_estimators=100,
            random_state=seed,
            value_range=score.maximised_bounds(score_range),
        )
        self._pool_study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
        self._prices: dict[str, tuple[dict[str, float], bool]] = {}
        self._kept: list[tuple[Candidate, dict[str, Any], dict[str, float]]] = []  # oldest first
        self._lock = threading.Lock()

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        # The whole proposal, enqueue included, holds the lock: a thread that saw no WAITING
        # trial must not rank the same pool before the previous proposal is in the study.
        with self._lock:
            trials = study.get_trials(deepcopy=False)
            if any(t.state == TrialState.WAITING for t in trials) or not self.budget_left(trials):
                return  # a proposal is still queued, or no trial will run to take one
            completed = trained_trials(trials)
            if len(completed) < self.config.min_trials:
                return
            running = [t for t in trials if t.state == TrialState.RUNNING]
            pending = [c for c in map(self._candidate_of, running) if c is not None]
            tried = {_candidate_key(t) for t in trials} | {_key(c) for c in pending}
            proposal = self._propose(completed, pending=pending, tried=tried)
            if proposal is not None:
                params, attrs = proposal
                # Another process may have queued the same candidate meanwhile (workers, each
                # with its own proposer): one copy is enough.
                study.enqueue_trial(params, user_attrs={PROPOSED_ATTR: attrs}, skip_if_exists=True)

    def _candidate_of(self, trial: FrozenTrial) -> Candidate | None:
        """A trial's candidate: recorded when it was priced, or, for a queued trial taken but
        not priced yet, rebuilt from its fixed parameters (else a proposal that has just left
        the queue would look untried). None for a sampler's draw still being suggested."""
        recorded = trial.user_attrs.get("candidate")
        if recorded is not None:
            return Candidate.from_dict(recorded)
        fixed = trial.system_attrs.get("fixed_params")
        if fixed is None:
            return None
        try:
            return self.space.suggest(optuna.trial.FixedTrial(fixed))
        except ValueError:  # parameters missing: the sampler draws them, nothing to go by
            return None

    def _propose(
        self, completed: list[FrozenTrial], *, pending: Sequence[Candidate], tried: set[str]
    ) -> tuple[dict[str, Any], dict[str, float]] | None:
        """The pool candidate whose optimistic point adds the most hypervolume to the front
        of ``completed`` and of the ``pending`` (running) candidates' optimistic points."""
        score_at = self.names.index(self.score.name)
        done = [Candidate.from_dict(t.user_attrs["candidate"]) for t in completed]
        scores = [self.score.maximised(t.values[score_at]) for t in completed]
        self.predictor.fit(done, scores, extra=self._extra(done))
        pool = self._pool(tried)
        if not pool:
            return None
        lies = []  # the running candidates' points, believed reached
        for candidate in pending:
            metrics, feasible = self._price(candidate)
            if feasible:  # one over budget is not trained: it claims no part of the front
                lies.append((candidate, {}, metrics))
        candidates = [c for c, _, _ in pool + lies]
        prediction = self.predictor.predict(
            candidates, return_std=True, extra=self._extra(candidates)
        )
        optimistic = self.score.maximised(prediction.mean + self.config.kappa * prediction.std)
        optimistic = np.clip(optimistic, *self.score_range)
        values = np.array([list(t.values) for t in completed], dtype=float)
        points = np.array(
            [
                [optimistic[i] if name == self.score.name else metrics[name] for name in self.names]
                for i, (_, _, metrics) in enumerate(pool + lies)
            ],
            dtype=float,
        )
        rows = points[: len(pool)]
        believed = np.vstack([values, points[len(pool) :]])
        reference = reference_from_values(np.vstack([believed, rows]), self.objectives)
        front = believed[non_dominated_mask(believed, self.directions)]
        base = hypervolume(front, self.directions, reference)
        gains = [
            hypervolume(np.vstack([front, row]), self.directions, reference) - base for row in rows
        ]
        best = int(np.argmax(gains))
        if gains[best] <= 0:
            return None
        _, params, _ = pool[best]
        attrs = {
            f"predicted_{self.score.name}": float(self.score.maximised(prediction.mean[best])),
            "predicted_std": float(prediction.std[best]),
            "hypervolume_gain": float(gains[best] / base) if base > 0 else float("inf"),
        }
        return params, attrs

    def _extra(self, candidates: Sequence[Candidate]) -> list[dict[str, float]] | None:
        if self.proxy is None:
            return None
        for candidate in candidates:
            key = _key(candidate)
            if key not in self._proxies:
                self._proxies[key] = float(self.proxy(candidate))
        return [{"proxy_score": self._proxies[_key(c)]} for c in candidates]

    def _pool(self, tried: set[str]) -> list[tuple[Candidate, dict[str, Any], dict[str, float]]]:
        """Up to ``pool_size`` distinct, untried, within-budget candidates: the last pool's
        untried ones, but the oldest where ``refresh`` new random draws need room."""
        size = self.config.pool_size
        kept = [entry for entry in self._kept if _key(entry[0]) not in tried]
        kept = kept[max(0, len(kept) - max(0, size - self.config.refresh)) :]
        self._kept = kept + self._draw(size - len(kept), seen=tried | {_key(c) for c, _, _ in kept})
        return list(self._kept)

    def _draw(
        self, count: int, *, seen: set[str]
    ) -> list[tuple[Candidate, dict[str, Any], dict[str, float]]]:
        """Up to ``count`` distinct, within-budget candidates drawn at random, none in ``seen``."""
        pool, seen = [], set(seen)
        for _ in range(4 * count):  # duplicates and over-budget draws are dropped
            if len(pool) >= count:
                break
            trial = self._pool_study.ask()
            candidate = self.space.suggest(trial)
            self._pool_study.tell(trial, state=TrialState.FAIL)  # only a draw; keep no state
            key = _key(candidate)
            if key in seen:
                continue
            seen.add(key)
            metrics, feasible = self._price(candidate)
            if feasible:
                pool.append((candidate, dict(trial.params), metrics))
        return pool

    def _price(self, candidate: Candidate) -> tuple[dict[str, float], bool]:
        key = _key(candidate)  # cached: a candidate's price never changes
        if key not in self._prices:
            self._prices[key] = self.price(candidate)
        return self._prices[key]


def _candidate_key(trial: FrozenTrial) -> str:
    candidate = trial.user_attrs.get("candidate")
    return "" if candidate is None else json.dumps(candidate, sort_keys=True)
