"""The registered samplers against Optuna's own."""

import optuna
import pytest

from autocompress.core.samplers import create_sampler


def _objective(trial: optuna.Trial) -> tuple[float, float]:
    x = [trial.suggest_categorical(f"x{i}", [0, 1, 2, 3]) for i in range(4)]
    trial.suggest_categorical("fixed", [1])  # single-valued: sampled independently
    return sum(x), sum((v - 2) ** 2 for v in x)


def test_nsga2_proposes_what_optunas_does_and_reads_the_trials_once_per_trial():
    ours = optuna.create_study(
        directions=["maximize", "minimize"],
        sampler=create_sampler("nsga2", seed=3, population_size=8),
    )
    theirs = optuna.create_study(
        directions=["maximize", "minimize"],
        sampler=optuna.samplers.NSGAIISampler(population_size=8, seed=3),
    )
    for study in (ours, theirs):
        study.optimize(_objective, n_trials=40)
    assert [t.params for t in ours.trials] == [t.params for t in theirs.trials]

    reads = []
    for study in (ours, theirs):
        storage = study._storage
        original = storage.get_all_trials

        def counted(*args, original=original, study=study, **kwargs):
            reads.append(study)
            return original(*args, **kwargs)

        storage.get_all_trials = counted
        study.ask().suggest_categorical("x0", [0, 1, 2, 3])  # the sampler runs at once
        storage.get_all_trials = original
    # Optuna's reads them for the waiting trials, then for the search space and the parents
    # (4 reads); ours, once for the waiting trials and once for the sampler.
    assert reads.count(ours) == 2 == reads.count(theirs) - 2


@pytest.mark.parametrize("name", ["nsga2", "tpe", "random"])
def test_each_sampler_is_seeded(name):
    def params(seed):
        study = optuna.create_study(
            directions=["maximize", "minimize"], sampler=create_sampler(name, seed=seed)
        )
        study.optimize(_objective, n_trials=20)
        return [t.params for t in study.trials]

    assert params(0) == params(0) != params(1)
