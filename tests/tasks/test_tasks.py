"""Tasks: losses, metrics from batch statistics, batch formats, user tasks, and how a config's
objectives follow the task."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from autocompress.config import ConfigError, parse_config
from autocompress.evaluators import TaskMetrics
from autocompress.evaluators.train import evaluate_accuracy
from autocompress.export.verify import build_report, compare_outputs
from autocompress.tasks import (
    Classification,
    Regression,
    Segmentation,
    Task,
    create_task,
    list_tasks,
)

CPU = torch.device("cpu")


class Fixed(nn.Module):
    """Returns the outputs it was built with, batch by batch (ignores its input's values)."""

    def __init__(self, outputs: torch.Tensor) -> None:
        super().__init__()
        self.outputs, self.seen = outputs, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.outputs[self.seen : self.seen + len(x)]
        self.seen += len(x)
        return out


def test_builtin_tasks_are_registered_with_their_primary_metric():
    assert {"classification", "regression", "segmentation"} <= set(list_tasks())
    assert create_task("classification").score.name == "accuracy"
    assert (create_task("regression").primary, create_task("regression").score.direction) == (
        "mse",
        "minimize",
    )
    assert create_task("segmentation").primary == "miou"


def test_classification_metrics_match_top1_over_batches():
    torch.manual_seed(0)
    logits, labels = torch.randn(50, 4), torch.randint(0, 4, (50,))
    loader = DataLoader(TensorDataset(torch.zeros(50, 1), labels), batch_size=16)
    metrics = Classification().evaluate(Fixed(logits), loader, device=CPU)
    assert metrics["accuracy"] == pytest.approx(float((logits.argmax(1) == labels).float().mean()))
    assert metrics["loss"] == pytest.approx(
        float(nn.functional.cross_entropy(logits, labels)), rel=1e-5
    )
    assert evaluate_accuracy(Fixed(logits), loader, device=CPU)[0] == metrics["accuracy"]


def test_regression_metrics_over_batches():
    outputs = torch.tensor([[1.0], [2.0], [3.0], [5.0]])
    targets = torch.tensor([1.0, 2.0, 4.0, 4.0])  # 1-D targets: one output per sample
    loader = DataLoader(TensorDataset(torch.zeros(4, 1), targets), batch_size=3)
    metrics = Regression().evaluate(Fixed(outputs), loader, device=CPU)
    assert metrics["mse"] == pytest.approx(0.5) and metrics["mae"] == pytest.approx(0.5)
    assert metrics["r2"] == pytest.approx(1 - 0.5 / np.var([1.0, 2.0, 4.0, 4.0]))


def test_segmentation_miou_counts_present_classes_and_ignores_255():
    # 1 image, 2x2 pixels, 3 classes; class 2 appears nowhere, pixel (1, 1) is ignored.
    labels = torch.tensor([[[0, 0], [1, 255]]])
    predicted = torch.tensor([[[0, 1], [1, 2]]])
    logits = nn.functional.one_hot(predicted, 3).permute(0, 3, 1, 2).float() * 5
    loader = DataLoader(TensorDataset(torch.zeros(1, 1), labels), batch_size=1)
    metrics = Segmentation().evaluate(Fixed(logits), loader, device=CPU)
    # class 0: hit 1, union 2; class 1: hit 1, union 2 -> mIoU 0.5; 2 of 3 labelled pixels right
    assert metrics["miou"] == pytest.approx(0.5)
    assert metrics["pixel_accuracy"] == pytest.approx(2 / 3)


def test_segmentation_distillation_is_per_pixel():
    task, targets = Segmentation(), torch.zeros(2, 4, 4, dtype=torch.long)
    teacher = torch.randn(2, 3, 4, 4)
    assert task.distillation_loss(teacher, teacher, targets, alpha=1.0, temperature=2.0) == 0
    # On the scale of the per-pixel cross-entropy, not summed over the pixels.
    student = torch.randn(2, 3, 4, 4)
    soft = task.distillation_loss(student, teacher, targets, alpha=1.0, temperature=1.0)
    assert 0 < soft < 10


def test_batches_may_be_tuples_or_dicts():
    task = Classification()
    x, y = torch.zeros(2, 3), torch.tensor([0, 1])
    assert task.split((x, y))[1] is y and task.split([x, y])[0] is x
    assert task.split({"image": x, "label": y})[1] is y
    assert task.split({"input": x, "target": y, "id": 3})[0] is x
    with pytest.raises(ValueError, match=r"its target under one of .*Got keys \['image', 'id'\]"):
        task.split({"image": x, "id": 3})
    with pytest.raises(ValueError, match="a tuple \\(inputs, targets\\) or a dict"):
        task.split(x)


def test_a_user_task_must_declare_its_primary_metric_among_its_metrics():
    with pytest.raises(TypeError, match="primary must be one of its metrics"):

        class Wrong(Task):
            metrics = {"f1": "maximize"}
            primary = "accuracy"

            def loss(self, outputs, targets): ...
            def statistics(self, outputs, targets): ...
            def compute(self, totals): ...

    with pytest.raises(TypeError, match="must be 'maximize' or 'minimize'"):

        class Sideways(Task):
            metrics = {"f1": "up"}
            primary = "f1"

            def loss(self, outputs, targets): ...
            def statistics(self, outputs, targets): ...
            def compute(self, totals): ...


def test_tasks_by_import_string_and_bad_names():
    assert isinstance(create_task("autocompress.tasks:Regression"), Regression)
    with pytest.raises(ValueError, match=r"'task' field must be one of .*'segmentation'"):
        create_task("detection")
    with pytest.raises(ValueError, match="must name a Task subclass"):
        create_task("autocompress.tasks:list_tasks")
    with pytest.raises(ValueError, match="importable module"):
        create_task("no_such_module:Task")


def test_the_config_names_the_tasks_metrics():
    config = parse_config({"name": "seg", "task": "segmentation"})
    assert [o.name for o in config.objectives()] == ["miou", "latency_ms", "size_kb"]
    assert config.score_objective().name == "miou"
    regression = parse_config({"name": "r", "task": "regression"})
    assert [(o.name, o.direction) for o in regression.objectives()][0] == ("mse", "minimize")
    explicit = {"objectives": ["r2", "size_kb"]}
    assert (
        parse_config({"name": "r", "task": "regression", "search": explicit}).score_objective()
        is None
    )
    with pytest.raises(
        ConfigError, match=r"search.objectives.*task 'segmentation'.*Got 'accuracy'"
    ):
        parse_config(
            {"name": "s", "task": "segmentation", "search": {"objectives": ["accuracy", "size_kb"]}}
        )
    with pytest.raises(ConfigError, match=r"search.prescreen.enabled.*'mse'"):
        parse_config(
            {
                "name": "r",
                "task": "regression",
                "search": {"objectives": ["r2", "size_kb"], "prescreen": {"enabled": True}},
            }
        )
    with pytest.raises(ConfigError, match=r"task: .*one of \['classification'"):
        parse_config({"name": "x", "task": "detection"})


def test_classification_runs_keep_their_fingerprint():
    # Runs made before tasks existed must resume: the default task is not hashed.
    plain = parse_config({"name": "x"})
    assert (
        parse_config({"name": "x", "task": "classification"}).fingerprint() == plain.fingerprint()
    )
    assert parse_config({"name": "x", "task": "segmentation"}).fingerprint() != plain.fingerprint()


def test_task_metrics_accuracy_shorthand():
    assert TaskMetrics(accuracy=0.5, loss=1.0).metrics == {"accuracy": 0.5}
    assert TaskMetrics(metrics={"accuracy": 0.25}).accuracy == 0.25
    assert TaskMetrics(metrics={"miou": 0.25}).accuracy is None


def test_dense_outputs_are_verified_at_the_999th_percentile(tmp_path):
    # One output element off by a rounding step among many: a dense export still passes, since
    # its 99.9th percentile difference is within the bound; a classifier's max would not.
    torch.manual_seed(0)
    expected = torch.randn(4, 3, 16, 16)
    got = expected.clone()
    got[0, 0, 0, 0] += 1.0
    labels = expected.argmax(1)
    loader = DataLoader(TensorDataset(torch.zeros(4, 1), labels), batch_size=4)
    comparison = compare_outputs(
        lambda x: got.numpy(), Fixed(expected), loader, task=Segmentation()
    )
    assert comparison.dense and comparison.max_abs_diff == pytest.approx(1.0)
    assert comparison.p999_abs_diff < 1e-6 and comparison.metric == "miou"
    artefact = tmp_path / "model.onnx"
    artefact.write_bytes(b"x")
    report = build_report(
        format="onnx",
        artefact=artefact,
        files=[artefact],
        comparison=comparison,
        predicted_bytes=1,
        recorded_score=comparison.reference_score,
        measured_latency_ms=math.nan,
        latency_runtime="-",
        predicted_latency_ms=math.nan,
        predicted_latency_target="-",
    )
    assert report.passed and "99.9th percentile" in report.summary_lines()[0]
