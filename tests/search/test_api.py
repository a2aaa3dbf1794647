"""``run_search`` from Python with configured objects (an evaluator, a sampler, a hardware
profile) instead of the ones the config names; and the evaluator chosen by ``evaluator:``."""

from __future__ import annotations

import json

import optuna
import pytest

from autocompress.config import ConfigError, parse_config
from autocompress.evaluators import (
    Evaluator,
    EvaluatorContext,
    TaskMetrics,
    create_evaluator,
    list_evaluators,
    register_evaluator,
)
from autocompress.hardware_profiles import HardwareMetrics, HardwareProfile
from autocompress.search import run_search


class WidthEvaluator(Evaluator):
    """Scores a candidate without training: more channels, more 'accuracy' (deterministic)."""

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = scale

    def evaluate(self, model, candidate):
        accuracy = self.scale * _channels(candidate.to_json()) / 100
        return TaskMetrics(accuracy=accuracy, loss=0.0, epochs=0, train_seconds=0.0)


def _channels(candidate_json: str) -> int:
    return sum(json.loads(candidate_json)["arch"]["channels"])


class ParamsProfile(HardwareProfile):
    """1 ms per 1000 parameters, 1 kB per 1000 parameters; no energy figure."""

    def profile(self, model, *, input_shape):
        params = sum(p.numel() for p in model.parameters())
        return HardwareMetrics(
            latency_ms=params / 1000,
            energy_mj=float("nan"),
            size_bytes=params,
            peak_mem_bytes=0,
        )


@pytest.fixture
def tiny(tiny_config_dict):
    tiny_config_dict["teacher"]["epochs"] = 1
    tiny_config_dict["search"]["n_trials"] = 4
    return tiny_config_dict


def test_run_search_uses_the_objects_it_is_given(tmp_path, tiny):
    sampler = optuna.samplers.RandomSampler(seed=7)
    result = run_search(
        parse_config(tiny),
        runs_dir=tmp_path,
        evaluator=WidthEvaluator(),
        sampler=sampler,
        profile=ParamsProfile(),
    )
    trials = result.trials
    assert result.study.sampler is sampler
    assert len(trials) == 4 and trials["state"].eq("COMPLETE").all()
    assert trials["accuracy"].tolist() == [_channels(c) / 100 for c in trials["candidate"]]
    assert trials["latency_ms"].tolist() == pytest.approx((trials["params"] / 1000).tolist())


def test_an_evaluator_factory_gets_the_runs_context(tmp_path, tiny):
    seen = []

    def factory(context: EvaluatorContext) -> Evaluator:
        seen.append(context)
        return WidthEvaluator()

    result = run_search(parse_config(tiny), runs_dir=tmp_path, evaluator=factory)
    (context,) = seen
    assert context.teacher is not None and context.data.num_classes == 10
    assert context.train.batch_size == tiny["data"]["batch_size"]  # resolved from data
    assert context.run_dir.path == result.run_dir
    assert result.trials["state"].eq("COMPLETE").all()


def test_objects_cannot_travel_to_ray_workers(tmp_path, tiny):
    tiny["search"]["backend"] = "ray"
    with pytest.raises(ValueError, match="'evaluator' and 'profile' parameters"):
        run_search(parse_config(tiny), runs_dir=tmp_path, evaluator=WidthEvaluator())


# --- the evaluator registry and the config's evaluator section -------------------------------


@register_evaluator("test_width")
def width_evaluator(context: EvaluatorContext, *, scale: float = 1.0) -> Evaluator:
    return WidthEvaluator(scale)


def test_registered_evaluators_are_listed_and_unknown_names_list_them():
    assert {"train", "supernet", "test_width"} <= set(list_evaluators())
    with pytest.raises(ValueError, match=r"'evaluator.name' field must be one of \[.*'train'"):
        create_evaluator("nope", context=None)


def test_a_registered_evaluator_is_chosen_by_the_config(tmp_path, tiny):
    tiny["evaluator"] = {"name": "test_width", "options": {"scale": 0.5}}
    result = run_search(parse_config(tiny), runs_dir=tmp_path)
    expected = [0.5 * _channels(c) / 100 for c in result.trials["candidate"]]
    assert result.trials["accuracy"].tolist() == expected


def test_evaluator_config_errors_name_the_field(tmp_path, tiny):
    with pytest.raises(ConfigError, match=r"evaluator\.name"):
        parse_config({**tiny, "evaluator": {"name": "nope"}})
    # Options are the evaluator's keyword arguments: a wrong one is reported as a config error.
    tiny["evaluator"] = {"name": "train", "options": {"epochs": 3}}
    with pytest.raises(ConfigError, match="evaluator: .*epochs"):
        run_search(parse_config(tiny), runs_dir=tmp_path)
    # Early stopping stops the train evaluator's epochs; others have none to stop, and it
    # stays out of their way (a run's config.yaml spells enabled: true out).
    tiny["evaluator"] = {"name": "supernet"}
    tiny["search"]["early_stopping"] = {"enabled": True}
    assert parse_config(tiny).search.early_stopping.enabled


def test_the_default_evaluator_keeps_the_fingerprint_of_a_config_without_the_section(tiny):
    explicit = parse_config({**tiny, "evaluator": {"name": "train", "options": {}}})
    assert explicit.fingerprint() == parse_config(tiny).fingerprint()
    other = parse_config({**tiny, "evaluator": {"name": "supernet"}})
    assert other.fingerprint() != explicit.fingerprint()


@pytest.mark.slow
def test_the_supernet_evaluator_runs_from_the_config(tmp_path, tiny):
    tiny["evaluator"] = {
        "name": "supernet",
        "options": {"supernet": {"epochs": 1, "n_random": 1}, "qat_steps": 2},
    }
    result = run_search(parse_config(tiny), runs_dir=tmp_path)
    assert result.trials["state"].eq("COMPLETE").all()
    assert result.trials["accuracy"].between(0, 1).all()
    assert (result.run_dir / "supernet" / "spec.json").is_file()  # trained once, cached
