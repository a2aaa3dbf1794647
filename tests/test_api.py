"""compress(): a network and data held as Python objects, searched and exported in one call."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from autocompress.api import compress, given_model
from autocompress.data import DataConfig, load_data


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        return self.head(self.features(x).mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def trained():
    data = load_data(DataConfig(dataset="digits"), seed=0)
    torch.manual_seed(0)
    model = Net()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for x, y in DataLoader(data.train, batch_size=64, shuffle=True):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model, data


def test_compress_searches_the_given_network_and_exports_from_the_result(tmp_path, trained):
    model, data = trained
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = compress(
        model,
        train_data=data.train,
        val_data=DataLoader(data.val, batch_size=32),
        config={
            "train": {"epochs": 1},
            "space": {"w_bits": [4, 8], "a_bits": [8], "prune_ratios": [0.0, 0.5]},
            "search": {"n_trials": 3, "sampler": "random"},
        },
        name="given",
        runs_dir=tmp_path,
    )
    assert len(result.trials) >= 3 and len(result.front) >= 1
    assert result.search.teacher_metrics["accuracy"] > 0.2  # the given weights, not retrained
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # untouched
    exported = result.export(format="onnx")
    assert exported.report.passed


def test_a_network_given_in_another_process_cannot_be_rebuilt_here():
    with pytest.raises(ValueError, match="given to compress\\(\\) as a Python object"):
        given_model("never-given")


def test_data_must_be_a_dataset_or_a_loader(trained):
    model, data = trained
    with pytest.raises(ValueError, match="'train_data' parameter of compress"):
        compress(model, train_data=[], val_data=data.val)
