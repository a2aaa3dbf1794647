import math

import pytest
import torch

from autocompress.compression import QuantConv2d, QuantLinear, build_compressed, load_model
from autocompress.config import ConfigError, parse_config
from autocompress.data import DataConfig, load_data, make_loaders
from autocompress.evaluators import EvaluatorContext, TrainConfig, create_evaluator
from autocompress.evaluators.ptq import PTQEvaluator, PTQOptions
from autocompress.evaluators.train import evaluate_accuracy, train_epochs
from autocompress.spaces import Candidate, JointSearchSpace, LayerChoice, SpaceConfig

CPU = torch.device("cpu")
SHAPES = {"num_classes": 10, "input_shape": (1, 8, 8)}
ARCH = {"channels": [16, 32], "kernels": [3, 3], "strides": [1, 2]}


@pytest.fixture(scope="module")
def digits():
    return load_data(DataConfig(dataset="digits"), seed=0)


@pytest.fixture(scope="module")
def teacher_state(digits):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        teacher = build_compressed(Candidate("small_cnn", ARCH), **SHAPES)
        train, _ = make_loaders(digits, batch_size=64, num_workers=0, seed=0)
        train_epochs(teacher, train, epochs=4, lr=0.01, weight_decay=0.0, device=CPU)
    return teacher.state_dict()


def candidate() -> Candidate:
    # Pruned and low-bit: the inherited BN statistics and the missing ranges both matter.
    layers = {
        "features.0.0": LayerChoice(4, 8, 0.25),
        "features.1.0": LayerChoice(4, 4, 0.0),
        "classifier": LayerChoice(4, 4, 0.0),
    }
    return Candidate("small_cnn", ARCH, layers)


def test_ptq_scores_a_pruned_low_bit_candidate_near_its_teacher(digits, teacher_state):
    model = build_compressed(candidate(), teacher_state=teacher_state, **SHAPES)
    _, val = make_loaders(digits, batch_size=64, num_workers=0, seed=0)
    uncalibrated, _ = evaluate_accuracy(model, val, device=CPU)
    evaluator = PTQEvaluator(data=digits, batch_size=64, device=CPU)
    metrics = evaluator.evaluate(model, candidate())
    assert metrics.epochs == 0 and math.isfinite(metrics.loss)
    assert metrics.accuracy > 0.75 and metrics.accuracy > uncalibrated + 0.2
    # Every quantized input now has its calibrated range: the export reads these.
    layers = [m for m in model.modules() if isinstance(m, QuantConv2d | QuantLinear)]
    assert all(bool(m.act_initialized) for m in layers)


def test_every_calibration_runs_and_bias_correction_is_optional(digits, teacher_state):
    scores = {}
    for calibration in ("minmax", "percentile", "mse"):
        for bias_correction in (False, True):
            options = PTQOptions(calibration=calibration, bias_correction=bias_correction)
            evaluator = PTQEvaluator(data=digits, batch_size=64, device=CPU, options=options)
            model = build_compressed(candidate(), teacher_state=teacher_state, **SHAPES)
            scores[calibration, bias_correction] = evaluator.evaluate(model, candidate()).accuracy
    assert all(0.5 < score <= 1 for score in scores.values())


def float_teacher(teacher_state) -> torch.nn.Module:
    return build_compressed(Candidate("small_cnn", ARCH), teacher_state=teacher_state, **SHAPES)


@torch.no_grad()
def distance_to(teacher: torch.nn.Module, model: torch.nn.Module, loader) -> float:
    """Mean squared distance between the two networks' logits over ``loader``."""
    teacher.eval(), model.eval()
    return float(torch.stack([(model(x) - teacher(x)).square().mean() for x, _ in loader]).mean())


def test_distillation_steps_move_the_quantized_outputs_towards_the_teachers(digits, teacher_state):
    teacher = float_teacher(teacher_state)
    _, val = make_loaders(digits, batch_size=64, num_workers=0, seed=0)
    distances, scores = {}, {}
    for steps in (0, 16):
        options = PTQOptions(distill_steps=steps, calib_batches=4)
        evaluator = PTQEvaluator(
            data=digits, batch_size=64, device=CPU, options=options, teacher=teacher, lr=0.005
        )
        model = build_compressed(candidate(), teacher_state=teacher_state, **SHAPES)
        scores[steps] = evaluator.evaluate(model, candidate())
        distances[steps] = distance_to(teacher, model, val)
    # On the validation split, which the steps never saw: 0.39 -> 0.26 (accuracy 82.7 -> 87.5%).
    assert distances[16] < 0.8 * distances[0]
    assert scores[16].accuracy >= scores[0].accuracy - 0.02 and scores[16].epochs == 0
    # The teacher is only read.
    assert all(not p.requires_grad or p.grad is None for p in teacher.parameters())


