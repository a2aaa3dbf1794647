"""torchvision's VisionTransformer as the user's network: per-Linear bits (attention projections
too), MLP widths and attention heads pruned, encoder blocks dropped; searched, priced, trained
and exported."""

from __future__ import annotations

import json
import math

import optuna
import pandas as pd
import pytest
import torch
import yaml
from torch import nn
from torchvision.models import VisionTransformer
from typer.testing import CliRunner

from autocompress.cli import app
from autocompress.compression import build_compressed
from autocompress.compression.serialization import load_model, save_model
from autocompress.config import parse_config
from autocompress.spaces import Candidate, JointSearchSpace
from autocompress.spaces.attention import SplitAttention
from autocompress.spaces.user_model import load_checkpoint_

KWARGS = {
    "image_size": 16,
    "patch_size": 4,
    "num_layers": 2,
    "num_heads": 4,
    "hidden_dim": 32,
    "mlp_dim": 64,
    "num_classes": 10,
}
SHAPE = (3, 16, 16)
BLOCKS = ["encoder.layers.encoder_layer_0", "encoder.layers.encoder_layer_1"]


def _config(**model) -> dict:
    return {
        "name": "vit",
        "seed": 0,
        "data": {
            "dataset": "synthetic",
            "synthetic_shape": list(SHAPE),
            "synthetic_samples": 400,
            "batch_size": 64,
        },
        "model": {
            "factory": "torchvision.models:VisionTransformer",
            "kwargs": KWARGS,
            "droppable_blocks": "auto",
            **model,
        },
        "space": {"w_bits": [4, 8], "a_bits": [8], "prune_ratios": [0.0, 0.5]},
        "train": {"epochs": 1, "lr": 0.003},
        "hardware": {"profile": "analytic", "device": "cortex_a72"},
        "search": {"n_trials": 6, "sampler": "random", "objectives": ["accuracy", "latency_ms"]},
    }


def test_heads_widths_bits_and_blocks_are_searched_without_exclude():
    space = JointSearchSpace(parse_config(_config()).space, num_classes=10, input_shape=SHAPE)
    assert space.family.blocks == BLOCKS
    layers, prunable = space.layer_dimensions(space.family.largest_arch())
    attention = f"{BLOCKS[0]}.self_attention"
    assert {f"{attention}.{p}_proj" for p in ("q", "k", "v", "out")} <= set(layers)  # bits
    assert "conv_proj" in layers and "conv_proj" not in prunable  # the residual width stays
    assert prunable == [
        name for block in BLOCKS for name in (f"{block}.self_attention.q_proj", f"{block}.mlp.0")
    ]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(6):
        candidate = space.suggest(study.ask())
        model = build_compressed(candidate, num_classes=10, input_shape=SHAPE)
        assert model(torch.zeros(2, *SHAPE)).shape == (2, 10)


def test_a_checkpoint_of_the_unsplit_network_loads(tmp_path):
    torch.manual_seed(0)
    original = VisionTransformer(**KWARGS).eval()
    torch.save(original.state_dict(), tmp_path / "vit.pt")
    space = JointSearchSpace(parse_config(_config()).space, num_classes=10, input_shape=SHAPE)
    model = space.family.build(space.family.largest_arch(), num_classes=10, input_shape=SHAPE)
    assert isinstance(model.encoder.layers[0].self_attention, SplitAttention)
    load_checkpoint_(model.eval(), tmp_path / "vit.pt")
    x = torch.randn(2, *SHAPE)
    torch.testing.assert_close(model(x), original(x), atol=1e-5, rtol=1e-5)


def test_a_model_saved_before_attention_was_split_loads(tmp_path):
    # A run folder's teacher, saved with nn.MultiheadAttention's keys (in_proj_weight).
    torch.manual_seed(0)
    original = VisionTransformer(**KWARGS).eval()
    arch = {"factory": "torchvision.models:VisionTransformer", "kwargs": KWARGS, "dropped": []}
    candidate = Candidate(family="model", arch=arch)
    save_model(tmp_path, original, candidate=candidate, num_classes=10, input_shape=SHAPE)
    model, _ = load_model(tmp_path)
    x = torch.randn(2, *SHAPE)
    torch.testing.assert_close(model.eval()(x), original(x), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_a_vit_is_searched_priced_trained_and_exported(tmp_path, monkeypatch):
    torch.manual_seed(0)
    torch.save(VisionTransformer(**KWARGS).state_dict(), tmp_path / "vit.pt")
    (tmp_path / "vit.yaml").write_text(yaml.safe_dump(_config(checkpoint="vit.pt")))
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    result = runner.invoke(app, ["search", "vit.yaml", "--runs-dir", "runs"])
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "vit"

    trials = pd.read_csv(run / "trials.csv").set_index("number")
    heads_pruned, blocks_dropped = [], []
    for folder in (run / "trials").iterdir():
        model, _ = load_model(folder)  # the trained candidate, as the search saved it
        if any(m.num_heads < 4 for m in model.modules() if isinstance(m, SplitAttention)):
            heads_pruned.append(int(folder.name))
        if any(isinstance(model.get_submodule(b), nn.Identity) for b in BLOCKS):
            blocks_dropped.append(int(folder.name))
    assert heads_pruned and blocks_dropped
    for number in heads_pruned + blocks_dropped:
        row = trials.loc[number]
        assert row["state"] == "COMPLETE"
        assert math.isfinite(row["accuracy"]) and math.isfinite(row["latency_ms"])

    trial = min(heads_pruned)
    out = tmp_path / "onnx"
    result = runner.invoke(
        app, ["export", str(run), "--trial", str(trial), "--format", "onnx", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "export_report.json").read_text())
    assert report["passed"] and (out / "model.onnx").is_file()
