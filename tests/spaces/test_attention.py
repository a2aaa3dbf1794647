"""SplitAttention: nn.MultiheadAttention's function from four Linear projections, its weights and
state dicts, and where it replaces nn.MultiheadAttention."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from autocompress.spaces.attention import (
    SplitAttention,
    query_projections,
    split_attention_,
    split_attention_keys,
)


def _inputs(batch_first: bool, kdim: int, vdim: int) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(0)

    def sequence(length: int, width: int) -> torch.Tensor:
        shape = (3, length, width) if batch_first else (length, 3, width)
        return torch.randn(shape, generator=generator)

    return sequence(7, 16), sequence(5, kdim), sequence(5, vdim)


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("dims", [{}, {"kdim": 6, "vdim": 5}, {"bias": False}])
@pytest.mark.parametrize(
    "call",
    [
        {},
        {"attn_mask": torch.rand(7, 5, generator=torch.Generator().manual_seed(1)) > 0.7},
        {"attn_mask": -3 * torch.rand(7, 5, generator=torch.Generator().manual_seed(2))},
        {"key_padding_mask": torch.tensor([[False] * 4 + [True]] * 3)},
        {"average_attn_weights": False},
    ],
)
def test_it_computes_what_multihead_attention_computes(batch_first, dims, call):
    torch.manual_seed(0)
    attention = nn.MultiheadAttention(16, 4, batch_first=batch_first, **dims).eval()
    split = SplitAttention.from_attention(attention).eval()
    inputs = _inputs(batch_first, dims.get("kdim", 16), dims.get("vdim", 16))
    (expected, expected_weights), (output, weights) = (
        attention(*inputs, **call),
        split(*inputs, **call),
    )
    torch.testing.assert_close(output, expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(weights, expected_weights, atol=1e-6, rtol=1e-5)


def test_unbatched_causal_and_per_head_masks():
    torch.manual_seed(0)
    attention = nn.MultiheadAttention(16, 4, batch_first=True).eval()
    split = SplitAttention.from_attention(attention).eval()
    x = torch.randn(5, 16)
    torch.testing.assert_close(split(x, x, x)[0], attention(x, x, x)[0])
    batch = torch.randn(2, 5, 16)
    per_head = torch.randn(2 * 4, 5, 5)
    torch.testing.assert_close(
        split(batch, batch, batch, attn_mask=per_head)[0],
        attention(batch, batch, batch, attn_mask=per_head)[0],
    )
    causal = nn.Transformer.generate_square_subsequent_mask(5)
    torch.testing.assert_close(
        split(batch, batch, batch, is_causal=True, need_weights=False)[0],
        attention(batch, batch, batch, attn_mask=causal, is_causal=True)[0],
    )


def test_a_transformer_encoder_runs_it_instead_of_its_fused_path():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True)
    encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()
    x = torch.randn(2, 5, 16)
    expected = encoder(x)
    assert split_attention_(encoder) == ["layers.0.self_attn", "layers.1.self_attn"]
    assert isinstance(encoder.layers[0].self_attn, SplitAttention)
    torch.testing.assert_close(encoder(x), expected, atol=1e-5, rtol=1e-5)
    assert list(query_projections(encoder)) == [
        "layers.0.self_attn.q_proj",
        "layers.1.self_attn.q_proj",
    ]


def test_extra_key_value_rows_keep_multihead_attention():
    model = nn.Sequential(nn.MultiheadAttention(8, 2, add_bias_kv=True))
    assert split_attention_(model) == [] and isinstance(model[0], nn.MultiheadAttention)


def test_multihead_attention_state_dicts_load():
    torch.manual_seed(0)
    attention = nn.MultiheadAttention(16, 4)
    split = SplitAttention(16, 4)
    split.load_state_dict(attention.state_dict())  # in_proj_weight is split into q, k, v
    q, k, v = attention.in_proj_weight.chunk(3)
    assert torch.equal(split.k_proj.weight, k) and torch.equal(
        split.v_proj.bias, attention.in_proj_bias[32:]
    )
    assert torch.equal(split.q_proj.weight, q) and torch.equal(
        split.out_proj.weight, attention.out_proj.weight
    )
    # Separate q/k/v weights (a kdim or vdim of its own) load too.
    other = nn.MultiheadAttention(16, 4, kdim=6, vdim=5)
    model = nn.Sequential(SplitAttention(16, 4, kdim=6, vdim=5))
    state = split_attention_keys(model, {f"0.{k}": t for k, t in other.state_dict().items()})
    assert set(state) == set(model.state_dict())
    assert torch.equal(state["0.k_proj.weight"], other.k_proj_weight)


def test_embed_dim_must_split_into_heads():
    with pytest.raises(
        ValueError, match="'embed_dim' parameter of SplitAttention must be a multiple"
    ):
        SplitAttention(10, 4)
