"""The unit the search produces: one point in the joint architecture x bits x pruning x rank
x sparsity space."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

CANDIDATE_FORMAT_VERSION = 1
FLOAT_BITS = 32  # at this many bits (or more) a tensor is left in floating point (no fake-quant)
MIN_BITS = 2  # symmetric weights need at least one level on each side of zero
FULL_RANK = 1.0  # a rank_ratio of 1.0 leaves the layer unfactorized
UNIFORM = "uniform"  # the weight quantizer of every layer unless a run searches others
CODEBOOK = "codebook"  # zero is not one of its values: a codebook layer is never sparse
QUANTIZERS = (UNIFORM, "pot", "apot", CODEBOOK)  # see compression.quantization
# Non-uniform weight quantizers only up to 8 bits: a 2^b-entry table is cheap there, PoT levels
# 2^-k stay within float32's normal range (k <= 126), and wider layers gain nothing from them.
NONUNIFORM_MAX_BITS = 8
DENSE = 0.0  # a sparsity of 0 leaves every weight of the layer
CHANNEL = "channel"  # low-rank: k x k conv to r channels, then 1 x 1 (see compression.lowrank)
SPATIAL = "spatial"  # low-rank: k x 1 conv to r channels, then 1 x k
FACTORIZATIONS = (CHANNEL, SPATIAL)
Sparsity = float | str  # a fraction of zero weights in [0, 1), or an "N:M" pattern string


@dataclass(frozen=True)
class LayerChoice:
    """Compression of one Conv2d/Linear layer.

    ``w_bits``/``a_bits``: bit-width of the layer's weights and of its *input* activations.
    ``prune_ratio``: fraction of the layer's output channels removed; only layers that lead a
    pruning group (see ``compression.pruning.prunable_layers``) ever get a non-zero ratio. On the
    q projection of an attention layer (``SplitAttention``) it is the fraction of its heads
    removed, rounded down to whole heads.
    ``rank_ratio``: low-rank factorization of the (pruned) layer into two layers through
    ``low_rank(rank_ratio, rows, cols)`` channels (see there); 1.0 leaves the layer whole. The
    space records a ratio < 1 only where the two factors have fewer weights and MACs than the
    unpruned layer (``low_rank_pays``).
    ``quantizer``: how the weights are quantized, one of ``QUANTIZERS``: ``uniform`` (the
    symmetric per-channel integer grid), ``pot``, ``apot`` or ``codebook`` (see
    ``compression.quantization``); non-uniform only at ``2 <= w_bits <= NONUNIFORM_MAX_BITS``.
    Activations are always uniform.
    ``sparsity``: fine-grained weight sparsity of the (pruned, factorized) layer: a fraction of
    zero weights in [0, 1) or an ``"N:M"`` pattern (N kept of every M consecutive weights along
    the input dimension; see ``compression.sparsity``); 0.0 leaves it dense.
    ``factorization``: how a layer with ``rank_ratio < 1`` is split: ``channel`` (any
    Conv2d/Linear) or ``spatial`` (a ``kh x kw`` conv into ``kh x 1`` then ``1 x kw``; only where
    ``spatial_shape`` allows it and it pays).
    """

    w_bits: int = FLOAT_BITS
    a_bits: int = FLOAT_BITS
    prune_ratio: float = 0.0
    rank_ratio: float = FULL_RANK
    quantizer: str = UNIFORM
    sparsity: Sparsity = DENSE
    factorization: str = CHANNEL


@dataclass(frozen=True)
class Candidate:
    """A model family, its architecture knobs, and per-layer compression keyed by layer name.

    Layer names are fully-qualified module names of the model *as built from* ``family`` and
    ``arch`` (before pruning), so a candidate plus the family registry rebuilds the model exactly.
    """

    family: str
    arch: Mapping[str, Any]
    layers: Mapping[str, LayerChoice] = field(default_factory=dict)
    version: int = CANDIDATE_FORMAT_VERSION

    def bits(self) -> dict[str, tuple[int, int]]:
        return {name: (c.w_bits, c.a_bits) for name, c in self.layers.items()}

    def prune_ratios(self) -> dict[str, float]:
        return {name: c.prune_ratio for name, c in self.layers.items() if c.prune_ratio > 0}

    def rank_ratios(self) -> dict[str, float]:
        """The factorized layers: ``{name: rank_ratio}`` where the ratio is below 1."""
        return {name: c.rank_ratio for name, c in self.layers.items() if c.rank_ratio < FULL_RANK}

    def factorizations(self) -> dict[str, str]:
        """The factorized layers split spatially: ``{name: "spatial"}``."""
        return {
            name: c.factorization
            for name, c in self.layers.items()
            if c.rank_ratio < FULL_RANK and c.factorization != CHANNEL
        }

    def quantizers(self) -> dict[str, str]:
        """The layers with a non-uniform weight quantizer: ``{name: quantizer}``."""
        return {name: c.quantizer for name, c in self.layers.items() if c.quantizer != UNIFORM}

    def sparsities(self) -> dict[str, Sparsity]:
        """The sparse layers: ``{name: sparsity}`` where it is not 0."""
        return {name: c.sparsity for name, c in self.layers.items() if c.sparsity != DENSE}

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "family": self.family,
            "arch": _plain(self.arch),
            "layers": {name: _layer_dict(c) for name, c in self.layers.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Candidate:
        version = data.get("version", CANDIDATE_FORMAT_VERSION)
        if version != CANDIDATE_FORMAT_VERSION:
            raise ValueError(
                f"The 'version' field of a candidate must be {CANDIDATE_FORMAT_VERSION}. "
                f"Got {version!r} instead."
            )
        unknown = set(data) - {"version", "family", "arch", "layers"}
        if unknown:
            raise ValueError(f"Unknown candidate field(s): {sorted(unknown)}.")
        layers = {}
        for name, choice in dict(data.get("layers", {})).items():
            try:
                layers[name] = LayerChoice(
                    w_bits=int(choice["w_bits"]),
                    a_bits=int(choice["a_bits"]),
                    prune_ratio=float(choice.get("prune_ratio", 0.0)),
                    # Candidates written before low-rank factorization have no rank_ratio.
                    rank_ratio=float(choice.get("rank_ratio", FULL_RANK)),
                    # Candidates written before non-uniform quantizers have no quantizer.
                    quantizer=str(choice.get("quantizer", UNIFORM)),
                    # ... and before sparsity none has a sparsity.
                    sparsity=canonical_sparsity(choice.get("sparsity", DENSE)),
                    # ... and before spatial factorization every factorization is by channel.
                    factorization=str(choice.get("factorization", CHANNEL)),
                )
            except (KeyError, TypeError, ValueError) as err:
                raise ValueError(
                    f"The 'layers.{name}' field of a candidate must hold integer 'w_bits' and "
                    f"'a_bits', a float 'prune_ratio' and optionally a float 'rank_ratio' and a "
                    f"'sparsity' (a fraction in [0, 1) or 'N:M'). Got {choice!r} instead."
                ) from err
            if layers[name].factorization not in FACTORIZATIONS:
                raise ValueError(
                    f"The 'layers.{name}.factorization' field of a candidate must be one of "
                    f"{list(FACTORIZATIONS)}. Got {layers[name].factorization!r} instead."
                )
            if not 0.0 < layers[name].rank_ratio <= FULL_RANK:
                raise ValueError(
                    f"The 'layers.{name}.rank_ratio' field of a candidate must lie in (0, 1]. "
                    f"Got {layers[name].rank_ratio!r} instead."
                )
            problem = quantizer_problem(layers[name].quantizer, layers[name].w_bits)
            if not problem and layers[name].quantizer == CODEBOOK and layers[name].sparsity:
                problem = f"dense with a codebook. Got sparsity {layers[name].sparsity!r}"
            if problem:
                raise ValueError(
                    f"The 'layers.{name}.quantizer' field of a candidate must be {problem}."
                )
        return cls(family=str(data["family"]), arch=dict(data["arch"]), layers=layers)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Candidate:
        return cls.from_dict(json.loads(text))


def quantizer_problem(quantizer: Any, w_bits: int) -> str:
    """What is wrong with weight quantizer ``quantizer`` on ``w_bits``-bit weights, as the end
    of a "must be ..." sentence; "" when nothing is."""
    if quantizer not in QUANTIZERS:
        return f"one of {list(QUANTIZERS)}. Got {quantizer!r} instead"
    if quantizer != UNIFORM and not MIN_BITS <= w_bits <= NONUNIFORM_MAX_BITS:
        return (
            f"{UNIFORM!r} at w_bits={w_bits}: non-uniform quantizers take "
            f"{MIN_BITS}..{NONUNIFORM_MAX_BITS}-bit weights. Got {quantizer!r} instead"
        )
    return ""


def factorizable_shape(module: nn.Module) -> tuple[int, int] | None:
    """``(rows, cols)`` of the weight matrix a low-rank factorization of ``module`` splits, or
    ``None`` when it is not factorized: a Linear is ``out x in``; a Conv2d with one group is
    ``out x (in * kh * kw)`` (channel SVD: a kh x kw conv to ``r`` channels, then a 1 x 1
    conv). Depthwise and grouped convs are left whole: each group is already a thin matrix."""
    if isinstance(module, nn.Linear):
        return module.out_features, module.in_features
    if isinstance(module, nn.Conv2d) and module.groups == 1:
        kh, kw = module.kernel_size
        return module.out_channels, module.in_channels * kh * kw
    return None


def spatial_shape(module: nn.Module) -> tuple[int, int] | None:
    """``(rows, cols)`` of the matrix a spatial factorization of ``module`` splits: for a
    one-group ``out x in x kh x kw`` Conv2d with ``kh, kw > 1``, zero padding given as numbers,
    the weight rearranged to ``(in * kh) x (out * kw)``, whose rank-``r`` factors are a
    ``kh x 1`` conv to ``r`` channels and a ``1 x kw`` conv (exactly the layer at full rank).
    ``None`` for every other layer."""
    if not isinstance(module, nn.Conv2d) or module.groups != 1:
        return None
    kh, kw = module.kernel_size
    if kh == 1 or kw == 1 or isinstance(module.padding, str) or module.padding_mode != "zeros":
        return None
    return module.in_channels * kh, module.out_channels * kw


def low_rank(ratio: float, rows: int, cols: int) -> int:
    """The inner width ``r`` of a ``rows x cols`` weight matrix factorized at ``ratio``:
    ``max(1, round(ratio * min(rows, cols)))``, rounded half up (``min(rows, cols)`` is the
    matrix's full rank)."""
    return max(1, math.floor(ratio * min(rows, cols) + 0.5))


def low_rank_pays(ratio: float, rows: int, cols: int) -> bool:
    """Whether factorizing a ``rows x cols`` weight matrix at ``ratio`` shrinks it: the two
    factors hold ``r * (rows + cols)`` weights against ``rows * cols`` (a Conv2d's MACs scale
    the same way, both of its factors running at the output resolution)."""
    if ratio >= FULL_RANK:
        return False
    return low_rank(ratio, rows, cols) * (rows + cols) < rows * cols


def _layer_dict(choice: LayerChoice) -> dict[str, Any]:
    layer = {"w_bits": choice.w_bits, "a_bits": choice.a_bits, "prune_ratio": choice.prune_ratio}
    # Left out at full rank: candidates (and their JSON in trials.csv) of runs that do not
    # factorize stay exactly as they were before the field existed.
    if choice.rank_ratio != FULL_RANK:
        layer["rank_ratio"] = choice.rank_ratio
    # Left out when uniform, for the same reason.
    if choice.quantizer != UNIFORM:
        layer["quantizer"] = choice.quantizer
    # Likewise left out when dense, and when split by channel.
    if choice.sparsity != DENSE:
        layer["sparsity"] = choice.sparsity
    if choice.factorization != CHANNEL:
        layer["factorization"] = choice.factorization
    return layer


def nm_pattern(sparsity: Sparsity) -> tuple[int, int] | None:
    """``(N, M)`` of an ``"N:M"`` sparsity, None for a fraction; raises ValueError for anything
    else (a fraction outside [0, 1), an N:M without ``0 < N < M``, another type)."""
    if isinstance(sparsity, str):
        match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", sparsity)
        if match is None or not 0 < int(match[1]) < int(match[2]):
            raise ValueError(
                f"a sparsity pattern must be 'N:M' with integers 0 < N < M. Got {sparsity!r}"
            )
        return int(match[1]), int(match[2])
    if isinstance(sparsity, bool) or not isinstance(sparsity, int | float):
        raise ValueError(
            f"a sparsity must be a fraction in [0, 1) or an 'N:M' string. Got {sparsity!r}"
        )
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"a sparsity fraction must lie in [0, 1). Got {sparsity!r}")
    return None


def canonical_sparsity(sparsity: Sparsity) -> Sparsity:
    """``sparsity`` validated (see :func:`nm_pattern`): a float fraction or ``"N:M"``."""
    pattern = nm_pattern(sparsity)
    return float(sparsity) if pattern is None else f"{pattern[0]}:{pattern[1]}"


def sparsity_fraction(sparsity: Sparsity) -> float:
    """The share of zero weights a sparsity aims at (``1 - N/M`` for N:M)."""
    pattern = nm_pattern(sparsity)
    return float(sparsity) if pattern is None else 1.0 - pattern[0] / pattern[1]


def _plain(value: Any) -> Any:
    """Tuples become lists so that a JSON round-trip gives back an equal candidate."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
