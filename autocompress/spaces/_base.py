"""The joint search space: architecture knobs x per-layer bits x per-layer pruning ratios x
per-layer low-rank factorization x per-layer weight sparsity."""

from __future__ import annotations

import fnmatch
import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Any, Literal

import optuna
import torch
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_serializer,
    model_validator,
)
from torch import nn

from ._registry import create_family
from .candidate import (
    CHANNEL,
    CODEBOOK,
    DENSE,
    FACTORIZATIONS,
    FLOAT_BITS,
    FULL_RANK,
    MIN_BITS,
    NONUNIFORM_MAX_BITS,
    QUANTIZERS,
    UNIFORM,
    Candidate,
    LayerChoice,
    Sparsity,
    canonical_sparsity,
    factorizable_shape,
    low_rank_pays,
    sparsity_fraction,
    spatial_shape,
)
from .groups import output_layer, prunable_layers

logger = logging.getLogger(__name__)


class LayerOverride(BaseModel):
    """Fixed choices for the layers a ``space.overrides`` pattern matches; what is left unset is
    still searched."""

    model_config = ConfigDict(extra="forbid")

    w_bits: int | None = Field(default=None, ge=MIN_BITS, le=FLOAT_BITS)
    a_bits: int | None = Field(default=None, ge=MIN_BITS, le=FLOAT_BITS)
    prune_ratio: float | None = Field(default=None, ge=0.0, lt=1.0)
    rank_ratio: float | None = Field(default=None, gt=0.0, le=1.0)
    quantizer: str | None = None
    sparsity: float | str | None = None
    factorization: str | None = None

    @field_validator("quantizer")
    @classmethod
    def _known_quantizer(cls, quantizer: str | None) -> str | None:
        return (
            None
            if quantizer is None
            else _known_names([quantizer], QUANTIZERS, what="weight quantizers")[0]
        )

    @field_validator("sparsity")
    @classmethod
    def _sparsity_valid(cls, value: Sparsity | None) -> Sparsity | None:
        return None if value is None else canonical_sparsity(value)

    @field_validator("factorization")
    @classmethod
    def _known_factorization(cls, factorization: str | None) -> str | None:
        return (
            None
            if factorization is None
            else _known_names([factorization], FACTORIZATIONS, what="low-rank factorizations")[0]
        )

    @model_validator(mode="after")
    def _codebook_is_dense(self) -> LayerOverride:
        if self.quantizer == CODEBOOK and self.sparsity:
            raise ValueError(
                "a codebook layer must be dense: zero is not one of its values. Got quantizer "
                f"codebook with sparsity {self.sparsity!r}"
            )
        return self

    @model_serializer(mode="wrap")
    def _without_unset_later_fields(self, handler: Any) -> Any:
        # These fields came later: left out while unset, a run's config (and fingerprint) with
        # overrides is what it was before they existed, so the run still resumes.
        data = handler(self)
        if isinstance(data, dict):
            for key in ("rank_ratio", "quantizer", "sparsity", "factorization"):
                if getattr(self, key) is None:
                    data.pop(key, None)
        return data


def _known_names(names: list[str], allowed: tuple[str, ...], *, what: str) -> list[str]:
    """``names`` checked against ``allowed``, in ``allowed``'s order whatever order they were
    given (so equal choices make equal configs and fingerprints)."""
    unknown = [n for n in names if n not in allowed]
    if unknown:
        raise ValueError(f"{what} must be among {list(allowed)}. Got {unknown}")
    return [n for n in allowed if n in names]


