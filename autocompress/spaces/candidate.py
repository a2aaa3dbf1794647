"""The unit the search produces: one point in the joint architecture x bits x pruning space."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

CANDIDATE_FORMAT_VERSION = 1
FLOAT_BITS = 32  # at this many bits (or more) a tensor is left in floating point (no fake-quant)
MIN_BITS = 2  # symmetric weights need at least one level on each side of zero


@dataclass(frozen=True)
class LayerChoice:
    """Compression of one Conv2d/Linear layer.

    ``w_bits``/``a_bits``: bit-width of the layer's weights and of its *input* activations.
    ``prune_ratio``: fraction of the layer's output channels removed; only layers that lead a
    pruning group (see ``compression.pruning.prunable_layers``) ever get a non-zero ratio. On the
    q projection of an attention layer (``SplitAttention``) it is the fraction of its heads
    removed, rounded down to whole heads.
    """

    w_bits: int = FLOAT_BITS
    a_bits: int = FLOAT_BITS
    prune_ratio: float = 0.0


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

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "family": self.family,
            "arch": _plain(self.arch),
            "layers": {
                name: {"w_bits": c.w_bits, "a_bits": c.a_bits, "prune_ratio": c.prune_ratio}
                for name, c in self.layers.items()
            },
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
                )
            except (KeyError, TypeError, ValueError) as err:
                raise ValueError(
                    f"The 'layers.{name}' field of a candidate must hold integer 'w_bits' and "
                    f"'a_bits' and a float 'prune_ratio'. Got {choice!r} instead."
                ) from err
        return cls(family=str(data["family"]), arch=dict(data["arch"]), layers=layers)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Candidate:
        return cls.from_dict(json.loads(text))


def _plain(value: Any) -> Any:
    """Tuples become lists so that a JSON round-trip gives back an equal candidate."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
