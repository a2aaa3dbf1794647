"""What can be searched: model families (built-in ones, or your own network from ``model:``),
per-layer bits and pruning ratios."""

from . import families as _families  # noqa: F401  (registers the built-in families)
from . import user_model as _user_model  # noqa: F401  (registers the "model" family)
from ._base import (
    JointSearchSpace,
    SearchSpace,
    SpaceConfig,
    build_model,
    conv_linear_layers,
    matching,
)
from ._registry import ModelFamily, create_family, get_family, list_families, register_family
from .candidate import FLOAT_BITS, Candidate, LayerChoice
from .user_model import ModelConfig

__all__ = [
    "FLOAT_BITS",
    "Candidate",
    "JointSearchSpace",
    "LayerChoice",
    "ModelConfig",
    "ModelFamily",
    "SearchSpace",
    "SpaceConfig",
    "build_model",
    "conv_linear_layers",
    "create_family",
    "get_family",
    "list_families",
    "matching",
    "register_family",
]
