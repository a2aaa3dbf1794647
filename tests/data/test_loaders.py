"""load_data's seeded limits and make_loaders' seeded, batched loaders."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

from autocompress.data import DataBundle, DataConfig, load_data, make_loaders


@pytest.fixture(scope="module")
def digits() -> DataBundle:
    return load_data(DataConfig(), seed=0)


def test_limits_take_deterministic_subsets() -> None:
    config = DataConfig(limit_train=100, limit_val=30)
    a, b, c = (load_data(config, seed=s) for s in (0, 0, 1))
    assert (len(a.train), len(a.val)) == (100, 30)
    assert isinstance(a.train, TensorDataset)  # keeps make_loaders' batched fast path
    assert torch.equal(a.train.tensors[0], b.train.tensors[0])
    assert not torch.equal(a.train.tensors[0], c.train.tensors[0])
    # a limit larger than the split keeps the whole split
    whole = load_data(DataConfig(limit_val=10_000), seed=0)
    assert len(whole.val) == 359


def test_make_loaders_shuffles_train_by_seed_and_keeps_val_order(digits: DataBundle) -> None:
    global_state = torch.get_rng_state()

    def epoch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        train, val = make_loaders(digits, batch_size=64, num_workers=0, seed=seed)
        return torch.cat([y for _, y in train]), torch.cat([y for _, y in val])

    (train_a, val_a), (train_b, _), (train_c, _) = epoch(0), epoch(0), epoch(1)
    assert torch.equal(train_a, train_b) and not torch.equal(train_a, train_c)
    assert sorted(train_a.tolist()) == sorted(digits.train.tensors[1].tolist())
    assert torch.equal(val_a, digits.val.tensors[1])
    assert torch.equal(torch.get_rng_state(), global_state)  # no draw from the global RNG

    train, _ = make_loaders(digits, batch_size=100, num_workers=0, seed=0)
    sizes = [len(y) for _, y in train]
    assert sizes[:-1] == [100] * (len(sizes) - 1) and sum(sizes) == len(digits.train)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"batch_size": 0, "num_workers": 0, "seed": 0}, "batch_size"),
        ({"batch_size": 8, "num_workers": -1, "seed": 0}, "num_workers"),
        ({"batch_size": 8, "num_workers": 0, "seed": -3}, "seed"),
    ],
)
def test_make_loaders_rejects_bad_arguments(digits: DataBundle, kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=f"The '{name}' parameter of make_loaders"):
        make_loaders(digits, **kwargs)


def test_load_data_rejects_negative_seed() -> None:
    with pytest.raises(ValueError, match="The 'seed' parameter of load_data"):
        load_data(DataConfig(), seed=-1)
