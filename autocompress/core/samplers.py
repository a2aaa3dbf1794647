"""The sampler registry: ``search.sampler: <name>`` in a run config, ``create_sampler`` in
Python. A sampler factory takes ``seed`` and ``population_size`` (keyword-only) and returns an
``optuna.samplers.BaseSampler``; register more with ``@register_sampler("name")``. In core so that
the config can check the name when it is loaded; optuna is imported only to build a sampler.

Budget violations are stored on each trial with ``Trial.set_constraint``; the NSGA-II and TPE
samplers read them and rank infeasible trials below every feasible one.

Concurrent trials: TPE treats running trials as bad results (``constant_liar``). NSGA-II needs
nothing of the kind: each child is bred at random from completed parents, and a generation
advances once ``population_size`` of its trials completed, so running trials neither block nor
steer it. A child that repeats a candidate evaluated or running elsewhere is skipped untrained
by the search (``search.study.DUPLICATE_ATTR``) and does not count towards ``n_trials``.
"""

from __future__ import annotations

import functools
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
    return _nsga2_class()(population_size=population_size, seed=seed)


@functools.cache
def _nsga2_class() -> type:
    import optuna
    from optuna.search_space import IntersectionSearchSpace

    class NSGAIISampler(optuna.samplers.NSGAIISampler):
        """Optuna's NSGA-II, reading the study's trials once per trial instead of three times:
        its search space and its parents from the study's per-trial cache, and each
        generation's parent ids (stored in the study once chosen) from the database once per
        process. Each read of a database study fetches every running trial."""

        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self._space_of_trials = IntersectionSearchSpace()
            self._parent_ids: dict[tuple[str, int], list[int]] = {}

        def infer_relative_search_space(self, study, trial):
            space = self._space_of_trials.calculate(study, use_cache=True)
            # As Optuna's: a single-valued parameter is sampled independently.
            return {name: d for name, d in space.items() if not d.single()}

        def get_parent_population(self, study, generation):
            if generation == 0:
                return []
            known = (study.study_name, generation)
            if known not in self._parent_ids:
                key = self._get_parent_cache_key_prefix() + str(generation)
                ids = study._storage.get_study_system_attrs(study._study_id).get(key)
                if ids is None:  # this process is the first to reach the generation
                    parents = self.select_parent(study, generation)
                    ids = [trial._trial_id for trial in parents]
                    study._storage.set_study_system_attr(study._study_id, key, ids)
                    self._parent_ids[known] = ids
                    return parents  # in selection order, as Optuna's returns them
                self._parent_ids[known] = ids
            wanted = set(self._parent_ids[known])
            trials = study._get_trials(deepcopy=False, use_cache=True)
            return [trial for trial in trials if trial._trial_id in wanted]

    return NSGAIISampler


@register_sampler("tpe")
def tpe(*, seed: int, population_size: int) -> optuna.samplers.BaseSampler:
    import optuna

    # The first population_size trials are drawn at random, as NSGA-II's first generation is.
    # constant_liar: trials running at once (n_jobs, workers, Ray) count as bad results, so
    # concurrent draws avoid their neighbourhood. It is Optuna's default too; spelled out
    # because concurrent runs rely on it. With one trial at a time it changes nothing.
    return optuna.samplers.TPESampler(
        seed=seed, n_startup_trials=population_size, constant_liar=True
    )


@register_sampler("random")
def random(*, seed: int, population_size: int) -> optuna.samplers.BaseSampler:
    import optuna

    return optuna.samplers.RandomSampler(seed=seed)
