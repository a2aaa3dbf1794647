"""A user's own network as the search space (``model:``): factory, checkpoint as the teacher,
head rule, excluded and overridden layers, droppable blocks, and the errors of each."""

from __future__ import annotations

import optuna
import pytest
import torch
from torch import nn

from autocompress.compression import build_compressed
from autocompress.config import ConfigError, parse_config
from autocompress.search import run_search
from autocompress.search.teacher import teacher_fingerprint
from autocompress.spaces import Candidate, JointSearchSpace
from autocompress.spaces.groups import output_layer


def _config(**model) -> dict:
    return {
        "name": "own",
        "data": {"dataset": "digits", "val_fraction": 0.25, "batch_size": 128},
        "model": {"factory": "tiny_net:build", **model},
        "space": {"w_bits": [4, 8], "a_bits": [8], "prune_ratios": [0.0, 0.5]},
        "teacher": {"epochs": 2, "lr": 0.01},
        "train": {"epochs": 1, "lr": 0.01},
        "search": {"n_trials": 3, "sampler": "random"},
    }


def _space(config: dict) -> JointSearchSpace:
    parsed = parse_config(config)
    return JointSearchSpace(parsed.space, num_classes=10, input_shape=(1, 8, 8))


def _checkpoint(path, **kwargs) -> str:
    from tiny_net import build

    torch.manual_seed(0)
    torch.save(build(**kwargs).state_dict(), path)
    return str(path)


def test_the_output_layer_is_the_one_that_runs_last(tiny_net):
    from tiny_net import build

    assert output_layer(build(), torch.zeros(1, 1, 8, 8)) == "fc"


def test_a_user_network_is_searched_with_its_head_never_pruned(tiny_net):
    space = _space(_config())
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(5):
        candidate = space.suggest(study.ask())
        assert candidate.family == "model" and candidate.layers["fc"].prune_ratio == 0
        model = build_compressed(candidate, num_classes=10, input_shape=(1, 8, 8))
        assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    _, prunable = space.layer_dimensions(space.family.largest_arch())
    assert "fc" not in prunable and "stem" in prunable


def test_excluded_and_overridden_layers(tiny_net):
    config = _config()
    config["space"]["exclude"] = ["stem"]
    config["space"]["overrides"] = {"block.*": {"w_bits": 8, "prune_ratio": 0.0}}
    space = _space(config)
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    candidate = space.suggest(trial)
    assert candidate.layers["stem"].w_bits == 32 and candidate.layers["stem"].prune_ratio == 0
    assert all(candidate.layers[f"block.conv{i}"].w_bits == 8 for i in (1, 2))
    assert not any(name.startswith(("stem.", "block.conv1.w_bits")) for name in trial.params)
    # The block's a_bits stay searched; the excluded stem gets no dimension at all.
    assert "block.conv1.a_bits" in trial.params and "stem.a_bits" not in trial.params


def test_droppable_blocks_become_identities(tiny_net):
    space = _space(_config(droppable_blocks=["block"]))
    assert space.family.blocks == ["block"]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    archs = [space.suggest(study.ask()).arch for _ in range(8)]
    assert {tuple(a["dropped"]) for a in archs} == {(), ("block",)}
    dropped = Candidate(family="model", arch=next(a for a in archs if a["dropped"]))
    model = build_compressed(dropped, num_classes=10, input_shape=(1, 8, 8))
    assert isinstance(model.block, nn.Identity)


def test_torchvision_residual_blocks_are_found_automatically():
    config = {
        "name": "rn",
        "data": {"dataset": "synthetic", "synthetic_shape": [3, 32, 32]},
        "model": {
            "factory": "torchvision.models:resnet18",
            "kwargs": {"num_classes": 10},
            "droppable_blocks": "auto",
        },
    }
    space = JointSearchSpace(parse_config(config).space, num_classes=10, input_shape=(3, 32, 32))
    assert space.family.blocks == ["layer1.0", "layer1.1", "layer2.1", "layer3.1", "layer4.1"]


@pytest.mark.parametrize(
    ("model", "space", "message"),
    [
        ({"factory": "no_such_module:build"}, {}, "'model.factory' field must name an importable"),
        ({"factory": "tiny_net:CONSTANT"}, {}, "'model.factory' field must name a callable"),
        ({"factory": "tiny_net:not_a_network"}, {}, "returning an nn.Module"),
        ({"kwargs": {"depth": 3}}, {}, "'model.kwargs' field does not fit"),
        (
            {"kwargs": {"num_classes": 5}},
            {},
            "must output \\(batch, 10, \\.\\.\\.\\).*head: replace",
        ),
        ({"classifier": "pool"}, {}, "'model.classifier' field must name a Conv2d or Linear"),
        ({"droppable_blocks": ["nothing.*"]}, {}, "'model.droppable_blocks'.*match none"),
        ({"droppable_blocks": ["stem"]}, {}, "maps \\(1, 1, 8, 8\\) to \\(1, 8, 8, 8\\)"),
        ({}, {"exclude": ["nothing"]}, "'space.exclude' field.*match none"),
        ({}, {"overrides": {"nothing": {"w_bits": 8}}}, "'space.overrides' field.*match none"),
    ],
)
def test_bad_model_settings_name_the_field(tiny_net, model, space, message):
    config = _config(**model)
    config["space"].update(space)
    with pytest.raises(ValueError, match=message):
        _space(config)


