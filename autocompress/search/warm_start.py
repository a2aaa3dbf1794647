"""``search.warm_start``: candidates queued before the sampler draws any.

A random first generation of a joint space gives about one layer in six 2-bit weights and drops
half the droppable blocks. A large network shrugs that off; a compact one (MobileNetV3) loses
several points of accuracy in every such candidate, and a search of a few dozen trials may never
see the mild, accurate corner of its front. ``sensitivity`` starts from the checkpoint instead:

1. measure, on a few training batches, how far the checkpoint's output moves when one layer
   alone is quantized at each width, pruned at each ratio, or one block dropped
   (:func:`compression.sensitivity.measure_sensitivity`);
2. price each layer's choices relative to the network at uniform int8, from the run's hardware
   profile (:func:`device_cost_model`: the network at each uniform choice, and each factorized
   layer's own rows where the profile gives them), else by two hardware-agnostic proxies,
   weight bits (size) and bit-operations (MACs x w_bits x a_bits, compute);
3. for each cost level (from 0.8 down to 0.15 of uniform int8), give every layer the choice
   that minimises ``distortion + lambda x cost`` (distortions add up for small perturbations),
   with ``lambda`` found by bisection so the network meets the level: HAWQ-style bit
   allocation, extended to pruning and depth, and to the rank ratio, weight quantizer and
   sparsity where the space searches them (their distortions extrapolated from each layer's
   weight gain, see :mod:`compression.sensitivity`).

The candidates are queued (``study.enqueue_trial``) and then trained, priced on the real
hardware profile and kept or not like any other trial: they seed the sampler's first
generation; they are not results of their own.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import islice, product
from typing import Any, NamedTuple

import numpy as np
import optuna

from ..compression import build_compressed
from ..compression.sensitivity import Sensitivity, measure_sensitivity
from ..data import make_loaders
from ..spaces import JointSearchSpace, matching
from ..spaces.candidate import (
    CHANNEL,
    CODEBOOK,
    DENSE,
    FLOAT_BITS,
    FULL_RANK,
    NONUNIFORM_MAX_BITS,
    UNIFORM,
    Sparsity,
    low_rank,
    sparsity_fraction,
)
from ..spaces.groups import output_layer
from .objective import trial_metrics
from .setup import SearchSetup

logger = logging.getLogger(__name__)

WARM_START_ATTR = "warm_start"  # on a queued trial: the cost level it was allocated for
_REFERENCE_BITS = 8  # costs are relative to the network at uniform int8
# The hardest level reaches below a one-shot 50% prune + int8 recipe (about 0.3 of int8 on
# the shipped CPU specs), so the queued candidates span the front a user would compare with.
_HIGHEST_LEVEL, _LOWEST_LEVEL = 0.8, 0.15


def cost_levels(n: int) -> list[float]:
    """``n`` cost levels, geometrically spaced from the mildest to the hardest."""
    return [float(c) for c in np.geomspace(_HIGHEST_LEVEL, _LOWEST_LEVEL, n)]


def coverage_order(n: int) -> list[int]:
    """The order in which to train ``n`` candidates sorted mildest to hardest so that the
    front is spanned early: the hardest first (the cheapest to train, so the first point
    arrives soonest), then the mildest, then the middle of the widest gap, and so on (a search
    stopped after any prefix of them has seen the whole cost range)."""
    if n <= 2:
        return list(range(n))[::-1]
    order, gaps = [n - 1, 0], [(0, n - 1)]
    while len(order) < n:  # every gap of width >= 2 holds an index not yet ordered
        lo, hi = max((g for g in gaps if g[1] - g[0] >= 2), key=lambda g: (g[1] - g[0], -g[0]))
        gaps.remove((lo, hi))
        mid = (lo + hi) // 2
        order.append(mid)
        gaps += [(lo, mid), (mid, hi)]
    return order


class Choice(NamedTuple):
    """One layer's compression as the allocation sees it (``rank``: the space's rank ratio,
    which acts only where it pays)."""

    w_bits: int
    a_bits: int
    prune: float
    rank: float = FULL_RANK
    quantizer: str = UNIFORM
    sparsity: Sparsity = DENSE


@dataclass(frozen=True)
class _Options:
    """One layer's allowed choices, their summed distortion and their cost (a fraction of the
    whole network at uniform int8)."""

    choices: list[Choice]
    distortion: np.ndarray
    cost: np.ndarray


@dataclass(frozen=True)
class CostModel:
    """How one layer's choices scale each hardware cost the search minimises.

    Per metric: ``share``, what a layer's part of the whole follows (``"params"``: weight
    size; ``"macs"``: compute time and energy); ``bits[(w, a)]`` and ``prune[ratio]``, the whole
    network's cost at uniform bits or a uniform pruning ratio relative to uniform int8;
    ``quantizer[q]``, a non-uniform quantizer's cost relative to uniform at the same bits
    (measured at one width), and ``sparsity[s]``, relative to dense (1.0 where not given). A
    layer's cost is ``share x bits[(w, a)] x prune[ratio] x quantizer x sparsity``, averaged
    over the metrics: 1.0 for the network at uniform int8. A factorized layer's is also times
    ``layer_rank[(name, r)]``, what its two factors cost relative to the whole layer where the
    profile prices layers one by one; else its factors' share of its weights and MACs, scaled
    so that the network with every layer factorized at ``r`` costs ``rank[r]`` (where measured:
    two thin layers may run slower than one).
    :func:`device_cost_model` measures the ratios on the run's hardware profile (a device that
    runs 4-bit layers as int8 gains nothing from them there, one without sparse kernels nothing
    in time from sparsity); :meth:`proxies` are the hardware-agnostic weight bits and
    bit-operations. One cost model serves one :class:`Sensitivity` (it caches the rank
    scales)."""

    share: dict[str, str]
    bits: dict[str, dict[tuple[int, int], float]]
    prune: dict[str, dict[float, float]]
    quantizer: dict[str, dict[str, float]] = field(default_factory=dict)
    sparsity: dict[str, dict[Sparsity, float]] = field(default_factory=dict)
    rank: dict[str, dict[float, float]] = field(default_factory=dict)
    layer_rank: dict[str, dict[tuple[str, float], float]] = field(default_factory=dict)
    _rank_scales: dict[tuple[str, float], float] = field(
        default_factory=dict, compare=False, repr=False
    )

    @classmethod
    def proxies(
        cls,
        w_bits: Sequence[int],
        a_bits: Sequence[int],
        ratios: Sequence[float],
        sparsities: Sequence[Sparsity] = (),
    ):
        ref = _REFERENCE_BITS
        pairs = [(w, a) for w in [*w_bits, FLOAT_BITS] for a in [*a_bits, FLOAT_BITS]]
        prune = {r: 1.0 - r for r in [0.0, *ratios]}
        # Sparse weights are stored with a bitmask (one bit per weight, at int8: 1/8) and run
        # dense.
        sparse = {s: min(1.0, 1 / ref + 1 - sparsity_fraction(s)) for s in sparsities if s}
        return cls(
            share={"size": "params", "bops": "macs"},
            bits={
                "size": {(w, a): w / ref for w, a in pairs},
                "bops": {(w, a): w * a / ref**2 for w, a in pairs},
            },
            prune={"size": prune, "bops": prune},
            sparsity={"size": sparse},
        )

    def layer_cost(self, s: Sensitivity, name: str, choice: Choice) -> float:
        w, a, ratio = choice.w_bits, choice.a_bits, choice.prune
        factorized = choice.rank in s.rank.get(name, {})  # only ratios that pay are there
        total = 0.0
        for metric, share in self.share.items():
            bits = self.bits[metric].get((w, a))
            if bits is None:  # a width the profile was not asked about (a layer kept in float)
                bits = w / _REFERENCE_BITS if share == "params" else w * a / _REFERENCE_BITS**2
            quantizer = self.quantizer.get(metric, {}).get(choice.quantizer, 1.0)
            sparsity = self.sparsity.get(metric, {}).get(choice.sparsity, 1.0)
            prune = self.prune[metric].get(ratio, 1.0 - ratio)
            factors = self._factors(s, metric, name, choice.rank) if factorized else 1.0
            total += _part(s, share, name) * bits * prune * quantizer * sparsity * factors
        return total / len(self.share)

    def _factors(self, s: Sensitivity, metric: str, name: str, ratio: float) -> float:
        """What layer ``name`` factorized at ``ratio`` costs relative to it whole, in ``metric``."""
        measured = self.layer_rank.get(metric, {}).get((name, ratio))
        if measured is not None:
            return measured
        return _factor_share(s, name, ratio) * self._rank_scale(s, metric, ratio)

    def _rank_scale(self, s: Sensitivity, metric: str, ratio: float) -> float:
        """What the factorized layers' shares are scaled by so that the network factorized at
        ``ratio`` everywhere costs what the device says (1.0 where it was not measured)."""
        key = (metric, ratio)
        if key not in self._rank_scales:
            measured = self.rank.get(metric, {}).get(ratio)
            share = self.share[metric]
            layers = [n for n in s.rank if ratio in s.rank[n]]
            whole = sum(_part(s, share, n) for n in layers)
            factored = sum(_part(s, share, n) * _factor_share(s, n, ratio) for n in layers)
            scale = 1.0
            if measured is not None and factored > 0:
                rest = 1.0 - whole
                scale = max((measured - rest) / factored, 0.05)
            self._rank_scales[key] = scale
        return self._rank_scales[key]


def _part(s: Sensitivity, share: str, name: str) -> float:
    """Layer ``name``'s part of the network's weights (``share == "params"``) or MACs."""
    sizes = s.params if share == "params" else s.macs
    return sizes[name] / max(sum(sizes.values()), 1)


def _factor_share(s: Sensitivity, name: str, ratio: float) -> float:
    """The two factors' weights (and MACs) at ``ratio`` over those of layer ``name`` whole."""
    rows, cols = s.shapes[name]
    return low_rank(ratio, rows, cols) * (rows + cols) / (rows * cols)


