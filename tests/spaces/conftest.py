"""Fixtures of the space tests."""

from __future__ import annotations

from collections.abc import Callable

import optuna
import pytest

from autocompress.spaces import JointSearchSpace, SpaceConfig

SMALL = {"depths": [2], "widths": [8, 48], "kernel_sizes": [3], "strides": [1, 2]}


@pytest.fixture
def small_space() -> Callable[..., JointSearchSpace]:
    """``small_space(**fields)``: a small_cnn space of two small conv layers on 1x8x8 inputs,
    with the given ``SpaceConfig`` fields."""

    def build(**fields) -> JointSearchSpace:
        config = SpaceConfig(family="small_cnn", arch=SMALL, **fields)
        return JointSearchSpace(config, num_classes=10, input_shape=(1, 8, 8))

    return build


@pytest.fixture
def draws() -> Callable[..., list[optuna.trial.FrozenTrial]]:
    """``draws(space, n, seed=0)``: ``n`` trials of ``space`` drawn by a seeded random sampler."""

    def draw(space: JointSearchSpace, n: int, seed: int = 0) -> list[optuna.trial.FrozenTrial]:
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
        study.optimize(lambda t: (space.suggest(t), 0.0)[1], n_trials=n)
        return study.trials

    return draw
