import math

import pytest
import torch

from autocompress.compression import build_compressed
from autocompress.config import ConfigError, parse_config
from autocompress.data import DataConfig, load_data, make_loaders
from autocompress.evaluators import EvaluatorContext, TrainConfig
from autocompress.evaluators.early_stopping import EarlyStoppingTrainEvaluator
from autocompress.evaluators.train import FeatureKDConfig, TrainEvaluator, train_epochs
from autocompress.search.setup import make_evaluator
from autocompress.search.teacher import teacher_fingerprint
from autocompress.spaces import Candidate, JointSearchSpace, LayerChoice, SpaceConfig

CPU = torch.device("cpu")
SHAPES = {"num_classes": 10, "input_shape": (1, 8, 8)}
ARCH = {"channels": [16, 16], "kernels": [3, 3], "strides": [1, 2]}
PRUNED = Candidate(
    "small_cnn",
    ARCH,
    {"features.0.0": LayerChoice(4, 8, 0.5), "features.1.0": LayerChoice(4, 8, 0.5)},
)


@pytest.fixture(scope="module")
def digits():
    return load_data(DataConfig(dataset="digits"), seed=0)


@pytest.fixture(scope="module")
def teacher(digits):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = build_compressed(Candidate("small_cnn", ARCH), **SHAPES)
        train, _ = make_loaders(digits, batch_size=64, num_workers=0, seed=0)
        train_epochs(model, train, epochs=3, lr=0.01, weight_decay=0.0, device=CPU)
    return model.eval()


def fine_tune(digits, teacher, feature_kd):
    with torch.random.fork_rng():
        torch.manual_seed(1)
        model = build_compressed(PRUNED, teacher_state=teacher.state_dict(), **SHAPES)
        evaluator = TrainEvaluator(
            data=digits,
            epochs=1,
            lr=0.003,
            weight_decay=0.0,
            batch_size=64,
            device=CPU,
            teacher=teacher,
            feature_kd=feature_kd,
        )
        return evaluator.evaluate(model, PRUNED), model


def test_feature_distillation_of_a_pruned_candidate_changes_its_fine_tune(digits, teacher):
    plain, plain_model = fine_tune(digits, teacher, None)
    again, _ = fine_tune(digits, teacher, None)
    assert (again.loss, again.metrics) == (plain.loss, plain.metrics)  # deterministic
    kd = FeatureKDConfig(layers=["features.*.2"], weight=5.0)
    featured, featured_model = fine_tune(digits, teacher, kd)
    assert math.isfinite(featured.loss) and featured.accuracy > 0.3  # chance: 0.1
    assert featured.loss != plain.loss
    weight = "features.0.0.weight"
    assert not torch.equal(featured_model.state_dict()[weight], plain_model.state_dict()[weight])
    # The hooks are gone with the fine-tune: the saved model is a plain candidate again.
    assert all(not m._forward_hooks for m in featured_model.modules())
    assert all(not m._forward_hooks for m in teacher.modules())


def test_a_glob_that_matches_no_teacher_layer_is_refused_before_any_trial(digits, teacher):
    with pytest.raises(ValueError, match="'train.feature_kd.layers'.*'blocks.*'"):
        TrainEvaluator(
            data=digits,
            epochs=1,
            lr=0.003,
            weight_decay=0.0,
            batch_size=64,
            device=CPU,
            teacher=teacher,
            feature_kd=FeatureKDConfig(layers=["features.0.2", "blocks.*"]),
        )


def test_unset_feature_kd_leaves_the_fingerprints_as_they_were(tiny_config_dict):
    base = parse_config(tiny_config_dict)
    assert "feature_kd" not in base.model_dump(mode="json")["train"]
    tiny_config_dict["train"]["feature_kd"] = None
    assert parse_config(tiny_config_dict).fingerprint() == base.fingerprint()
    tiny_config_dict["train"]["feature_kd"] = {"layers": ["features.*"], "weight": 0.5}
    with_kd = parse_config(tiny_config_dict)
    assert with_kd.fingerprint() != base.fingerprint()
    assert teacher_fingerprint(with_kd) == teacher_fingerprint(base)  # the teacher is the same


@pytest.mark.parametrize(
    ("section", "value", "message"),
    [
        ("teacher", {"layers": ["features.*"]}, "'teacher.feature_kd' field must be left out"),
        ("train", {"layers": []}, "train.feature_kd.layers"),
        ("train", {"layers": ["a"], "weight": 0}, "train.feature_kd.weight"),
        ("train", {"layer": ["a"]}, "train.feature_kd.layer"),
    ],
)
def test_bad_feature_kd_settings_name_the_field(tiny_config_dict, section, value, message):
    tiny_config_dict[section]["feature_kd"] = value
    with pytest.raises(ConfigError, match=message):
        parse_config(tiny_config_dict)


def test_the_early_stopping_evaluator_distils_features_too(digits, teacher, tiny_config_dict):
    tiny_config_dict["train"]["feature_kd"] = {"layers": ["features.0.*"]}
    config = parse_config(tiny_config_dict)
    context = EvaluatorContext(
        data=digits,
        space=JointSearchSpace(SpaceConfig(family="small_cnn", arch={"widths": [16]}), **SHAPES),
        train=TrainConfig(batch_size=64, feature_kd=config.train.feature_kd),
        device=CPU,
        teacher=teacher,
    )
    evaluator = make_evaluator(config, context)
    assert isinstance(evaluator, EarlyStoppingTrainEvaluator)
    assert evaluator.feature_kd == config.train.feature_kd
