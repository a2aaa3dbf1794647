"""Accuracy predictor: learn accuracy from completed trials, skip hopeless candidates untrained.

A candidate becomes a fixed-length feature vector that every architecture of a family shares
(:func:`candidate_features`):

* architecture knobs, flattened: a number stays a number, a list of numbers becomes its length,
  mean, min, max, first and last, a list of dicts (MobileNetV2 stages) is indexed by position;
* per-layer ``w_bits``/``a_bits``/``prune_ratio`` aggregated by position, since layer names and
  counts differ between architectures: mean, min, max, first and last layer, and the mean over
  the first, middle and last third of the network's depth; the fraction of layers pruned;
* size: the float architecture's weights and MACs (traced once per architecture with
  ``hardware_profiles.graph.layer_costs``), their bit-weighted means (params-weighted
  ``w_bits``, MAC-weighted ``a_bits``) and the log of the kept weight bits and bit-ops.

The regressor is a scikit-learn random forest (fixed ``random_state``; scikit-learn is imported
only when fitting). The spread of its trees' predictions is a cheap uncertainty, and
``mean + kappa * std`` an optimistic bound for :meth:`AccuracyPredictor.prescreen`: a sampled
candidate is skipped only when a point of the current front is at least as accurate as that
bound at no higher cost.

Nothing is ever pickled: a resumed search refits the predictor from its completed trials
(seconds for hundreds of trials).
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

from ..spaces import Candidate, build_model
from ..spaces.candidate import SPATIAL, UNIFORM, sparsity_fraction

__all__ = ["AccuracyPredictor", "Prediction", "candidate_features"]

_STATS = ("mean", "min", "max", "first", "last")
_THIRDS = 3


def candidate_features(
    candidate: Candidate, *, num_classes: int, input_shape: tuple[int, ...]
) -> dict[str, float]:
    """The predictor's named features of ``candidate`` (see the module docstring).

    ``num_classes``/``input_shape`` are needed to trace the architecture's layers (their order
    and sizes); the trace is cached per architecture.
    """
    features = dict(_flatten("arch", candidate.arch))
    names, params, macs = _architecture_layers(
        candidate.family,
        json.dumps(candidate.to_dict()["arch"], sort_keys=True),
        int(num_classes),
        tuple(int(d) for d in input_shape),
    )
    choices = [candidate.layers.get(name) for name in names]
    w_bits = np.array([32.0 if c is None else c.w_bits for c in choices])
    a_bits = np.array([32.0 if c is None else c.a_bits for c in choices])
    prune = np.array([0.0 if c is None else c.prune_ratio for c in choices])
    features["layers.count"] = float(len(names))
    for label, values in (("w_bits", w_bits), ("a_bits", a_bits), ("prune", prune)):
        features.update(_aggregate(f"layers.{label}", values))
        features.update(_by_depth(f"layers.{label}", values))
    features["layers.prune.fraction_pruned"] = float(np.mean(prune > 0)) if len(prune) else 0.0
    # As the cut (1 - rank ratio), and only for factorizing candidates: the 0 that a candidate
    # without the features gets is then exact, and spaces without ranks keep their features.
    rank_cut = np.array([0.0 if c is None else 1.0 - c.rank_ratio for c in choices])
    if rank_cut.any():
        features.update(_aggregate("layers.rank_cut", rank_cut))
        features.update(_by_depth("layers.rank_cut", rank_cut))
    # The same for the other per-layer techniques: zero weights, the share of layers split
    # spatially, and of layers on each non-uniform weight quantizer.
    sparse = np.array([0.0 if c is None else sparsity_fraction(c.sparsity) for c in choices])
    if sparse.any():
        features.update(_aggregate("layers.sparsity", sparse))
        features.update(_by_depth("layers.sparsity", sparse))
    spatial = [c is not None and c.rank_ratio < 1 and c.factorization == SPATIAL for c in choices]
    if any(spatial):
        features["layers.spatial.fraction"] = float(np.mean(spatial))
    quantizers = [UNIFORM if c is None else c.quantizer for c in choices]
    for kind in sorted(set(quantizers) - {UNIFORM}):
        features[f"layers.quantizer.{kind}"] = float(np.mean([q == kind for q in quantizers]))

    params_arr, macs_arr = np.asarray(params, dtype=float), np.asarray(macs, dtype=float)
    keep = 1.0 - prune
    features["size.log2_params"] = math.log2(1.0 + params_arr.sum())
    features["size.log2_macs"] = math.log2(1.0 + macs_arr.sum())
    features["size.params_weighted_w_bits"] = _weighted_mean(w_bits, params_arr)
    features["size.macs_weighted_a_bits"] = _weighted_mean(a_bits, macs_arr)
    features["size.macs_weighted_w_bits"] = _weighted_mean(w_bits, macs_arr)
    features["size.params_weighted_prune"] = _weighted_mean(prune, params_arr)
    features["size.log2_weight_bits"] = math.log2(1.0 + float((params_arr * keep * w_bits).sum()))
    features["size.log2_bitops"] = math.log2(1.0 + float((macs_arr * keep * w_bits * a_bits).sum()))
    return features


class Prediction(NamedTuple):
    """Predicted accuracy per candidate and the spread (std) of the forest's trees."""

    mean: np.ndarray
    std: np.ndarray


