"""Attention priced by the analytic profile: its matmuls (and an nn.MultiheadAttention's
projections), fewer with pruned heads, none for a dropped encoder block."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import VisionTransformer

from autocompress.compression import prune_
from autocompress.hardware_profiles import AnalyticProfile, layer_costs
from autocompress.spaces.attention import split_attention_

SHAPE = (3, 16, 16)  # 16 patches of 4x4 and a class token: 17 tokens
TOKENS, WIDTH = 17, 32


def _vit() -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(
        image_size=16, patch_size=4, num_layers=2, num_heads=4, hidden_dim=WIDTH, mlp_dim=64
    )


def _attention_macs(model: nn.Module) -> dict[str, int]:
    costs = layer_costs(model, input_shape=SHAPE, attention=True)
    return {c.name.split(".")[2]: c.macs for c in costs if c.kind == "attention"}


def test_attention_is_costed_only_on_request():
    vit = _vit()
    assert all(c.kind != "attention" for c in layer_costs(vit, input_shape=SHAPE))
    matmuls = 2 * TOKENS * TOKENS * WIDTH  # scores and weighted values, all heads
    projections = 4 * TOKENS * WIDTH * WIDTH  # q, k, v and out, run inside the call
    assert _attention_macs(vit) == dict.fromkeys(
        ["encoder_layer_0", "encoder_layer_1"], matmuls + projections
    )
    split_attention_(vit)  # the projections become Linear rows of their own
    assert _attention_macs(vit) == dict.fromkeys(["encoder_layer_0", "encoder_layer_1"], matmuls)
    linear = [c.name for c in layer_costs(vit, input_shape=SHAPE) if c.kind == "linear"]
    assert "encoder.layers.encoder_layer_0.self_attention.k_proj" in linear


def test_pruned_heads_and_dropped_blocks_cost_less():
    profile = AnalyticProfile(device="cortex_a72")
    vit = _vit()
    split_attention_(vit)
    full = profile.profile(vit, input_shape=SHAPE)
    assert len(full.details["attention"]) == 2 and full.latency_ms > 0
    name = "encoder.layers.encoder_layer_0.self_attention.q_proj"
    prune_(vit, {name: 0.5}, torch.zeros(1, *SHAPE), ignored=["heads.head"])
    pruned = profile.profile(vit, input_shape=SHAPE)
    assert _attention_macs(vit)["encoder_layer_0"] == TOKENS * TOKENS * WIDTH  # half the heads
    assert pruned.latency_ms < full.latency_ms
    assert pruned.details["total_macs"] < full.details["total_macs"]
    vit.encoder.layers.encoder_layer_1 = nn.Identity()
    dropped = profile.profile(vit, input_shape=SHAPE)
    assert [row["name"] for row in dropped.details["attention"]] == [name.rsplit(".", 1)[0]]
    assert dropped.latency_ms < pruned.latency_ms
    # "layers" stays one row per Conv/Linear call, as in every profile.
    assert len(dropped.details["layers"]) == len(layer_costs(vit, input_shape=SHAPE))
