"""Points of a search space without a search: every candidate (small spaces), random ones, and
the smallest architecture of a family (benchmarks, LUT building, supernet training, tests)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..core.validation import check_int
from ._registry import ModelFamily
from .candidate import Candidate

__all__ = [
    "ChoiceTrial",
    "enumerate_candidates",
    "sample_arch",
    "sample_candidates",
    "smallest_arch",
]


class ChoiceTrial:
    """Stands in for ``optuna.Trial`` in ``suggest``/``suggest_arch``: each categorical choice is
    made by ``pick(choices)``. Enough for every built-in family (they only call
    ``suggest_categorical``); anything else is reported by name instead of failing obscurely."""

    def __init__(self, pick: Callable[[Sequence[Any]], Any]) -> None:
        self._pick = pick
        self.params: dict[str, Any] = {}

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        value = self._pick(list(choices))
        self.params[name] = value
        return value

    def __getattr__(self, attr: str) -> Any:
        raise AttributeError(
            f"Sampling a space outside Optuna supports only suggest_categorical; the family or "
            f"space called {attr!r}."
        )


def sample_arch(family: ModelFamily, *, rng: np.random.Generator) -> dict[str, Any]:
    """A uniformly random architecture of ``family`` (every knob drawn independently)."""
    return family.suggest_arch(
        ChoiceTrial(lambda choices: choices[int(rng.integers(len(choices)))])
    )


def smallest_arch(family: ModelFamily) -> dict[str, Any]:
    """The architecture taking the smallest choice of every knob: the bottom of the sandwich.
    (The built-in families' knobs all grow the network with their value.)"""
    return family.suggest_arch(ChoiceTrial(min))


def sample_candidates(space: Any, *, n: int, seed: int) -> list[Candidate]:
    """``n`` candidates of ``space`` (anything with ``suggest(trial)``, e.g. a
    :class:`~autocompress.spaces.JointSearchSpace`) drawn by Optuna's ``RandomSampler(seed=seed)``,
    exactly as a search with the random sampler draws them. Duplicates are kept."""
    import optuna

    check_int(n, name="n", where="sample_candidates", minimum=0)
    check_int(seed, name="seed", where="sample_candidates", minimum=0)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    return [space.suggest(study.ask()) for _ in range(n)]


def enumerate_candidates(space: Any, *, limit: int = 100_000) -> list[Candidate]:
    """All candidates ``space.suggest`` can draw (each once), by a depth-first walk over its
    define-by-run choices, so conditional dimensions (layers a depth does not have) are
    handled. ``space``: anything whose ``suggest(trial)`` only calls ``suggest_categorical``,
    e.g. a :class:`~autocompress.spaces.JointSearchSpace`. Raises ValueError past ``limit``."""
    candidates: list[Candidate] = []
    stack: list[list[int]] = [[]]
    while stack:
        script = stack.pop()
        scripted = _Script(script)
        candidates.append(space.suggest(ChoiceTrial(scripted)))
        if len(candidates) > limit:
            raise ValueError(
                f"The 'space' parameter of enumerate_candidates has more than {limit} "
                "candidates: sample it instead (or raise 'limit')."
            )
        # Past the script every call got choice 0; branch on the other choices of each.
        for position in range(len(script), len(scripted.offered)):
            prefix = script + [0] * (position - len(script))
            stack.extend(prefix + [i] for i in range(1, scripted.offered[position]))
    return candidates


class _Script:
    """A pick for :class:`ChoiceTrial` that answers from a script of choice indices (0 past its
    end) and records how many choices each call offered."""

    def __init__(self, script: list[int]) -> None:
        self.script = script
        self.offered: list[int] = []

    def __call__(self, choices: Sequence[Any]) -> Any:
        position = len(self.offered)
        self.offered.append(len(choices))
        return choices[self.script[position] if position < len(self.script) else 0]
