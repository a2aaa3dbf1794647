"""Attention heads pruned whole through Torch-Pruning's group of the q projection, and the
transformer's residual width never offered."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models import VisionTransformer

from autocompress.compression import prunable_layers, prune_
from autocompress.spaces.attention import SplitAttention, split_attention_

LAYER = "encoder.layers.encoder_layer_{}"


def _vit(num_layers: int = 2) -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(
        image_size=16, patch_size=4, num_layers=num_layers, num_heads=4, hidden_dim=32, mlp_dim=64
    ).eval()


class Attend(nn.Module):
    """One self-attention over a (batch, tokens, width) input."""

    def __init__(self) -> None:
        super().__init__()
        self.attention = SplitAttention(16, 4, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.attention(x, x, x, need_weights=False)[0])


def test_the_residual_width_is_never_offered_and_heads_are():
    example = torch.zeros(1, 3, 16, 16)
    vit = _vit()
    # Unsplit, nn.MultiheadAttention shares the patch embedding's width: only the MLPs remain.
    assert prunable_layers(vit, example, ignored=["heads.head"]) == [
        f"{LAYER.format(i)}.mlp.0" for i in (0, 1)
    ]
    split_attention_(vit)
    assert prunable_layers(vit, example, ignored=["heads.head"]) == [
        name
        for i in (0, 1)
        for name in (f"{LAYER.format(i)}.self_attention.q_proj", f"{LAYER.format(i)}.mlp.0")
    ]


class Tokens(nn.Module):
    """Patches with a class token and a position embedding, and no attention."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 8, 4, stride=4)
        self.class_token = nn.Parameter(torch.zeros(1, 1, 8))
        self.position = nn.Parameter(torch.zeros(1, 5, 8))
        self.mlp = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8))
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_token.expand(len(x), -1, -1), x], dim=1) + self.position
        return self.head((x + self.mlp(x))[:, 0])


def test_a_width_that_token_parameters_share_is_not_offered():
    # As in a ViT whose encoder blocks are all dropped: the class token and position embedding
    # tie the patch embedding's width to code outside any layer.
    offered = prunable_layers(Tokens(), torch.zeros(1, 3, 8, 8), ignored=["head"])
    assert offered == ["mlp.0"]


@pytest.mark.parametrize(("ratio", "heads"), [(0.25, 3), (0.3, 3), (0.5, 2), (0.9, 1)])
def test_a_ratio_removes_whole_heads_and_keeps_one(ratio, heads):
    vit = _vit()
    split_attention_(vit)
    name = f"{LAYER.format(0)}.self_attention"
    example = torch.zeros(1, 3, 16, 16)
    prune_(vit, {f"{name}.q_proj": ratio}, example, ignored=["heads.head"])
    attention = vit.get_submodule(name)
    assert attention.num_heads == heads and attention.head_dim == 8
    assert attention.q_proj.out_features == attention.v_proj.out_features == heads * 8
    assert attention.out_proj.in_features == heads * 8 and attention.out_proj.out_features == 32
    assert vit.get_submodule(f"{LAYER.format(1)}.self_attention").num_heads == 4
    assert vit(torch.randn(2, 3, 16, 16)).shape == (2, 1000)


def test_the_weakest_heads_go_and_the_rest_compute_as_before():
    torch.manual_seed(0)
    model = Attend().eval()
    attention = model.attention
    with torch.no_grad():  # heads 1 and 3 weakest; their values zero, so they add nothing
        for projection in (attention.q_proj, attention.k_proj, attention.v_proj):
            for head in (1, 3):
                projection.weight[head * 4 : head * 4 + 4] *= 0.01
        for head in (1, 3):
            attention.v_proj.weight[head * 4 : head * 4 + 4] = 0
            attention.v_proj.bias[head * 4 : head * 4 + 4] = 0
    x = torch.randn(2, 5, 16)
    expected = model(x)
    kept_q = torch.cat([attention.q_proj.weight[0:4], attention.q_proj.weight[8:12]])
    prune_(model, {"attention.q_proj": 0.5}, torch.zeros(1, 5, 16), ignored=["head"])
    assert model.attention.num_heads == 2
    assert torch.equal(model.attention.q_proj.weight, kept_q)
    torch.testing.assert_close(model(x), expected, atol=1e-6, rtol=1e-5)