class Allocator:
    """Chooses every layer's compression (and which blocks to drop) for a cost level."""

    def __init__(
        self,
        space: JointSearchSpace,
        sensitivity: Sensitivity,
        *,
        arch: dict[str, Any],
        costs: CostModel | None = None,
    ) -> None:
        cfg = space.config
        self.sensitivity = sensitivity
        self.costs = costs or CostModel.proxies(
            cfg.w_bits, cfg.a_bits, cfg.prune_ratios, cfg.sparsity
        )
        layers, prunable = space.layer_dimensions(arch)
        self.blocks = {b: [n for n in layers if n.startswith(b + ".")] for b in sensitivity.drop}
        self.fixed: dict[str, float] = {}  # layers kept in float: not chosen, still costed
        self.options: dict[str, _Options] = {}
        for name in layers:
            if matching(cfg.exclude, name):
                self.fixed[name] = self._cost(name, Choice(FLOAT_BITS, FLOAT_BITS, 0.0))
                continue
            choices = self._choices(space, name, name in prunable)
            self.options[name] = _Options(
                choices=choices,
                distortion=np.array([self._distortion(name, c) for c in choices]),
                cost=np.array([self._cost(name, c) for c in choices]),
            )

    @staticmethod
    def _choices(space: JointSearchSpace, name: str, prunable: bool) -> list[Choice]:
        """Every combination the space offers layer ``name``, as :meth:`JointSearchSpace.suggest`
        constrains it: non-uniform quantizers up to 8 bits, codebook layers dense."""
        cfg, fixed = space.config, space.fixed_choices(name)
        ratios = [0.0]
        if prunable:
            ratios = [fixed.prune_ratio] if fixed.prune_ratio is not None else cfg.prune_ratios
        ranks = [fixed.rank_ratio] if fixed.rank_ratio is not None else cfg.rank_ratios
        quantizers = [fixed.quantizer] if fixed.quantizer is not None else cfg.quantizers
        sparsities = [fixed.sparsity] if fixed.sparsity is not None else cfg.sparsity
        choices = []
        for w, a, r, rank in product(
            [fixed.w_bits] if fixed.w_bits else cfg.w_bits,
            [fixed.a_bits] if fixed.a_bits else cfg.a_bits,
            ratios,
            ranks,
        ):
            for quantizer in quantizers if w <= NONUNIFORM_MAX_BITS else [UNIFORM]:
                for sparsity in [DENSE] if quantizer == CODEBOOK else sparsities:
                    choices.append(Choice(w, a, r, rank, quantizer, sparsity))
        return choices

    def _cost(self, name: str, choice: Choice) -> float:
        return self.costs.layer_cost(self.sensitivity, name, choice)

    def _distortion(self, name: str, choice: Choice) -> float:
        s = self.sensitivity
        w = choice.w_bits
        weights = s.quantizer.get(name, {}).get((choice.quantizer, w), s.w_bits[name][w])
        return (
            weights
            + s.a_bits[name][choice.a_bits]
            + s.prune.get(name, {}).get(choice.prune, 0.0)
            + s.rank.get(name, {}).get(choice.rank, 0.0)
            + s.sparsity.get(name, {}).get(choice.sparsity, 0.0)
        )

    def allocate(self, lam: float) -> tuple[dict[str, Choice], set[str], float]:
        """(choice per layer, dropped blocks, total cost) minimising distortion + lam x cost."""
        chosen, cost = {}, {}
        for name, opt in self.options.items():
            i = int(np.argmin(opt.distortion + lam * opt.cost))
            chosen[name], cost[name] = opt.choices[i], float(opt.cost[i])
        cost |= self.fixed
        dropped = {
            block
            for block, members in self.blocks.items()
            if self.sensitivity.drop[block] < lam * sum(cost[n] for n in members)
        }
        gone = {n for b in dropped for n in self.blocks[b]}
        return chosen, dropped, sum(c for n, c in cost.items() if n not in gone)

    def for_level(self, level: float) -> tuple[dict[str, Choice], set[str], float]:
        """The allocation of the smallest lambda whose cost is at most ``level`` (the cheapest
        one when no lambda gets there)."""
        lo, hi = -12.0, 12.0  # log10 lambda
        if self.allocate(10**lo)[2] <= level:
            return self.allocate(10**lo)
        for _ in range(48):
            mid = (lo + hi) / 2
            if self.allocate(10**mid)[2] <= level:
                hi = mid
            else:
                lo = mid
        return self.allocate(10**hi)


