import math

import pytest
import torch
from torch import nn

from autocompress.compression.apply import build_compressed
from autocompress.data import DataConfig, load_data, make_loaders
from autocompress.evaluators import CandidateError
from autocompress.evaluators.train import (
    TrainEvaluator,
    evaluate_accuracy,
    resolve_device,
    train_epochs,
)
from autocompress.spaces import Candidate, LayerChoice

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits():
    return load_data(DataConfig(dataset="digits"), seed=0)


def small_cnn(bits=None) -> tuple[nn.Module, Candidate]:
    layers = (
        {n: LayerChoice(*bits) for n in ("features.0.0", "features.1.0", "classifier")}
        if bits
        else {}
    )
    cand = Candidate(
        "small_cnn", {"channels": [16, 16], "kernels": [3, 3], "strides": [1, 2]}, layers
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return build_compressed(cand, num_classes=10, input_shape=(1, 8, 8)), cand


def test_training_turns_chance_into_real_accuracy(digits):
    model, _ = small_cnn()
    train, val = make_loaders(digits, batch_size=64, num_workers=0, seed=0)
    before, _ = evaluate_accuracy(model, val, device=CPU)
    train_epochs(model, train, epochs=8, lr=0.01, weight_decay=0.0, device=CPU)
    after, loss = evaluate_accuracy(model, val, device=CPU)
    assert before < 0.3 and after > 0.9 and math.isfinite(loss)


def test_qat_evaluator_distils_from_the_teacher(digits):
    teacher, _ = small_cnn()
    train, _ = make_loaders(digits, batch_size=64, num_workers=0, seed=0)
    train_epochs(teacher, train, epochs=5, lr=0.01, weight_decay=0.0, device=CPU)
    student, cand = small_cnn(bits=(4, 6, 0.0))
    student.load_state_dict(teacher.state_dict(), strict=False)
    evaluator = TrainEvaluator(
        data=digits,
        epochs=2,
        lr=0.003,
        weight_decay=0.0,
        batch_size=64,
        device=CPU,
        teacher=teacher,
        kd_alpha=0.7,
    )
    metrics = evaluator.evaluate(student, cand)
    assert metrics.accuracy > 0.85 and metrics.epochs == 2 and metrics.train_seconds > 0
    assert student.get_submodule("classifier").w_bits == 4  # still the quantized network


def test_non_finite_loss_is_a_candidate_error(digits):
    model, cand = small_cnn()
    with torch.no_grad():
        model.get_submodule("classifier").weight.fill_(float("nan"))
    evaluator = TrainEvaluator(
        data=digits, epochs=1, lr=0.01, weight_decay=0.0, batch_size=64, device=CPU
    )
    with pytest.raises(CandidateError, match="non-finite training loss at epoch 0"):
        evaluator.evaluate(model, cand)


def test_device_resolution():
    assert resolve_device("cpu") == CPU
    assert resolve_device("auto").type in {"cpu", "cuda"}
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="train.device"):
            resolve_device("cuda")