class AccuracyPredictor:
    """Random-forest regression of validation accuracy on :func:`candidate_features`.

    ``fit(candidates, accuracies)`` (re)trains on completed trials; ``predict`` returns the
    mean prediction (and the trees' std with ``return_std=True``), clipped to ``value_range``
    (default [0, 1], an accuracy's; another task's score, higher is better, has its own);
    ``prescreen`` decides which sampled candidates are worth training. Deterministic for a
    given ``random_state``. Not thread-safe while fitting; predictions only read the forest.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        input_shape: tuple[int, ...],
        n_estimators: int = 200,
        min_samples_leaf: int = 1,
        random_state: int = 0,
        value_range: tuple[float, float] = (0.0, 1.0),
    ) -> None:
        for name, value in (
            ("num_classes", num_classes),
            ("n_estimators", n_estimators),
            ("min_samples_leaf", min_samples_leaf),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"The '{name}' parameter of AccuracyPredictor must be an int >= 1. "
                    f"Got {value!r} instead."
                )
        if isinstance(random_state, bool) or not isinstance(random_state, int):
            raise ValueError(
                "The 'random_state' parameter of AccuracyPredictor must be an int. "
                f"Got {random_state!r} instead."
            )
        self.num_classes = num_classes
        self.input_shape = tuple(input_shape)
        self.n_estimators = n_estimators
        self.min_samples_leaf = min_samples_leaf
        self.random_state = random_state
        low, high = (float(v) for v in value_range)
        if not low < high:
            raise ValueError(
                "The 'value_range' parameter of AccuracyPredictor must be (low, high) with low < "
                f"high. Got {value_range!r} instead."
            )
        self.value_range = (low, high)
        self.feature_names: list[str] = []
        self._forest: Any = None

    @property
    def is_fitted(self) -> bool:
        return self._forest is not None

    def features(
        self, candidates: Sequence[Candidate], extra: Sequence[Mapping[str, float]] | None = None
    ) -> np.ndarray:
        """The ``(n, len(feature_names))`` matrix of ``candidates`` (after ``fit``); a feature
        a candidate lacks (another family's knob) is 0."""
        self._check_fitted("features")
        return self._matrix(self._rows(candidates, extra))

    def fit(
        self,
        candidates: Sequence[Candidate],
        accuracies: Sequence[float],
        extra: Sequence[Mapping[str, float]] | None = None,
    ) -> AccuracyPredictor:
        """Train on completed trials. Returns ``self``. ``extra``: more named features per
        candidate (e.g. a measured zero-shot accuracy); ``predict`` must then get them too."""
        from sklearn.ensemble import RandomForestRegressor

        accuracies = np.asarray(accuracies, dtype=float)
        if len(candidates) != len(accuracies) or len(candidates) < 2:
            raise ValueError(
                "The 'candidates' and 'accuracies' parameters of AccuracyPredictor.fit must "
                f"have the same length, at least 2. Got {len(candidates)} candidates and "
                f"{len(accuracies)} accuracies instead."
            )
        low, high = self.value_range
        if not np.all(np.isfinite(accuracies)) or np.any((accuracies < low) | (accuracies > high)):
            raise ValueError(
                "The 'accuracies' parameter of AccuracyPredictor.fit must hold finite numbers in "
                f"[{low}, {high}]. Got {accuracies.tolist()!r} instead."
            )
        named = self._rows(candidates, extra)
        self.feature_names = sorted({key for row in named for key in row})
        forest = RandomForestRegressor(
            n_estimators=self.n_estimators,
            min_samples_leaf=self.min_samples_leaf,
            random_state=self.random_state,
            n_jobs=1,  # deterministic, and the search's trials already use the cores
        )
        forest.fit(self._matrix(named), accuracies)
        self._forest = forest
        return self

    def predict(
        self,
        candidates: Sequence[Candidate],
        *,
        return_std: bool = False,
        extra: Sequence[Mapping[str, float]] | None = None,
    ) -> np.ndarray | Prediction:
        """Predicted accuracy of each candidate; with ``return_std``, a :class:`Prediction`
        holding also the std of the trees' predictions (0 where they all agree)."""
        prediction = self._predict(candidates, method="predict", extra=extra)
        return prediction if return_std else prediction.mean

    def prescreen(
        self,
        candidates: Sequence[Candidate],
        costs: Sequence[Sequence[float]],
        front: Sequence[tuple[float, Sequence[float]]],
        *,
        kappa: float = 1.0,
    ) -> np.ndarray:
        """Boolean mask of the candidates worth training.

        ``costs[i]``: candidate ``i``'s hardware costs (known before training; every one
        minimised), ``front``: ``(accuracy, costs)`` of the current Pareto front, costs in the
        same order. Candidate ``i`` is skipped only when some front point has accuracy ``>=``
        its optimistic bound ``mean + kappa * std`` and every cost ``<=`` its own: even if it
        turned out as good as the predictor's optimistic guess, it would not enter the front.
        A candidate cheaper than every front point in some cost is always kept.
        """
        if len(costs) != len(candidates):
            raise ValueError(
                "The 'costs' parameter of AccuracyPredictor.prescreen must hold one cost tuple "
                f"per candidate ({len(candidates)}). Got {len(costs)} instead."
            )
        if isinstance(kappa, bool) or not isinstance(kappa, int | float) or not kappa >= 0:
            raise ValueError(
                "The 'kappa' parameter of AccuracyPredictor.prescreen must be a number >= 0. "
                f"Got {kappa!r} instead."
            )
        keep = np.ones(len(candidates), dtype=bool)
        if not front or not candidates:
            return keep
        prediction = self._predict(candidates, method="prescreen")
        optimistic = prediction.mean + kappa * prediction.std
        front_acc = np.array([acc for acc, _ in front], dtype=float)
        front_costs = np.array([list(c) for _, c in front], dtype=float)
        cand_costs = np.array([list(c) for c in costs], dtype=float)
        if (
            cand_costs.ndim != 2
            or front_costs.ndim != 2
            or (cand_costs.shape[1] != front_costs.shape[1])
        ):
            raise ValueError(
                "The 'costs' and 'front' parameters of AccuracyPredictor.prescreen must hold "
                "cost tuples of one common length. Got shapes "
                f"{cand_costs.shape} and {front_costs.shape} instead."
            )
        for i in range(len(candidates)):
            cheaper_or_equal = np.all(front_costs <= cand_costs[i], axis=1)
            keep[i] = not np.any(cheaper_or_equal & (front_acc >= optimistic[i]))
        return keep

    def _predict(
        self,
        candidates: Sequence[Candidate],
        *,
        method: str,
        extra: Sequence[Mapping[str, float]] | None = None,
    ) -> Prediction:
        self._check_fitted(method)
        if len(candidates) == 0:
            return Prediction(mean=np.zeros(0), std=np.zeros(0))
        x = self.features(candidates, extra)
        per_tree = np.stack([tree.predict(x) for tree in self._forest.estimators_])
        # The trees' spread is the uncertainty; the mean is what the forest itself predicts.
        mean = np.clip(per_tree.mean(axis=0), *self.value_range)
        return Prediction(mean=mean, std=per_tree.std(axis=0))

    def _rows(
        self, candidates: Sequence[Candidate], extra: Sequence[Mapping[str, float]] | None
    ) -> list[dict[str, float]]:
        named = [self._named(c) for c in candidates]
        if extra is None:
            return named
        if len(extra) != len(named):
            raise ValueError(
                "The 'extra' parameter of AccuracyPredictor must hold one mapping of features "
                f"per candidate ({len(named)}). Got {len(extra)} instead."
            )
        return [
            {**row, **{f"extra.{k}": float(v) for k, v in e.items()}}
            for row, e in zip(named, extra, strict=True)
        ]

    def _named(self, candidate: Candidate) -> dict[str, float]:
        return candidate_features(
            candidate, num_classes=self.num_classes, input_shape=self.input_shape
        )

    def _matrix(self, named: Sequence[Mapping[str, float]]) -> np.ndarray:
        return np.array(
            [[row.get(key, 0.0) for key in self.feature_names] for row in named], dtype=float
        ).reshape(len(named), len(self.feature_names))

    def _check_fitted(self, method: str) -> None:
        if self._forest is None:
            raise RuntimeError(
                f"AccuracyPredictor.{method} needs a fitted predictor: call fit(candidates, "
                "accuracies) on completed trials first."
            )


# --- features ----------------------------------------------------------------------------------


def _flatten(prefix: str, value: Any) -> list[tuple[str, float]]:
    if isinstance(value, bool):
        return [(prefix, float(value))]
    if isinstance(value, int | float):
        return [(prefix, float(value))]
    if isinstance(value, Mapping):
        return [item for k in sorted(value) for item in _flatten(f"{prefix}.{k}", value[k])]
    if isinstance(value, list | tuple):
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
            out = [(f"{prefix}.len", float(len(value)))]
            return out + list(_aggregate(prefix, np.asarray(value, dtype=float)).items())
        out = [(f"{prefix}.len", float(len(value)))]
        for i, item in enumerate(value):
            out += _flatten(f"{prefix}.{i}", item)
        return out
    return []  # strings and other non-numeric knobs carry no ordinal information


def _aggregate(prefix: str, values: np.ndarray) -> dict[str, float]:
    if len(values) == 0:
        return {f"{prefix}.{stat}": 0.0 for stat in _STATS}
    return {
        f"{prefix}.mean": float(values.mean()),
        f"{prefix}.min": float(values.min()),
        f"{prefix}.max": float(values.max()),
        f"{prefix}.first": float(values[0]),
        f"{prefix}.last": float(values[-1]),
    }


def _by_depth(prefix: str, values: np.ndarray) -> dict[str, float]:
    """Mean over each third of the depth (layer i of n falls in third floor(3 i / n)), so
    networks of different depths line up; a third with no layer takes the overall mean."""
    n = len(values)
    overall = float(values.mean()) if n else 0.0
    out = {}
    for third in range(_THIRDS):
        members = [values[i] for i in range(n) if (_THIRDS * i) // n == third]
        out[f"{prefix}.third{third}"] = float(np.mean(members)) if members else overall
    return out


def _weighted_mean(values: np.ndarray, weights: np.ndarray) -> float:
    total = float(weights.sum())
    return float((values * weights).sum() / total) if total > 0 else 0.0


@functools.lru_cache(maxsize=4096)
def _architecture_layers(
    family: str, arch_json: str, num_classes: int, input_shape: tuple[int, ...]
) -> tuple[tuple[str, ...], tuple[int, ...], tuple[int, ...]]:
    """(layer names in execution order, weight params, MACs) of the float architecture.

    Execution order, not the candidate's dict order: a candidate read back from JSON has its
    layers sorted by name ("classifier" first).
    """
    from ..hardware_profiles.graph import layer_costs

    candidate = Candidate(family=family, arch=json.loads(arch_json))
    # Building draws an initialisation from torch's global RNG; the values are never used.
    with torch.random.fork_rng(devices=[]):
        model = build_model(candidate, num_classes=num_classes, input_shape=input_shape)
    seen: dict[str, tuple[int, int]] = {}
    for cost in layer_costs(model, input_shape=input_shape):
        seen.setdefault(cost.name, (cost.weight_params, cost.macs))
    names = tuple(seen)
    return names, tuple(p for p, _ in seen.values()), tuple(m for _, m in seen.values())