# The hardware metrics a search may minimise, and what a layer's share of each follows.
_SHARE = {"latency_ms": "macs", "energy_mj": "macs", "peak_mem_kb": "macs", "size_kb": "params"}


def device_cost_model(setup: SearchSetup, arch: dict[str, Any]) -> CostModel | None:
    """:class:`CostModel` of the run's hardware objectives, measured by pricing the network on
    the run's profile at each uniform (w_bits, a_bits) of the space and at each uniform pruning
    ratio (None when the profile gives none of them)."""
    config, space, data = setup.config, setup.space, setup.data
    layers, prunable = space.layer_dimensions(arch)

    @functools.cache  # uniform int8 is both the reference and a point of the grid
    def price(
        w: int,
        a: int,
        ratio: float,
        quantizer: str = UNIFORM,
        sparsity: Sparsity = DENSE,
        rank: float = FULL_RANK,
    ) -> tuple[dict[str, float], dict[str, dict[str, Any]]]:
        """The network's metrics with every layer so, and its per-layer rows by name (where the
        profile gives them: ``details["layers"]``)."""
        candidate = space.uniform_candidate(
            arch,
            w_bits=w,
            a_bits=a,
            prune_ratio=ratio,
            quantizer=quantizer,
            sparsity=sparsity,
            rank_ratio=rank,
        )
        model = build_compressed(
            candidate,
            num_classes=data.num_classes,
            input_shape=data.input_shape,
            teacher_state=setup.teacher_state,
        )
        hw = setup.profile.profile(model, input_shape=data.input_shape)
        rows = {r["name"]: r for r in hw.details.get("layers", []) if "name" in r}
        return trial_metrics(hw), rows

    base, base_rows = price(_REFERENCE_BITS, _REFERENCE_BITS, 0.0)
    wanted = [o.name for o in config.objectives() if o.name in _SHARE]
    metrics = [m for m in wanted or ["latency_ms", "size_kb"] if 0 < base[m] < math.inf]
    if not metrics:
        return None
    bits: dict[str, dict[tuple[int, int], float]] = {m: {} for m in metrics}
    for w in space.config.w_bits:
        for a in space.config.a_bits:
            priced = price(w, a, 0.0)[0]
            for m in metrics:
                bits[m][(w, a)] = priced[m] / base[m]
    prune: dict[str, dict[float, float]] = {m: {0.0: 1.0} for m in metrics}
    for ratio in space.config.prune_ratios if prunable else []:
        if ratio > 0:
            priced = price(_REFERENCE_BITS, _REFERENCE_BITS, ratio)[0]
            for m in metrics:
                prune[m][ratio] = priced[m] / base[m]
    # One width per quantizer (each pricing builds and traces the network): the narrowest of at
    # least 4 bits, as the sensitivity probe.
    narrow = [w for w in space.config.w_bits if w <= NONUNIFORM_MAX_BITS]
    width = next((w for w in sorted(narrow) if w >= 4), max(narrow, default=None))
    quantizer: dict[str, dict[str, float]] = {m: {} for m in metrics}
    for q in space.config.quantizers if width is not None else []:
        if q != UNIFORM:
            priced = price(width, _REFERENCE_BITS, 0.0, q)[0]
            plain = price(width, _REFERENCE_BITS, 0.0)[0]
            for m in metrics:
                quantizer[m][q] = priced[m] / plain[m]
    sparsity: dict[str, dict[Sparsity, float]] = {m: {} for m in metrics}
    for value in space.config.sparsity:
        if value != DENSE:
            priced = price(_REFERENCE_BITS, _REFERENCE_BITS, 0.0, sparsity=value)[0]
            for m in metrics:
                sparsity[m][value] = priced[m] / base[m]
    rank: dict[str, dict[float, float]] = {m: {} for m in metrics}
    layer_rank: dict[str, dict[tuple[str, float], float]] = {m: {} for m in metrics}
    for ratio in space.config.rank_ratios if space.factorizable_shapes(arch) else []:
        if ratio < FULL_RANK:
            priced, rows = price(_REFERENCE_BITS, _REFERENCE_BITS, 0.0, rank=ratio)
            for m in metrics:
                rank[m][ratio] = priced[m] / base[m]
                for name, row in base_rows.items():
                    # A factorized layer's two factors are rows ``<name>.0`` and ``<name>.1``.
                    pair = [rows.get(f"{name}.{i}", {}).get(m) for i in (0, 1)]
                    if None not in pair and row.get(m, 0) > 0:
                        layer_rank[m][(name, ratio)] = sum(pair) / row[m]
    return CostModel(
        share={m: _SHARE[m] for m in metrics},
        bits=bits,
        prune=prune,
        quantizer=quantizer,
        sparsity=sparsity,
        rank=rank,
        layer_rank=layer_rank,
    )


