"""``train.ptq_fallback``: each candidate is also scored post-training quantized, and the
fine-tune keeps that model when it ends worse; otherwise the fine-tune is the one it would have
been without it."""

import copy

import pytest
import torch

from autocompress.compression.apply import build_compressed
from autocompress.config import parse_config
from autocompress.data import DataConfig, load_data, make_loaders
from autocompress.evaluators.train import TrainEvaluator, evaluate_accuracy, train_epochs
from autocompress.spaces import Candidate, LayerChoice

CPU = torch.device("cpu")
ARCH = {"channels": [16, 16], "kernels": [3, 3], "strides": [1, 2]}
LAYERS = ("features.0.0", "features.1.0", "classifier")


@pytest.fixture(scope="module")
def digits():
    return load_data(DataConfig(dataset="digits"), seed=0)


@pytest.fixture(scope="module")
def teacher_state(digits):
    teacher, _ = _build(None)
    train, _ = make_loaders(digits, batch_size=64, num_workers=0, seed=0)
    train_epochs(teacher, train, epochs=6, lr=0.01, weight_decay=0.0, device=CPU)
    return teacher.state_dict()


def _build(bits, state=None):
    layers = {n: LayerChoice(*bits) for n in LAYERS} if bits else {}
    candidate = Candidate("small_cnn", ARCH, layers)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = build_compressed(
            candidate, num_classes=10, input_shape=(1, 8, 8), teacher_state=state
        )
    return model, candidate


def _evaluator(digits, *, lr, fallback, teacher_metrics=None):
    return TrainEvaluator(
        data=digits,
        epochs=1,
        lr=lr,
        weight_decay=0.0,
        batch_size=64,
        device=CPU,
        ptq_fallback=fallback,
        teacher_metrics=teacher_metrics,
    )


def test_a_fine_tune_that_hurts_keeps_the_post_training_quantized_model(digits, teacher_state):
    model, candidate = _build((8, 8, 0.0), teacher_state)
    evaluator = _evaluator(digits, lr=1.0, fallback=True)  # a step size that wrecks the net
    start = evaluator.ptq_start(copy.deepcopy(model))
    assert start.metrics["accuracy"] > 0.9
    result = evaluator.evaluate(model, candidate)
    assert result.kept_ptq and result.accuracy == start.metrics["accuracy"]
    # The model handed back is the post-training quantized one, not the wrecked one.
    _, val = make_loaders(digits, batch_size=64, num_workers=0, seed=0)
    assert evaluate_accuracy(model, val, device=CPU)[0] == result.accuracy
    without = _evaluator(digits, lr=1.0, fallback=False).evaluate(
        *_build((8, 8, 0.0), teacher_state)
    )
    assert not without.kept_ptq and without.accuracy < 0.5


def test_a_fine_tune_that_helps_is_exactly_the_one_without_the_fallback(digits):
    """From random weights PTQ scores at chance: the fine-tune wins, and the probe before it
    left the model, its mode and the random generators as they were (same result, bit for
    bit)."""
    results, states = [], []
    for fallback in (True, False):
        model, candidate = _build((4, 8, 0.0))
        torch.manual_seed(3)
        results.append(_evaluator(digits, lr=0.01, fallback=fallback).evaluate(model, candidate))
        states.append(model.state_dict())
    assert not results[0].kept_ptq and results[0].accuracy == results[1].accuracy
    assert all(torch.equal(states[0][k], v) for k, v in states[1].items())


def test_a_start_as_accurate_as_the_teacher_is_kept_without_a_fine_tune(digits, teacher_state):
    model, candidate = _build((8, 8, 0.0), teacher_state)
    probe = _evaluator(digits, lr=0.01, fallback=True)
    ptq = probe.ptq_start(copy.deepcopy(model)).metrics["accuracy"]
    # The teacher scores what the start does: nothing to recover, so no epoch is trained.
    kept = _evaluator(digits, lr=1.0, fallback=True, teacher_metrics={"accuracy": ptq})
    result = kept.evaluate(model, candidate)
    assert result.kept_ptq and result.epochs == 0 and result.accuracy == ptq
    _, val = make_loaders(digits, batch_size=64, num_workers=0, seed=0)
    assert evaluate_accuracy(model, val, device=CPU)[0] == ptq  # the start's weights
    # A better teacher: the fine-tune runs (lr 1.0 wrecks it, so the start is kept after it).
    trained = _evaluator(digits, lr=1.0, fallback=True, teacher_metrics={"accuracy": ptq + 0.01})
    result = trained.evaluate(*_build((8, 8, 0.0), teacher_state))
    assert result.kept_ptq and result.epochs == 1 and result.train_seconds > 0


def test_the_fallback_is_off_by_default_and_left_out_of_dumps():
    config = parse_config({"name": "x"})
    assert not config.train.ptq_fallback and "ptq_fallback" not in config.train.model_dump()
    on = parse_config({"name": "x", "train": {"ptq_fallback": True}})
    assert on.fingerprint() != config.fingerprint()
    assert not TrainEvaluator(
        data=None,
        epochs=1,
        lr=0.01,
        weight_decay=0.0,
        batch_size=8,
        device=CPU,
        lsq=True,
        ptq_fallback=True,
    ).ptq_fallback  # LSQ learns the steps: nothing post-training to keep


def test_a_ptq_rung_stops_a_beaten_candidate_before_any_training(digits, monkeypatch):
    """``search.early_stopping.ptq_rung``: rung 0 judges the post-training quantized score; a
    candidate that earlier ones beat there, at no higher cost, is stopped having trained no
    epoch. Rung 0 exists only when asked for, so default runs keep their rungs."""
    from autocompress.evaluators import CandidateStopped, TrialContext
    from autocompress.evaluators import train as train_module
    from autocompress.evaluators.early_stopping import (
        EarlyStoppingTrainEvaluator,
        RungRecord,
        RungTable,
    )

    table = RungTable(rungs=(0, 1), min_dominators=1, min_records=1)
    for number in range(3):  # earlier candidates: perfect, and free
        table.store.add(0, RungRecord(trial=number, score=1.0, costs=(0.0, 0.0)))
    evaluator = EarlyStoppingTrainEvaluator(
        table=table, data=digits, epochs=3, lr=0.01, weight_decay=0.0, batch_size=64, device=CPU
    )

    def no_training(*args, **kwargs):
        raise AssertionError("a candidate stopped at rung 0 must not train")

    monkeypatch.setattr(train_module, "train_epochwise", no_training)
    model, candidate = _build((4, 8, 0.0))
    context = TrialContext(number=3, costs={"latency_ms": 1.0, "size_kb": 1.0})
    with pytest.raises(CandidateStopped, match="rung 0 after 0 epoch"):
        evaluator.evaluate_trial(model, candidate, context=context)
    assert [r.trial for r in table.store.records(0)] == [0, 1, 2, 3]

    default = parse_config({"name": "x"})
    assert not default.search.early_stopping.ptq_rung
    on = parse_config({"name": "x", "search": {"early_stopping": {"ptq_rung": True}}})
    assert on.fingerprint() != default.fingerprint()