class SpaceConfig(BaseModel):
    """The ``space:`` section of a run config."""

    model_config = ConfigDict(extra="forbid")

    family: str = "small_cnn"
    arch: dict[str, Any] = Field(default_factory=dict)
    w_bits: list[int] = Field(default=[2, 3, 4, 5, 6, 8], min_length=1)
    a_bits: list[int] = Field(default=[4, 6, 8], min_length=1)
    prune_ratios: list[float] = Field(default=[0.0, 0.25, 0.5], min_length=1)
    rank_ratios: list[float] = Field(
        default=[FULL_RANK],
        min_length=1,
        description="low-rank factorization: kept fraction of each layer's rank (1.0 = whole)",
    )
    factorizations: list[str] = Field(
        default=[CHANNEL],
        min_length=1,
        description="how a factorized conv is split: channel (k x k then 1 x 1) | spatial "
        "(k x 1 then 1 x k)",
    )
    quantizers: list[str] = Field(
        default=[UNIFORM],
        min_length=1,
        description="weight quantizers searched per layer: uniform | pot | apot | codebook "
        f"(non-uniform ones at w_bits <= {NONUNIFORM_MAX_BITS})",
    )
    sparsity: list[float | str] = Field(
        default=[DENSE],
        min_length=1,
        description="fine-grained weight sparsity per layer: fractions of zero weights in [0, 1) "
        "and/or 'N:M' patterns (0 = dense)",
    )
    # How a layer's sparsity and pruning ratio are realised, for every evaluator: which weights
    # and channels go. Here rather than in train: the teacher: section shares TrainConfig and the
    # ptq and supernet evaluators compress without the train: section's fine-tune.
    sparsity_importance: Literal["magnitude", "taylor"] = Field(
        default="magnitude",
        description="which weights a sparse layer zeroes: magnitude |w| or taylor |w*g|",
    )
    pruning_importance: Literal["l1", "taylor", "bn_scale"] = Field(
        default="l1",
        description="which channels structured pruning removes: l1 |w|, taylor |w*g| of the "
        "teacher, bn_scale |gamma| of the following BatchNorm",
    )
    exclude: list[str] = Field(
        default_factory=list,
        description="glob patterns of layer names kept in float, never pruned nor factorized",
    )
    overrides: dict[str, LayerOverride] = Field(
        default_factory=dict,
        description="glob pattern of layer names -> fixed w_bits / a_bits / prune_ratio / "
        "rank_ratio / factorization / quantizer / sparsity",
    )

    @field_validator("family")
    @classmethod
    def _known_family(cls, family: str) -> str:
        from ._registry import list_families

        if family not in list_families():
            raise ValueError(
                f"must be one of {list_families()} (a family of your own: name its module in "
                f"'plugins' or pass --import). Got {family!r}"
            )
        return family

    @field_validator("w_bits", "a_bits")
    @classmethod
    def _bits_in_range(cls, bits: list[int]) -> list[int]:
        bad = [b for b in bits if not MIN_BITS <= b <= FLOAT_BITS]
        if bad:
            raise ValueError(
                f"bit-widths must lie in [{MIN_BITS}, {FLOAT_BITS}] ({FLOAT_BITS} = float). "
                f"Got {bad}"
            )
        return sorted(set(bits))

    @field_validator("prune_ratios")
    @classmethod
    def _ratios_in_range(cls, ratios: list[float]) -> list[float]:
        bad = [r for r in ratios if not 0.0 <= r < 1.0]
        if bad:
            raise ValueError(f"pruning ratios must lie in [0, 1). Got {bad}")
        return sorted(set(ratios))

    @field_validator("rank_ratios")
    @classmethod
    def _ranks_in_range(cls, ratios: list[float]) -> list[float]:
        bad = [r for r in ratios if not 0.0 < r <= FULL_RANK]
        if bad:
            raise ValueError(f"rank ratios must lie in (0, 1] (1 = not factorized). Got {bad}")
        return sorted(set(ratios))

    @field_validator("quantizers")
    @classmethod
    def _known_quantizers(cls, quantizers: list[str]) -> list[str]:
        return _known_names(quantizers, QUANTIZERS, what="weight quantizers")

    @field_validator("factorizations")
    @classmethod
    def _known_factorizations(cls, factorizations: list[str]) -> list[str]:
        return _known_names(factorizations, FACTORIZATIONS, what="low-rank factorizations")

    @field_validator("sparsity")
    @classmethod
    def _sparsity_valid(cls, values: list[Sparsity]) -> list[Sparsity]:
        bad, good = [], []
        for value in values:
            try:
                good.append(canonical_sparsity(value))
            except ValueError:
                bad.append(value)
        if bad:
            raise ValueError(
                "sparsities must be fractions of zero weights in [0, 1) or 'N:M' strings with "
                f"integers 0 < N < M (e.g. '2:4'). Got {bad}"
            )
        # Fractions first, then patterns, each by the share of weights they zero.
        unique = list(dict.fromkeys(good))
        return sorted(unique, key=lambda v: (isinstance(v, str), sparsity_fraction(v), str(v)))