def test_distillation_needs_a_teacher(digits):
    with pytest.raises(ValueError, match="'evaluator.options.distill_steps' field needs"):
        PTQEvaluator(data=digits, batch_size=64, device=CPU, options=PTQOptions(distill_steps=4))


@pytest.mark.parametrize("steps", [0, 4])
def test_the_saved_model_scores_what_ptq_scored(digits, teacher_state, tmp_path, steps):
    from autocompress.compression import save_model

    model = build_compressed(candidate(), teacher_state=teacher_state, **SHAPES)
    evaluator = PTQEvaluator(
        data=digits,
        batch_size=64,
        device=CPU,
        options=PTQOptions(distill_steps=steps),
        teacher=float_teacher(teacher_state),
    )
    scored = evaluator.evaluate(model, candidate()).accuracy
    save_model(tmp_path, model, candidate=candidate(), **SHAPES)
    reloaded, _ = load_model(tmp_path)
    _, val = make_loaders(digits, batch_size=64, num_workers=0, seed=0)
    assert evaluate_accuracy(reloaded, val, device=CPU)[0] == scored


def test_the_factory_takes_the_options_and_the_train_batch_size(digits):
    config = SpaceConfig(family="small_cnn", arch={"widths": [8]})
    context = EvaluatorContext(
        data=digits,
        space=JointSearchSpace(config, **SHAPES),
        train=TrainConfig(batch_size=32),
        device=CPU,
    )
    evaluator = create_evaluator("ptq", context=context, calib_batches=2, calibration="minmax")
    assert isinstance(evaluator, PTQEvaluator) and evaluator.batch_size == 32
    assert evaluator.options.calib_batches == 2 and evaluator.options.calibration == "minmax"
    with pytest.raises(ValueError, match="'evaluator.options.calib_bathces' field is not an"):
        create_evaluator("ptq", context=context, calib_bathces=2)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"calibration": "entropy"}, "'evaluator.options.calibration' field must be one of "),
        ({"calib_batch": 4}, "'evaluator.options.calib_batch' field is not an option"),
        ({"calib_batches": 0}, "'evaluator.options.calib_batches' field is invalid"),
        ({"percentile": 10}, "'evaluator.options.percentile' field is invalid"),
        ({"distill_steps": -1}, "'evaluator.options.distill_steps' field is invalid"),
        ({"distill_lr": 0}, "'evaluator.options.distill_lr' field is invalid"),
    ],
)
def test_bad_options_are_config_errors_naming_the_field(tiny_config_dict, options, message):
    tiny_config_dict["evaluator"] = {"name": "ptq", "options": options}
    with pytest.raises(ConfigError, match=message):
        parse_config(tiny_config_dict)


@pytest.mark.slow
def test_a_ptq_search_completes_its_trials_and_exports_what_it_scored(tiny_config_dict, tmp_path):
    from autocompress.export import export_trial
    from autocompress.search import run_search

    tiny_config_dict["evaluator"] = {"name": "ptq", "options": {"calib_batches": 4}}
    # Explicitly off: the run's config.yaml, which export reads, holds every field, and early
    # stopping written out as "enabled" is refused for an evaluator other than train.
    tiny_config_dict["search"]["early_stopping"] = {"enabled": False}
    # The arch fixed to the teacher's: bits and pruning are what PTQ is for.
    tiny_config_dict["space"]["arch"] = {"depths": [2], "widths": [16], "kernel_sizes": [3]}
    result = run_search(parse_config(tiny_config_dict), runs_dir=tmp_path)
    trials = result.trials
    done = trials[trials["state"] == "COMPLETE"]
    assert len(done) >= 4 and done["accuracy"].map(math.isfinite).all()
    trained = done[done["trained"].astype(bool)]
    assert (trained["train_seconds"] < 30).all() and trained["accuracy"].max() > 0.5
    number = int(trained.sort_values("accuracy").iloc[-1]["number"])
    exported = export_trial(result.run_dir, trial=number, out_dir=tmp_path / "x", format="onnx")
    assert exported.report.passed
    assert exported.reproduced_score == pytest.approx(exported.recorded_score, abs=1e-9)
