import copy
import math

import pytest
import torch
from torch import nn

from autocompress.compression.apply import build_compressed
from autocompress.data import DataConfig, load_data, make_loaders
from autocompress.evaluators import CandidateError, EvaluatorContext
from autocompress.evaluators.train import (
    TrainConfig,
    TrainEvaluator,
    evaluate_accuracy,
    resolve_device,
    train_epochs,
)
from autocompress.spaces import Candidate, JointSearchSpace, LayerChoice, SpaceConfig

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


def test_fine_tune_ends_with_batchnorm_statistics_of_its_own_weights(digits):
    """Running averages that never move (momentum 0, as an extreme of MobileNetV3's 0.01)
    keep statistics that describe another network; the fine-tune re-estimates them."""
    teacher, cand = small_cnn()
    norms = [m for m in teacher.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms
    for m in norms:
        m.momentum = 0.0
        m.running_mean.fill_(3.0)
        m.running_var.fill_(0.01)
    scores = {}
    for bn_batches in (0, 8):
        model = copy.deepcopy(teacher)
        evaluator = TrainEvaluator(
            data=digits,
            epochs=5,
            lr=0.01,
            weight_decay=0.0,
            batch_size=64,
            device=CPU,
            bn_batches=bn_batches,
        )
        scores[bn_batches] = evaluator.evaluate(model, cand).accuracy
        means = [m.running_mean for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        assert all(bool(torch.all(mean == 3.0)) == (bn_batches == 0) for mean in means)
    assert scores[0] < 0.5 < 0.85 < scores[8]


@pytest.mark.parametrize(
    "train",
    [TrainConfig(batch_size=64), TrainConfig(batch_size=64, bn_batches=0, ptq_fallback=True)],
)
def test_the_train_section_reaches_the_evaluator_defaults_included(digits, train):
    """Fields left out of dumps at their defaults (OmitAtDefault) still configure it."""
    space = JointSearchSpace(SpaceConfig(family="small_cnn"), num_classes=10, input_shape=(1, 8, 8))
    context = EvaluatorContext(data=digits, space=space, train=train, device=CPU)
    evaluator = TrainEvaluator.from_context(context)
    assert (
        evaluator.bn_batches
        == train.bn_batches
        == (64 if train == TrainConfig(batch_size=64) else 0)
    )
    assert evaluator.ptq_fallback == train.ptq_fallback
