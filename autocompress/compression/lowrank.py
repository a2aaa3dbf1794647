"""Low-rank factorization: a Conv2d/Linear layer becomes two thinner layers, from its weights'
truncated SVD.

A ``rows x cols`` weight matrix ``W = U S V^T`` keeps its ``r`` largest singular values:
``W ~ (U_r S_r^1/2)(S_r^1/2 V_r^T)``, the best rank-``r`` approximation in Frobenius norm (its
squared error is the sum of the discarded ``sigma^2``). The square root goes to both factors so
that neither holds the whole dynamic range: both are quantized per output channel afterwards.

* Linear ``in -> out``: ``Linear(in, r, bias=False)`` then ``Linear(r, out)`` with the bias.
* Conv2d ``in -> out``, ``k x k``, one group (channel SVD of ``W`` reshaped to
  ``out x in*k*k``): a ``k x k`` conv to ``r`` channels (same stride, padding, dilation, no bias),
  then a ``1 x 1`` conv to ``out`` channels with the bias.
* Conv2d, spatial SVD (``kinds[name] == "spatial"``; Jaderberg et al. 2014, scheme 2): ``W``
  rearranged to ``(in*kh) x (out*kw)``, ``M[(i, y), (o, x)] = W[o, i, y, x]``; a ``kh x 1``
  conv to ``r`` channels (the vertical stride, padding and dilation) then a ``1 x kw`` conv
  (the horizontal ones) with the bias. Zero padding splits the same way, so at full rank the
  pair computes the layer exactly.

The pair is a :class:`Factorized` (an ``nn.Sequential``), so the layer keeps its name and its
two factors are ``<name>.0`` and ``<name>.1``: ordinary layers that ``quantize_``, the hardware
profiles and the exports see as two layers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

import torch
from torch import Tensor, nn

from ..spaces.candidate import FULL_RANK, SPATIAL, factorizable_shape, low_rank, spatial_shape
from ..spaces.groups import check_module_names
from .quantization import QuantConv2d, QuantLinear

__all__ = ["Factorized", "factor_names", "factorize_", "truncated_svd"]

_T = TypeVar("_T")


class Factorized(nn.Sequential):
    """A layer factorized into ``first`` (to the rank's channels, no bias) and ``second``."""

    def __init__(self, first: nn.Module, second: nn.Module) -> None:
        super().__init__(first, second)

    @property
    def rank(self) -> int:
        first = self[0]
        return first.out_channels if isinstance(first, nn.Conv2d) else first.out_features


def truncated_svd(weight: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """``(left, right)`` with ``left @ right`` the best rank-``rank`` approximation of the 2-D
    ``weight``: ``left = U_r S_r^1/2`` (``rows x rank``), ``right = S_r^1/2 V_r^T``
    (``rank x cols``), in ``weight``'s dtype (computed in float64)."""
    if weight.dim() != 2 or not 1 <= rank <= min(weight.shape):
        raise ValueError(
            f"The 'rank' parameter of truncated_svd must lie in [1, {min(weight.shape)}] for a "
            f"2-D weight of shape {tuple(weight.shape)}. Got {rank!r} instead."
        )
    u, s, vh = torch.linalg.svd(weight.detach().double(), full_matrices=False)
    root = s[:rank].sqrt()
    left = u[:, :rank] * root
    right = root[:, None] * vh[:rank]
    return left.to(weight.dtype), right.to(weight.dtype)


def factorize_(
    model: nn.Module, ratios: Mapping[str, float], kinds: Mapping[str, str] | None = None
) -> nn.Module:
    """Replace each named Conv2d/Linear of ``model`` by its :class:`Factorized` pair, in place.

    ``ratios`` maps fully-qualified layer names to a rank ratio in (0, 1]; the rank is
    ``low_rank(ratio, rows, cols)`` of the layer as it is now (after pruning), and 1.0 leaves a
    layer whole. ``kinds`` names the layers split spatially (``"spatial"``; see
    ``spatial_shape``); the others are split by channel. Run it on float layers, before
    ``quantize_``. A ratio is applied as given even if pruning made the layer so thin that the
    factors outweigh it: the space checked that it pays on the unpruned layer, and the hardware
    profile prices what is built. Everything is
    validated before the model is touched. Returns ``model``.
    """
    modules = check_module_names(
        model, ratios, rule="The 'ratios' parameter of factorize_ must be keyed by"
    )
    for name, ratio in ratios.items():
        module = modules[name]
        if isinstance(module, QuantConv2d | QuantLinear) or factorizable_shape(module) is None:
            raise ValueError(
                "The 'ratios' parameter of factorize_ must name float nn.Linear or one-group "
                f"nn.Conv2d layers (run it before quantize_). Got {name!r} "
                f"({type(module).__name__}) instead."
            )
        if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0 < ratio <= 1:
            raise ValueError(
                f"The 'ratios[{name!r}]' parameter of factorize_ must be a number in (0, 1]. "
                f"Got {ratio!r} instead."
            )
        if (kinds or {}).get(name, "channel") == SPATIAL and spatial_shape(module) is None:
            raise ValueError(
                "The 'kinds' parameter of factorize_ must name as 'spatial' only one-group "
                f"Conv2d layers with kh, kw > 1 and zero padding. Got {name!r} instead."
            )
        if name == "" and ratio < FULL_RANK:
            raise ValueError(
                "The 'ratios' parameter of factorize_ must not name the root module '' (a "
                "module cannot replace itself in place)."
            )
    for name, ratio in ratios.items():
        if ratio >= FULL_RANK:
            continue
        module = modules[name]
        parent, _, child = name.rpartition(".")
        if (kinds or {}).get(name) == SPATIAL:
            pair = _spatially_factorized(module, low_rank(ratio, *spatial_shape(module)))
        else:
            pair = _factorized(module, low_rank(ratio, *factorizable_shape(module)))
        setattr(modules[parent], child, pair)
    return model


def factor_names(per_layer: Mapping[str, _T], factorized: Mapping[str, float]) -> dict[str, _T]:
    """``per_layer`` (e.g. bits keyed by layer name) with each layer that ``factorize_`` split
    at a ratio below 1 replaced by its two factors, which get the layer's value."""
    split = {name for name, ratio in factorized.items() if ratio < FULL_RANK}
    out: dict[str, _T] = {}
    for name, value in per_layer.items():
        if name in split:
            out[f"{name}.0"] = out[f"{name}.1"] = value
        else:
            out[name] = value
    return out


@torch.no_grad()
def _factorized(module: nn.Module, rank: int) -> Factorized:
    like = {"device": module.weight.device, "dtype": module.weight.dtype}
    rows = module.weight.shape[0]
    left, right = truncated_svd(module.weight.reshape(rows, -1), rank)
    if isinstance(module, nn.Linear):
        first = nn.Linear(module.in_features, rank, bias=False, **like)
        second = nn.Linear(rank, module.out_features, bias=module.bias is not None, **like)
        first.weight.copy_(right)
        second.weight.copy_(left)
    else:
        first = nn.Conv2d(
            module.in_channels,
            rank,
            module.kernel_size,
            stride=module.stride,
            padding=module.padding,
            dilation=module.dilation,
            bias=False,
            padding_mode=module.padding_mode,
            **like,
        )
        second = nn.Conv2d(rank, module.out_channels, 1, bias=module.bias is not None, **like)
        first.weight.copy_(right.reshape(first.weight.shape))
        second.weight.copy_(left.reshape(second.weight.shape))
    return _pair(module, first, second)


@torch.no_grad()
def _spatially_factorized(conv: nn.Conv2d, rank: int) -> Factorized:
    like = {"device": conv.weight.device, "dtype": conv.weight.dtype}
    out, in_, kh, kw = conv.weight.shape
    # M[(i, y), (o, x)] = W[o, i, y, x]
    matrix = conv.weight.permute(1, 2, 0, 3).reshape(in_ * kh, out * kw)
    left, right = truncated_svd(matrix, rank)  # (in*kh) x r, r x (out*kw)
    (sh, sw), (ph, pw), (dh, dw) = conv.stride, conv.padding, conv.dilation
    first = nn.Conv2d(
        in_, rank, (kh, 1), stride=(sh, 1), padding=(ph, 0), dilation=(dh, 1), bias=False, **like
    )
    second = nn.Conv2d(
        rank,
        out,
        (1, kw),
        stride=(1, sw),
        padding=(0, pw),
        dilation=(1, dw),
        bias=conv.bias is not None,
        **like,
    )
    first.weight.copy_(left.reshape(in_, kh, rank).permute(2, 0, 1).unsqueeze(-1))
    second.weight.copy_(right.reshape(rank, out, kw).permute(1, 0, 2).unsqueeze(2))
    return _pair(conv, first, second)


def _pair(module: nn.Module, first: nn.Module, second: nn.Module) -> Factorized:
    if module.bias is not None:
        second.bias.copy_(module.bias)
    pair = Factorized(first, second)
    for param in pair.parameters():
        param.requires_grad_(module.weight.requires_grad)
    return pair.train(module.training)