class _Replay:
    """A stand-in for an Optuna trial that answers ``space.suggest`` with chosen values and
    records what was asked: the parameters to queue are exactly the space's dimensions."""

    def __init__(self, wanted: dict[str, Any]) -> None:
        self.wanted = wanted
        self.params: dict[str, Any] = {}

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        value = self.wanted.get(name)
        if value not in choices:
            value = _mildest(name, choices)
        self.params[name] = value
        return value


def _mildest(name: str, choices: Sequence[Any]) -> Any:
    """The choice of a dimension the allocation does not decide (a factorization kind, a group
    only a smaller architecture has) that compresses least."""
    kind = name.rpartition(".")[2]
    if all(isinstance(c, bool) for c in choices):
        return False  # arch.drop.<block>: keep it
    if kind == "prune":
        return min(choices)
    if kind == "sparsity":
        return min(choices, key=sparsity_fraction)
    if kind in ("quantizer", "factorization"):
        return next((c for c in choices if c in (UNIFORM, CHANNEL)), choices[0])
    return max(choices)  # bits, rank ratios: the widest


def warm_start_candidates(setup: SearchSetup) -> list[tuple[dict[str, Any], dict[str, float]]]:
    """(Optuna parameters, attributes) of each warm-start candidate, mildest first, without
    repeats."""
    config = setup.config
    space = setup.space
    options = config.search.warm_start
    arch = space.family.largest_arch()
    model = space.family.build(
        arch, num_classes=setup.data.num_classes, input_shape=setup.data.input_shape
    )
    model.load_state_dict(setup.teacher_state)
    model.eval()
    task = config.make_task()
    train_loader, _ = make_loaders(
        setup.data,
        batch_size=config.train.batch_size or config.data.batch_size,
        num_workers=0,
        seed=config.seed,
    )
    inputs = [task.split(batch)[0] for batch in islice(train_loader, options.batches)]
    layers, prunable = space.layer_dimensions(arch)
    example = inputs[0][:1]
    excluded = [n for n in layers if matching(space.config.exclude, n)]
    blocks = list(getattr(space.family, "blocks", []))  # the droppable blocks of a user model
    start = time.perf_counter()
    sensitivity = measure_sensitivity(
        model,
        inputs,
        layers=[n for n in layers if n not in excluded],
        w_bits=space.config.w_bits,
        a_bits=space.config.a_bits,
        prune_leaders=prunable if len(space.config.prune_ratios) > 1 else [],
        prune_ratios=space.config.prune_ratios,
        blocks=blocks,
        ignored=[output_layer(model, example), *excluded],
        frozen=excluded,
        quantizers=space.config.quantizers,
        sparsities=space.config.sparsity,
        rank_ratios=space.config.rank_ratios,
    )
    costs = device_cost_model(setup, arch)
    logger.info(
        "Warm start: sensitivities and costs measured in %.1f s.", time.perf_counter() - start
    )
    allocator = Allocator(space, sensitivity, arch=arch, costs=costs)
    queued: list[tuple[dict[str, Any], dict[str, float]]] = []
    # No more than the run trains: queued trials beyond n_trials would wait in the study.
    for level in cost_levels(min(options.candidates, config.search.n_trials)):
        chosen, dropped, cost = allocator.for_level(level)
        wanted: dict[str, Any] = {f"arch.drop.{b}": b in dropped for b in blocks}
        for name, c in chosen.items():
            wanted |= {
                f"{name}.w_bits": c.w_bits,
                f"{name}.a_bits": c.a_bits,
                f"{name}.prune": c.prune,
                f"{name}.rank": c.rank,
                f"{name}.quantizer": c.quantizer,
                f"{name}.sparsity": c.sparsity,
            }
        replay = _Replay(wanted)
        space.suggest(replay)
        if all(replay.params != params for params, _ in queued):
            queued.append((replay.params, {"level": level, "cost": cost}))
    return queued


def warm_start_(study: optuna.Study, setup: SearchSetup) -> int:
    """Queue the warm-start candidates of ``setup.config`` once per run: only into a study
    that has no trials yet (not on resume, nor by a worker joining a running study). Returns
    how many were queued."""
    if setup.config.warm_start_method() == "none" or study.get_trials(deepcopy=False):
        return 0
    candidates = warm_start_candidates(setup)
    for index in coverage_order(len(candidates)):
        params, attrs = candidates[index]
        study.enqueue_trial(params, user_attrs={WARM_START_ATTR: attrs})
    logger.info(
        "Warm start: %d candidate(s) queued at cost levels %s of uniform int8.",
        len(candidates),
        ", ".join(f"{a['cost']:.2f}" for _, a in candidates),
    )
    return len(candidates)