class SearchSpace(ABC):
    """What a search explores. ``suggest`` must only call ``trial.suggest_*`` (no training), so it
    stays cheap; the returned candidate must rebuild with :func:`build_model`."""

    @abstractmethod
    def suggest(self, trial: optuna.Trial) -> Candidate: ...

    @abstractmethod
    def teacher(self) -> Candidate:
        """The uncompressed, largest point of the space: the distillation teacher."""


def conv_linear_layers(model: nn.Module) -> list[str]:
    """The Conv2d/Linear layers that get bits: all of them, except the projections inside
    ``nn.MultiheadAttention``, which reads their weights directly instead of calling them (a
    fake-quant layer in their place would be priced but never applied). The ``model`` family
    builds such attention as a ``SplitAttention``, whose projections are called and so get bits.
    """
    inside = {
        f"{name}.{child}" if name else child
        for name, module in model.named_modules()
        if isinstance(module, nn.MultiheadAttention)
        for child, _ in module.named_children()
    }
    return [
        n
        for n, m in model.named_modules()
        if isinstance(m, nn.Conv2d | nn.Linear) and n not in inside
    ]


def matching(patterns: Iterable[str], name: str) -> list[str]:
    """The glob ``patterns`` (``fnmatch``, case-sensitive) that layer ``name`` matches."""
    return [p for p in patterns if fnmatch.fnmatchcase(name, p)]


def build_model(
    candidate: Candidate, *, num_classes: int, input_shape: tuple[int, ...]
) -> nn.Module:
    """The float, unpruned network of a candidate (compression is applied by ``compress_``)."""
    from ._registry import get_family

    return get_family(candidate.family).build(
        candidate.arch, num_classes=num_classes, input_shape=tuple(input_shape)
    )


