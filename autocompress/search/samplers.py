"""The sampler a run config asks for (the registry lives in ``core.samplers``)."""

from __future__ import annotations

import optuna

from ..config import RunConfig
from ..core.samplers import create_sampler


def make_sampler(config: RunConfig, *, seed: int | None = None) -> optuna.samplers.BaseSampler:
    """The sampler of ``search.sampler``, seeded with ``seed`` (default: the config's seed)."""
    return create_sampler(
        config.search.sampler,
        seed=config.seed if seed is None else seed,
        population_size=config.search.population_size,
    )
