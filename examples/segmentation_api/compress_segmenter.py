"""Compress a segmentation network held as a Python object, scored by mean IoU.

Trains TinySegNet briefly on generated shapes (standing in for your trained model), then
searches per-layer bits and pruning with ``autocompress.compress`` and exports the best point.
"""

from __future__ import annotations

import argparse

import optuna
import torch
from shapes import Shapes, TinySegNet
from torch.utils.data import DataLoader

from autocompress.api import compress
from autocompress.evaluators.train import train_epochs
from autocompress.tasks import Segmentation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=2, help="fine-tune epochs per candidate")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial is enough here

    torch.manual_seed(0)
    train, val = Shapes(384, seed=0), Shapes(96, seed=1)
    model = TinySegNet()
    task = Segmentation()
    loader = DataLoader(train, batch_size=32, shuffle=True)
    train_epochs(
        model, loader, epochs=8, lr=3e-3, weight_decay=1e-4, device=torch.device("cpu"), task=task
    )
    teacher = task.evaluate(model, DataLoader(val, batch_size=64), device=torch.device("cpu"))
    print(f"trained TinySegNet: miou {teacher['miou']:.3f}")

    result = compress(
        model,
        train_data=train,
        val_data=val,
        task=task,
        name="segmenter",
        config={
            "data": {"batch_size": 32},
            "train": {"epochs": args.epochs},
            "search": {"n_trials": args.trials, "population_size": 6},
        },
    )
    print(result.front[["number", "miou", "pixel_accuracy", "latency_ms", "size_kb"]])
    exported = result.export(format="onnx")  # the best front point by mIoU
    print(f"exported to {exported.out_dir}")
    print("\n".join(exported.report.summary_lines()[:2]))
    print(f"miou recorded {exported.recorded_score:.3f}, exported {exported.reproduced_score:.3f}")


if __name__ == "__main__":
    main()