class JointSearchSpace(SearchSpace):
    """Architecture from a registered family, then, for the layers that architecture has, one
    ``w_bits``/``a_bits`` choice per Conv2d/Linear, one pruning ratio per pruning group and,
    with several ``rank_ratios``, one rank ratio per layer that a factorization can shrink.

    Layer dimensions are conditional: a layer that the sampled architecture does not have gets
    no parameters (Optuna samplers handle such dynamic spaces). A dimension keeps the same
    choices in every trial (Optuna requires it of a parameter name), so a layer's rank
    dimension offers all ``rank_ratios``; a ratio whose factors would not have fewer weights
    and MACs than the layer as the architecture builds it (``low_rank_pays``) is recorded as
    1.0, and a layer where no ratio pays gets no rank dimension.
    """

    def __init__(self, config: SpaceConfig, *, num_classes: int, input_shape: tuple[int, ...]):
        self.config = config
        self.family = create_family(config.family, config.arch)
        self.num_classes = num_classes
        self.input_shape = tuple(input_shape)
        self._dimensions: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}
        self._shapes: dict[str, dict[str, tuple[int, int]]] = {}
        self._spatial: dict[str, dict[str, tuple[int, int]]] = {}
        self.family.prepare(num_classes=num_classes, input_shape=self.input_shape)
        if config.exclude or config.overrides:
            self._check_patterns()

    def _check_patterns(self) -> None:
        # Every architecture is a sub-network of the largest: its layers are all there.
        layers, _ = self.layer_dimensions(self.family.largest_arch())
        for field, patterns in (
            ("exclude", self.config.exclude),
            ("overrides", self.config.overrides),
        ):
            unmatched = [p for p in patterns if not any(matching([p], n) for n in layers)]
            if unmatched:
                raise ValueError(
                    f"The 'space.{field}' field must hold patterns that match layers of the "
                    f"model. Got {unmatched} instead, which match none of {layers[:8]}"
                    + (" ..." if len(layers) > 8 else "")
                )

    def layer_dimensions(self, arch: dict[str, Any]) -> tuple[list[str], list[str]]:
        """(layers that get bits, layers that lead a prunable channel group) of an architecture.

        Cached per architecture: finding the groups builds the model and traces its dependency
        graph, which costs more than the rest of a suggestion (and the search suggests every
        trial, the surrogate whole pools)."""
        key = json.dumps(arch, sort_keys=True, default=str)
        if key not in self._dimensions:
            model = self.family.build(
                arch, num_classes=self.num_classes, input_shape=self.input_shape
            )
            layers = conv_linear_layers(model)
            example = torch.zeros(1, *self.input_shape)
            # The output layer keeps its channels; excluded layers keep theirs too, so every
            # group that would change one is left out.
            excluded = [n for n in layers if matching(self.config.exclude, n)]
            ignored = [output_layer(model, example), *excluded]
            try:
                prunable = prunable_layers(model, example, ignored=ignored)
            except Exception as err:  # an op Torch-Pruning cannot follow: search bits only
                logger.warning(
                    "Torch-Pruning cannot trace the channel groups of %s (%s: %s): its layers "
                    "get bit-widths but are not pruned.",
                    type(model).__name__,
                    type(err).__name__,
                    err,
                )
                prunable = []
            self._dimensions[key] = (tuple(layers), tuple(prunable))
            modules = dict(model.named_modules())
            shapes = {n: factorizable_shape(modules[n]) for n in layers}
            self._shapes[key] = {n: shape for n, shape in shapes.items() if shape is not None}
            spatial = {n: spatial_shape(modules[n]) for n in layers}
            self._spatial[key] = {n: shape for n, shape in spatial.items() if shape is not None}
        layers, prunable = self._dimensions[key]
        return list(layers), list(prunable)

    def factorizable_shapes(self, arch: dict[str, Any]) -> dict[str, tuple[int, int]]:
        """``{layer: (rows, cols)}`` of the layers of an architecture that a low-rank
        factorization could split (see :func:`factorizable_shape`), unpruned."""
        self.layer_dimensions(arch)
        return dict(self._shapes[json.dumps(arch, sort_keys=True, default=str)])

    def uniform_candidate(
        self,
        arch: dict[str, Any],
        *,
        w_bits: int,
        a_bits: int,
        prune_ratio: float = 0.0,
        quantizer: str = UNIFORM,
        sparsity: Sparsity = DENSE,
        rank_ratio: float = FULL_RANK,
    ) -> Candidate:
        """The same bits (and weight quantizer, where it applies, sparsity and rank ratio, where
        it pays) on every Conv2d/Linear layer of ``arch`` and the same pruning ratio on every
        prunable channel group (the layers of ``space.exclude`` stay float and whole): a
        one-shot recipe, priced and compressed as any candidate."""
        layers, prunable = self.layer_dimensions(arch)
        shapes = self.factorizable_shapes(arch)
        choices = {
            name: LayerChoice()
            if matching(self.config.exclude, name)
            else LayerChoice(
                w_bits=w_bits,
                a_bits=a_bits,
                prune_ratio=prune_ratio if name in prunable else 0.0,
                quantizer=quantizer if w_bits <= NONUNIFORM_MAX_BITS else UNIFORM,
                sparsity=sparsity,
                rank_ratio=rank_ratio
                if name in shapes and low_rank_pays(rank_ratio, *shapes[name])
                else FULL_RANK,
            )
            for name in layers
        }
        return Candidate(family=self.family.name, arch=arch, layers=choices)

    def suggest(self, trial: optuna.Trial) -> Candidate:
        cfg = self.config
        arch = self.family.suggest_arch(trial)
        layers, prunable = self.layer_dimensions(arch)
        shapes = self.factorizable_shapes(arch)
        spatial = self._spatial[json.dumps(arch, sort_keys=True, default=str)]
        prunable_set = set(prunable)
        choices = {}
        for name in layers:
            if matching(cfg.exclude, name):
                choices[name] = LayerChoice()  # float, unpruned, whole
                continue
            fixed = self.fixed_choices(name)
            w_bits = fixed.w_bits or trial.suggest_categorical(f"{name}.w_bits", cfg.w_bits)
            a_bits = fixed.a_bits or trial.suggest_categorical(f"{name}.a_bits", cfg.a_bits)
            ratio = 0.0
            if name in prunable_set and fixed.prune_ratio is not None:
                ratio = fixed.prune_ratio
            elif name in prunable_set and len(cfg.prune_ratios) > 1:
                ratio = trial.suggest_categorical(f"{name}.prune", cfg.prune_ratios)
            elif name in prunable_set:
                ratio = cfg.prune_ratios[0]
            rank = self._rank_ratio(trial, name, shapes.get(name), fixed.rank_ratio)
            split = self._factorization(trial, name, rank, spatial.get(name), fixed.factorization)
            quantizer = self._quantizer(trial, name, w_bits, fixed.quantizer)
            sparsity = fixed.sparsity
            if quantizer == CODEBOOK:
                # Zero is not one of a codebook's values, so its layers stay dense.
                sparsity = DENSE
            elif sparsity is None and len(cfg.sparsity) > 1:
                sparsity = trial.suggest_categorical(f"{name}.sparsity", cfg.sparsity)
            elif sparsity is None:
                sparsity = cfg.sparsity[0]
            choices[name] = LayerChoice(
                w_bits=w_bits,
                a_bits=a_bits,
                prune_ratio=ratio,
                rank_ratio=rank,
                quantizer=quantizer,
                sparsity=sparsity,
                factorization=split,
            )
        return Candidate(family=self.family.name, arch=arch, layers=choices)

    def _rank_ratio(
        self,
        trial: optuna.Trial,
        name: str,
        shape: tuple[int, int] | None,
        fixed: float | None,
    ) -> float:
        """The rank ratio of layer ``name`` (``shape``: its factorizable weight matrix), 1.0 when
        the chosen ratio would not shrink it. No Optuna dimension unless a choice can matter,
        so spaces without factorization keep exactly their former dimensions."""
        ratios = self.config.rank_ratios
        if shape is None:
            return FULL_RANK
        if fixed is not None:
            chosen = fixed
        elif not any(low_rank_pays(r, *shape) for r in ratios):
            return FULL_RANK
        elif len(ratios) > 1:
            chosen = trial.suggest_categorical(f"{name}.rank", ratios)
        else:
            chosen = ratios[0]
        return chosen if low_rank_pays(chosen, *shape) else FULL_RANK

    def _factorization(
        self,
        trial: optuna.Trial,
        name: str,
        rank: float,
        shape: tuple[int, int] | None,
        fixed: str | None,
    ) -> str:
        """How layer ``name``, factorized at ``rank`` (``shape``: its spatial matrix, see
        :func:`spatial_shape`), is split: by channel, without an Optuna dimension, where a
        spatial split cannot apply (not factorized, a Linear or 1 x 1 conv) or only one kind is
        searched; a spatial choice whose factors would not be smaller is recorded as channel."""
        kinds = self.config.factorizations
        if rank >= FULL_RANK or shape is None:
            return CHANNEL
        if fixed is not None:
            chosen = fixed
        elif len(kinds) > 1:
            chosen = trial.suggest_categorical(f"{name}.factorization", kinds)
        else:
            chosen = kinds[0]
        return chosen if chosen == CHANNEL or low_rank_pays(rank, *shape) else CHANNEL

    def _quantizer(self, trial: optuna.Trial, name: str, w_bits: int, fixed: str | None) -> str:
        """The weight quantizer of layer ``name`` at ``w_bits``: uniform, without an Optuna
        dimension, where non-uniform ones do not apply (float or wider than
        ``NONUNIFORM_MAX_BITS``) or only uniform is searched, so spaces without them keep
        exactly their former dimensions."""
        quantizers = self.config.quantizers
        if w_bits > NONUNIFORM_MAX_BITS:
            return UNIFORM
        if fixed is not None:
            return fixed
        if len(quantizers) > 1:
            return trial.suggest_categorical(f"{name}.quantizer", quantizers)
        return quantizers[0]

    def fixed_choices(self, name: str) -> LayerOverride:
        """The fixed choices of layer ``name``: those of every matching pattern, later patterns
        winning where they disagree."""
        fixed: dict[str, Any] = {}
        for pattern in matching(self.config.overrides, name):
            fixed |= self.config.overrides[pattern].model_dump(exclude_none=True)
        return LayerOverride(**fixed)

    def teacher(self) -> Candidate:
        return Candidate(family=self.family.name, arch=self.family.largest_arch(), layers={})
