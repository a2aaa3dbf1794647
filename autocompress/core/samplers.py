"""The sampler registry: ``search.sampler: <name>`` in a run config, ``create_sampler`` in
Python. A sampler factory takes ``seed`` and ``population_size`` (keyword-only) and returns an
``optuna.samplers.BaseSampler``; register more with ``@register_sampler("name")``. In core so that
the config can check the name when it is loaded; optuna is imported only to build a sampler.

Budget violations are stored on each trial with ``Trial.set_constraint``; the NSGA-II and TPE
samplers read them and rank infeasible trials below every feasible one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .registry import Registry

if TYPE_CHECKING:
    import optuna

SamplerFactory = Callable[..., Any]
_SAMPLERS: Registry[SamplerFactory] = Registry("sampler")


def register_sampler(name: str) -> Callable[[SamplerFactory], SamplerFactory]:
    """Decorator: make ``factory(*, seed, population_size) -> BaseSampler`` available as
    ``search.sampler: <name>``."""
    return _SAMPLERS.register(name)


def create_sampler(
    name: str, *, seed: int, population_size: int = 16
) -> optuna.samplers.BaseSampler:
    """The sampler registered as ``name``, seeded with ``seed``."""
    factory = _SAMPLERS.get(name, where="The 'search.sampler' field")
    return factory(seed=seed, population_size=population_size)


def list_samplers(pattern: str = "*") -> list[str]:
    """Names accepted by :func:`create_sampler`, sorted."""
    return _SAMPLERS.names(pattern)


@register_sampler("nsga2")
def nsga2(*, seed: int, population_size: int) -> optuna.samplers.BaseSampler:
    import optuna

    return optuna.samplers.NSGAIISampler(population_size=population_size, seed=seed)


@register_sampler("tpe")
def tpe(*, seed: int, population_size: int) -> optuna.samplers.BaseSampler:
    import optuna

    # The first population_size trials are drawn at random, as NSGA-II's first generation is.
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=population_size)


@register_sampler("random")
def random(*, seed: int, population_size: int) -> optuna.samplers.BaseSampler:
    import optuna

    return optuna.samplers.RandomSampler(seed=seed)