def test_an_input_shape_the_network_cannot_take_is_named(tiny_net):
    config = {**_config(), "data": {"dataset": "synthetic", "synthetic_shape": [3, 8, 8]}}
    with pytest.raises(ValueError, match="cannot run on the data's inputs of shape \\(3, 8, 8\\)"):
        JointSearchSpace(parse_config(config).space, num_classes=10, input_shape=(3, 8, 8))


def test_space_family_and_model_are_one_choice(tiny_net):
    with pytest.raises(ConfigError, match="space.family"):
        parse_config({**_config(), "space": {"family": "mlp"}})
    with pytest.raises(ConfigError, match="model.checkpoint"):
        parse_config(_config(checkpoint="missing.pt"))


def test_the_checkpoint_is_the_teacher_and_is_known_by_its_bytes(tiny_net):
    checkpoint = _checkpoint(tiny_net / "net.pt")
    config = parse_config(_config(checkpoint=checkpoint))
    result = run_search(config, runs_dir=tiny_net / "runs")
    from tiny_net import build

    loaded = build()
    loaded.load_state_dict(torch.load(checkpoint, weights_only=True))
    teacher = torch.load(result.run_dir / "teacher" / "model.pt", weights_only=True)
    # Not retrained: the teacher's weights are the checkpoint's.
    assert all(torch.equal(teacher[k], v) for k, v in loaded.state_dict().items())
    before = teacher_fingerprint(config)
    torch.manual_seed(1)
    torch.save(build().state_dict(), checkpoint)  # the same name, other weights
    assert teacher_fingerprint(config) != before


def test_a_replaced_head_is_trained_on_the_data(tiny_net):
    checkpoint = _checkpoint(tiny_net / "net5.pt", num_classes=5)
    config = _config(checkpoint=checkpoint, kwargs={"num_classes": 5}, head="replace")
    config["teacher"]["epochs"] = 8  # the new head (and the rest) fine-tuned on the data
    result = run_search(parse_config(config), runs_dir=tiny_net / "runs")
    assert result.teacher_metrics["accuracy"] > 0.3  # 10 classes, trained head
    assert result.trials["state"].eq("COMPLETE").all()


@pytest.mark.parametrize(
    ("saved", "message"),
    [
        ([1, 2, 3], "must hold a state_dict"),
        ({"weights": {"fc.weight": torch.zeros(10, 8)}}, "must hold a state_dict"),
        ({"fc.weight": torch.zeros(10, 8), "extra.weight": torch.zeros(1)}, "missing .*unexpected"),
        ({"state_dict": {"fc.weight": torch.zeros(3, 8)}}, "of another shape \\['fc.weight'\\]"),
    ],
)
def test_a_checkpoint_that_does_not_fit_lists_the_keys(tiny_net, saved, message):
    torch.save(saved, tiny_net / "bad.pt")
    config = parse_config(_config(checkpoint=str(tiny_net / "bad.pt")))
    with pytest.raises(ValueError, match=message):
        run_search(config, runs_dir=tiny_net / "runs")


def test_a_network_torch_pruning_cannot_trace_is_searched_for_bits_only(
    tiny_net, monkeypatch, caplog
):
    def cannot_trace(*args, **kwargs):
        raise RuntimeError("unsupported op")

    monkeypatch.setattr("autocompress.spaces.groups.build_dependency_graph", cannot_trace)
    with caplog.at_level("WARNING", logger="autocompress"):
        space = _space(_config())
        candidate = space.suggest(optuna.create_study().ask())
    assert "cannot trace the channel groups of Net" in caplog.text
    assert all(choice.prune_ratio == 0 for choice in candidate.layers.values())


def test_attention_projections_are_left_in_float():
    # nn.MultiheadAttention reads its projections' weights without calling them: a fake-quant
    # layer there would be priced but never applied, so they get no bits.
    from torchvision.models import VisionTransformer

    from autocompress.spaces import conv_linear_layers

    vit = VisionTransformer(
        image_size=32, patch_size=4, num_layers=2, num_heads=4, hidden_dim=32, mlp_dim=64
    )
    layers = conv_linear_layers(vit)
    assert "encoder.layers.encoder_layer_0.mlp.0" in layers and "heads.head" in layers
    assert not any("self_attention" in name for name in layers)
