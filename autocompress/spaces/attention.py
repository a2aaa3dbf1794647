"""``nn.MultiheadAttention`` rebuilt from four ``nn.Linear`` projections, so that the search can
give them bits, price them and remove whole heads.

``nn.MultiheadAttention`` reads its projection weights inside one fused function instead of
calling layers: a fake-quant layer in their place would never run, a profile's layer hooks never
see them, and its ``embed_dim`` is at once the width of its heads and of its input and output,
so it cannot lose a head without the whole residual stream losing width. :class:`SplitAttention`
computes the same function with separate q/k/v/out ``nn.Linear`` layers whose inner width
(``num_heads * head_dim``) is its own: removing a head removes ``head_dim`` output channels of
q, k and v and the matching input channels of out, and nothing outside the module changes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["SplitAttention", "query_projections", "split_attention_", "split_attention_keys"]


class SplitAttention(nn.Module):
    """Multi-head attention as ``nn.MultiheadAttention`` computes it (same call, same outputs),
    with its projections as ``q_proj``/``k_proj``/``v_proj``/``out_proj`` ``nn.Linear`` layers.

    It loads ``nn.MultiheadAttention`` state dicts too (``in_proj_weight`` is split into the
    three projections), so checkpoints and saved models of the unsplit network still load. With
    heads removed, a per-head ``attn_mask`` (``batch * num_heads`` masks) must hold one mask per
    head kept.
    """

    # nn.TransformerEncoderLayer reads these of its self_attn to choose its fused fast path,
    # which would bypass this module; None and False send it down the path that calls it.
    in_proj_bias = None
    _qkv_same_embed_dim = False

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        *,
        kdim: int | None = None,
        vdim: int | None = None,
        bias: bool = True,
        dropout: float = 0.0,
        batch_first: bool = False,
    ) -> None:
        super().__init__()
        if num_heads < 1 or embed_dim % num_heads:
            raise ValueError(
                f"The 'embed_dim' parameter of SplitAttention must be a multiple of num_heads "
                f"({num_heads}). Got {embed_dim} instead."
            )
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.head_dim = embed_dim // num_heads  # kept when heads are removed
        self.dropout, self.batch_first = dropout, batch_first
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.k_proj = nn.Linear(kdim or embed_dim, embed_dim, bias=bias)
        self.v_proj = nn.Linear(vdim or embed_dim, embed_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.register_load_state_dict_pre_hook(_split_keys_hook)

    @classmethod
    def from_attention(cls, attention: nn.MultiheadAttention) -> SplitAttention:
        """The equivalent of ``attention``, with its weights."""
        split = cls(
            attention.embed_dim,
            attention.num_heads,
            kdim=attention.kdim,
            vdim=attention.vdim,
            bias=attention.out_proj.bias is not None,
            dropout=attention.dropout,
            batch_first=attention.batch_first,
        )
        split.to(attention.out_proj.weight).load_state_dict(attention.state_dict())
        return split.train(attention.training)

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        batched = query.dim() == 3
        if not batched:  # one sequence, (length, embed)
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif not self.batch_first:  # (length, batch, embed)
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        q = self._heads(self.q_proj(query))  # (batch, heads, length, head_dim)
        k = self._heads(self.k_proj(key))
        v = self._heads(self.v_proj(value))
        scores = (q @ k.transpose(-2, -1)) * self.head_dim**-0.5
        if is_causal and attn_mask is None:
            length, source = scores.shape[-2:]
            attn_mask = torch.ones(length, source, dtype=torch.bool, device=q.device).triu(1)
        if attn_mask is not None:
            mask = _additive(attn_mask, scores.dtype)
            scores = scores + (mask.unflatten(0, (-1, self.num_heads)) if mask.dim() == 3 else mask)
        if key_padding_mask is not None:
            scores = scores + _additive(key_padding_mask, scores.dtype)[:, None, None, :]
        weights = F.dropout(scores.softmax(dim=-1), p=self.dropout, training=self.training)
        output = self.out_proj((weights @ v).transpose(1, 2).flatten(2))
        if not batched:
            output, weights = output.squeeze(0), weights.squeeze(0)
        elif not self.batch_first:
            output = output.transpose(0, 1)
        if not need_weights:
            return output, None
        return output, weights.mean(dim=-3) if average_attn_weights else weights

    def _heads(self, x: Tensor) -> Tensor:
        return x.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, head_dim={self.head_dim}"


def split_attention_(model: nn.Module) -> list[str]:
    """Replace, in place, every ``nn.MultiheadAttention`` inside ``model`` by its
    :class:`SplitAttention`; returns their names. Ones with ``add_bias_kv`` or
    ``add_zero_attn`` (extra key/value rows that SplitAttention does not compute) stay as they
    are, and so does ``model`` itself."""
    found = [
        (name, module)
        for name, module in model.named_modules()
        if name
        and isinstance(module, nn.MultiheadAttention)
        and module.bias_k is None
        and not module.add_zero_attn
    ]
    for name, module in found:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, SplitAttention.from_attention(module))
    return [name for name, _ in found]


def query_projections(model: nn.Module) -> dict[str, SplitAttention]:
    """``{name of its q projection: attention}`` of every SplitAttention of ``model``: the q
    projection leads the group of a head's channels (see ``spaces.groups``)."""
    return {
        f"{name}.q_proj" if name else "q_proj": module
        for name, module in model.named_modules()
        if isinstance(module, SplitAttention)
    }


def split_attention_keys(model: nn.Module, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``state`` with the ``nn.MultiheadAttention`` keys of each SplitAttention of ``model``
    renamed to its projections' (what ``load_state_dict`` does by itself, for code that checks
    the keys before loading)."""
    state = dict(state)
    for name, module in model.named_modules():
        if isinstance(module, SplitAttention):
            _split_keys(state, f"{name}." if name else "")
    return state


def _split_keys(state: dict[str, Tensor], prefix: str) -> None:
    for suffix in ("weight", "bias"):
        packed = state.pop(f"{prefix}in_proj_{suffix}", None)
        if packed is not None:  # q, k and v stacked, as nn.MultiheadAttention keeps them
            for part, tensor in zip("qkv", packed.chunk(3), strict=True):
                state[f"{prefix}{part}_proj.{suffix}"] = tensor
    for part in "qkv":  # nn.MultiheadAttention with a kdim or vdim of its own
        weight = state.pop(f"{prefix}{part}_proj_weight", None)
        if weight is not None:
            state[f"{prefix}{part}_proj.weight"] = weight


def _split_keys_hook(module: nn.Module, state: dict[str, Tensor], prefix: str, *_: Any) -> None:
    _split_keys(state, prefix)


def _additive(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """A mask to add to attention scores: a bool mask's True (not attended) becomes -inf."""
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
            mask, float("-inf")
        )
    return mask.to(dtype)
