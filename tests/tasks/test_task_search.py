"""End to end on tasks other than classification: a segmentation network and a user Task from
a plain .py file through every command, and a regression whose primary metric is minimised
through early stopping, the prescreen, the surrogate and refit."""

from __future__ import annotations

import json
import sys
import textwrap

import pandas as pd
import pytest
import yaml

pytestmark = pytest.mark.slow

PLUGIN = '''
import torch
from torch import nn
from torch.utils.data import Dataset

from autocompress.tasks import Segmentation


class Shapes(Dataset):
    """3x16x16 noise with a red square (class 1) and a blue disc (class 2), as dicts."""

    def __init__(self, n, seed, size=16):
        g = torch.Generator().manual_seed(seed)
        self.images = 0.3 * torch.randn(n, 3, size, size, generator=g)
        self.masks = torch.zeros(n, size, size, dtype=torch.long)
        rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
        for i in range(n):
            top, left = torch.randint(0, size - 6, (2,), generator=g).tolist()
            self.masks[i, top : top + 5, left : left + 5] = 1
            cy, cx = torch.randint(3, size - 3, (2,), generator=g).tolist()
            self.masks[i][(rows - cy) ** 2 + (cols - cx) ** 2 <= 6] = 2
        self.images[:, 0] += (self.masks == 1).float()
        self.images[:, 2] += (self.masks == 2).float()

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"image": self.images[i], "mask": self.masks[i]}


def shapes(root, seed):
    return Shapes(160, seed), Shapes(48, seed + 1), 3, (3, 16, 16)


class TinySeg(nn.Module):
    def __init__(self, num_classes=3, width=8):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),
        )
        self.decoder = nn.Sequential(
            nn.Upsample(scale_factor=2), nn.Conv2d(2 * width, width, 3, padding=1), nn.ReLU()
        )
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, x):
        return self.classifier(self.decoder(self.encoder(x)))


class Dice(Segmentation):
    """A user task: segmentation scored by mean Dice (and mIoU)."""

    metrics = {"dice": "maximize", "miou": "maximize"}
    primary = "dice"
    ranges = {"dice": (0.0, 1.0), "miou": (0.0, 1.0)}

    def compute(self, totals):
        confusion = totals["confusion"]
        sizes = confusion.sum(0) + confusion.sum(1)
        present = sizes > 0
        dice = (2 * confusion.diag()[present] / sizes[present]).mean()
        return {"dice": float(dice), "miou": super().compute(totals)["miou"]}
'''

TRAIN = """
import torch
from torch.utils.data import DataLoader

from autocompress.evaluators.train import train_epochs
from autocompress.tasks import Segmentation
from seg_plugin import TinySeg, shapes

torch.manual_seed(0)
train, _, _, _ = shapes(None, 0)
model = TinySeg()
loader = DataLoader(train, batch_size=32, shuffle=True)
train_epochs(model, loader, epochs=20, lr=0.03, weight_decay=0.0, device=torch.device("cpu"),
             task=Segmentation())
torch.save(model.state_dict(), "tinyseg.pt")
"""


