"""Every candidate of a search space, for spaces small enough to list (benchmarks, tests)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .candidate import Candidate

__all__ = ["enumerate_candidates"]


class _ScriptedTrial:
    """Stands in for an Optuna trial: answers ``suggest_categorical`` from a fixed script of
    choice indices (0 past its end) and records how many choices each call offered."""

    def __init__(self, script: Sequence[int]) -> None:
        self.script = list(script)
        self.offered: list[int] = []

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        position = len(self.offered)
        index = self.script[position] if position < len(self.script) else 0
        self.offered.append(len(choices))
        return choices[index]


def enumerate_candidates(space: Any, *, limit: int = 100_000) -> list[Candidate]:
    """All candidates ``space.suggest`` can draw (each once), by a depth-first walk over its
    define-by-run choices, so conditional dimensions (layers a depth does not have) are
    handled. ``space``: anything whose ``suggest(trial)`` only calls ``suggest_categorical``,
    e.g. a :class:`~autocompress.spaces.JointSearchSpace`. Raises ValueError past ``limit``."""
    candidates: list[Candidate] = []
    stack: list[list[int]] = [[]]
    while stack:
        script = stack.pop()
        trial = _ScriptedTrial(script)
        candidates.append(space.suggest(trial))
        if len(candidates) > limit:
            raise ValueError(
                f"The 'space' parameter of enumerate_candidates has more than {limit} "
                "candidates: sample it instead (or raise 'limit')."
            )
        # Past the script every call got choice 0; branch on the other choices of each.
        for position in range(len(script), len(trial.offered)):
            prefix = script + [0] * (position - len(script))
            stack.extend(prefix + [i] for i in range(1, trial.offered[position]))
    return candidates