def test_segmentation_with_a_user_task_through_every_command(run_process, run_cli, tmp_path):
    (tmp_path / "seg_plugin.py").write_text(PLUGIN)
    (tmp_path / "train.py").write_text(TRAIN)
    run_process(sys.executable, "train.py", cwd=tmp_path)
    config = {
        "name": "seg",
        "data": {"dataset": "seg_plugin:shapes", "batch_size": 32},
        "model": {"factory": "seg_plugin:TinySeg", "checkpoint": "tinyseg.pt"},
        "task": "seg_plugin:Dice",
        "train": {"epochs": 1},
        "search": {"n_trials": 5, "population_size": 4},
    }
    (tmp_path / "seg.yaml").write_text(yaml.safe_dump(config))
    output = run_cli("--import", "seg_plugin.py", "search", "seg.yaml", cwd=tmp_path)
    assert "Teacher loaded from tinyseg.pt" in output and "teacher (fp32) dice" in output
    run = tmp_path / "runs" / "seg"
    trials = pd.read_csv(run / "trials.csv")
    assert list(trials.columns[2:5]) == ["dice", "miou", "latency_ms"]
    assert "accuracy" not in trials.columns
    done = trials[trials["state"] == "COMPLETE"]
    assert len(done) >= 4 and done["dice"].between(0, 1).all() and done["dice"].max() > 0.5
    front = pd.read_csv(run / "pareto.csv")
    assert front["dice"].is_monotonic_decreasing  # best dice first

    assert "dice ↑" in run_cli("pareto", str(run), cwd=tmp_path)
    run_cli("report", str(run), cwd=tmp_path)
    html = (run / "report" / "report.html").read_text()
    assert "Teacher (fp32) dice" in html
    exported = run_cli("export", str(run), "--pick", "max dice", "--format", "onnx", cwd=tmp_path)
    assert "verification PASSED" in exported and "dice: exported" in exported
    report = json.loads(next((run / "export").glob("trial_*/export_report.json")).read_text())
    assert report["metric"] == "dice" and report["dense"] is True
    assert report["exported_score"] == pytest.approx(report["reference_score"], abs=0.01)
    refit = run_cli("refit", str(run), "--epochs", "1", "--budget", "1", cwd=tmp_path)
    assert "dice" in refit and (tmp_path / "runs" / "seg-refit" / "refit.csv").is_file()
    assert "search_dice" in pd.read_csv(tmp_path / "runs" / "seg-refit" / "refit.csv").columns


REGRESSION = '''
import torch
from sklearn.datasets import load_digits
from torch.utils.data import TensorDataset


def digit_value(root, seed):
    """The digit's value, scaled to [0, 1], regressed from its 8x8 image."""
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16
    y = torch.tensor(y, dtype=torch.float32) / 9
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    x, y = x[order][:600], y[order][:600]
    return TensorDataset(x[:450], y[:450]), TensorDataset(x[450:], y[450:]), 1, (1, 8, 8)
'''


def test_regression_minimises_its_primary_metric_everywhere(
    run_process, run_cli, tmp_path, monkeypatch
):
    from autocompress.config import parse_config
    from autocompress.search import run_search

    (tmp_path / "reg_plugin.py").write_text(textwrap.dedent(REGRESSION))
    monkeypatch.chdir(tmp_path)
    config = parse_config(
        {
            "name": "reg",
            "data": {"dataset": "reg_plugin:digit_value", "batch_size": 64},
            "task": "regression",
            "space": {"family": "mlp", "arch": {"depths": [1, 2], "widths": [16, 32]}},
            "teacher": {"epochs": 6, "lr": 0.01},
            "train": {"epochs": 3, "lr": 0.01},
            "search": {
                "n_trials": 8,
                "population_size": 4,
                "early_stopping": {"min_records": 1, "min_dominators": 1},
                "prescreen": {"enabled": True, "min_trials": 3},
                "surrogate": {"min_trials": 3},
            },
        }
    )
    assert [o.name for o in config.objectives()] == ["mse", "latency_ms", "size_kb"]
    result = run_search(config, runs_dir=tmp_path / "runs")
    assert result.teacher_metrics["mse"] < 0.1 and "r2" in result.teacher_metrics
    trials = result.trials
    assert {"mse", "mae", "r2"} <= set(trials.columns) and "accuracy" not in trials.columns
    assert result.front["mse"].is_monotonic_increasing  # lowest mse first
    trained = [t for t in result.study.trials if t.user_attrs.get("trained")]
    # Rung records hold the score to maximise: -mse.
    rungs = [t.user_attrs["rung.1"] for t in trained if "rung.1" in t.user_attrs]
    assert rungs and all(r["score"] <= 0 for r in rungs)
    stopped = [t for t in trained if t.state.name == "PRUNED"]
    assert stopped  # this seed stops one
    assert all("with mse" in t.user_attrs["pruned_reason"] for t in stopped)
    assert all("rung_mse" in t.user_attrs for t in stopped)
    proposed = [t for t in result.study.trials if "proposed" in t.user_attrs]
    assert proposed and all("predicted_mse" in t.user_attrs["proposed"] for t in proposed)
