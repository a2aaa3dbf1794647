"""How much a trained network's output moves when one layer is compressed.

Each choice is measured on its own, on a few input batches, as the relative output distortion
``sum ||f'(x) - f(x)||^2 / sum ||f(x) - mean f(x)||^2`` (0: unchanged; 1: as far off as the
outputs vary). It is the measured counterpart of HAWQ's Hessian-weighted perturbation and
ZeroQ's per-layer sensitivity, and needs no labels, so it holds for any task.

To keep it to a few forward passes per layer, bit-widths are measured once per layer and
extrapolated: output distortion grows in proportion to the perturbation's energy while the
perturbation is small (second-order model of the output), so

- weights: one probe at ``probe_bits`` gives the layer's distortion per unit of weight error
  energy, and each offered width is priced by its exact error energy
  ``||Q_b(W) - W||^2``;
- activations: uniform rounding noise has variance ``step^2 / 12`` with
  ``step = range / (2^b - 1)``, so the probe's distortion scales by
  ``((2^p - 1) / (2^b - 1))^2``.

The same gain prices the other changes a layer's weights can get, each by its exact error
energy and no probe of its own: a non-uniform quantizer (``||Q(W) - W||^2`` on its levels), a
fine-grained sparsity (the energy of the smallest-magnitude weights it zeroes) and a low-rank
factorization (the energy of the discarded singular values). They perturb the weights alone,
as quantization does; a factorization's error is less like noise (it removes whole directions),
so its figure is the rougher one.

Pruning ratios and dropped blocks are measured one by one: a group's ratio by zeroing the
inputs that read its removed channels (``pruning.ChannelMasks``, exact where the group keeps
channels apart), else on a pruned copy.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..spaces.candidate import (
    CODEBOOK,
    DENSE,
    FLOAT_BITS,
    FULL_RANK,
    NONUNIFORM_MAX_BITS,
    UNIFORM,
    Sparsity,
    factorizable_shape,
    low_rank,
    low_rank_pays,
)
from .pruning import ChannelMasks, prune_, zeroed_columns
from .quantization import (
    activation_qparams,
    fake_quantize,
    fit_codebook,
    quantize_weight,
    quantize_weight_nonuniform,
)
from .sparsity import sparsity_mask

__all__ = [
    "Sensitivity",
    "faster_layout",
    "flat_output",
    "measure_sensitivity",
    "output_distortion",
]


@dataclass
class Sensitivity:
    """Relative output distortion of each single compression choice, and each layer's size."""

    w_bits: dict[str, dict[int, float]] = field(default_factory=dict)
    a_bits: dict[str, dict[int, float]] = field(default_factory=dict)
    prune: dict[str, dict[float, float]] = field(default_factory=dict)
    drop: dict[str, float] = field(default_factory=dict)
    # Weight-only changes besides uniform bits, priced by the layer's gain (module doc):
    quantizer: dict[str, dict[tuple[str, int], float]] = field(default_factory=dict)
    sparsity: dict[str, dict[Sparsity, float]] = field(default_factory=dict)
    rank: dict[str, dict[float, float]] = field(default_factory=dict)  # ratios that pay only
    params: dict[str, int] = field(default_factory=dict)  # weights of each layer
    macs: dict[str, int] = field(default_factory=dict)  # multiply-accumulates per sample
    shapes: dict[str, tuple[int, int]] = field(default_factory=dict)  # factorizable matrices


def flat_output(output: Any) -> Tensor:
    """All tensors of a (possibly nested) model output as one float vector per sample."""
    if isinstance(output, Tensor):
        return output.float().flatten(1) if output.dim() > 1 else output.float()[:, None]
    if isinstance(output, Mapping):
        output = list(output.values())
    if isinstance(output, list | tuple):
        parts = [flat_output(o) for o in output if isinstance(o, Tensor | Mapping | list | tuple)]
        if parts:
            return torch.cat(parts, dim=1)
    raise TypeError(f"cannot measure a model output of type {type(output).__name__}")


@torch.no_grad()
def output_distortion(
    model: nn.Module, inputs: Sequence[Any], reference: Sequence[Tensor]
) -> float:
    """``sum ||model(x) - ref||^2 / sum ||ref - mean(ref)||^2`` over the batches ``inputs``
    (``reference``: the flattened outputs of the unchanged model on them)."""
    error = spread = 0.0
    for x, ref in zip(inputs, reference, strict=True):
        out = flat_output(model(x))
        error += float((out - ref).pow(2).sum())
        spread += float((ref - ref.mean(dim=0, keepdim=True)).pow(2).sum())
    return error / spread if spread > 0 else error


@contextmanager
def faster_layout(model: nn.Module, inputs: Sequence[Any]) -> Iterator[list[Any]]:
    """Run the block with the eval-mode ``model`` and its image batches in whichever memory
    layout runs its forward pass faster on this host, NCHW or channels-last (oneDNN's depthwise
    convolutions run several times faster channels-last: MobileNetV3 on 64 32x32 images, 43 ms
    against 18 ms on a 2-core CPU). Yields ``inputs`` in that layout; batches that are not
    4-D tensors, and models without them, stay as they are. One timing per layout decides: a
    sensitivity measurement repeats that forward pass a few hundred times. On exit the model
    holds its own tensors again."""
    if not inputs or not all(isinstance(x, Tensor) and x.dim() == 4 for x in inputs):
        yield list(inputs)
        return
    tensors = [*model.parameters(), *model.buffers()]
    own = [t.data for t in tensors]

    @torch.no_grad()
    def seconds(layout: torch.memory_format) -> float:
        model.to(memory_format=layout)
        x = inputs[0].contiguous(memory_format=layout)
        try:
            model(x)  # the first call of a layout pays for oneDNN's kernel selection
        except RuntimeError:
            if layout == torch.contiguous_format:
                raise
            return math.inf  # e.g. a ``.view`` that needs NCHW strides
        start = time.perf_counter()
        model(x)
        return time.perf_counter() - start

    try:
        fastest = min((torch.contiguous_format, torch.channels_last), key=seconds)
        model.to(memory_format=fastest)
        yield [x.contiguous(memory_format=fastest) for x in inputs]
    finally:
        for tensor, data in zip(tensors, own, strict=True):
            tensor.data = data


def _probe(bits: Iterable[int]) -> int | None:
    """The width a layer's quantization is measured at: the narrowest offered of at least 4
    bits (narrower ones leave the small-perturbation regime the extrapolation assumes)."""
    quantized = sorted(b for b in bits if b < FLOAT_BITS)
    if not quantized:
        return None
    return next((b for b in quantized if b >= 4), quantized[-1])


@torch.no_grad()
def measure_sensitivity(
    model: nn.Module,
    inputs: Sequence[Any],
    *,
    layers: Sequence[str],
    w_bits: Sequence[int],
    a_bits: Sequence[int],
    prune_leaders: Sequence[str] = (),
    prune_ratios: Sequence[float] = (),
    blocks: Sequence[str] = (),
    ignored: Sequence[str] = (),
    frozen: Sequence[str] = (),
    quantizers: Sequence[str] = (),
    sparsities: Sequence[Sparsity] = (),
    rank_ratios: Sequence[float] = (),
) -> Sensitivity:
    """Sensitivity of the eval-mode ``model`` to each choice, on the batches ``inputs``.

    ``layers``: Conv2d/Linear names that get ``w_bits``/``a_bits``; ``prune_leaders``: group
    leaders pruned at each of ``prune_ratios`` (``ignored``: layers whose channels stay, as in
    ``prune_``); ``blocks``: modules replaced by the identity one at a time. ``model`` is left
    as it was. ``frozen``: layers that keep their precision, whose size (``params``, ``macs``)
    is recorded all the same. ``quantizers`` (non-uniform ones, at each of ``w_bits`` up to
    8), ``sparsities`` and ``rank_ratios`` are priced from each layer's weight gain."""
    model.eval()
    # Traced before the layout changes: channels-last adds restrides that read as mixing.
    masks = ChannelMasks(model, inputs[0][:1], ignored=ignored) if prune_leaders else None
    with faster_layout(model, inputs) as inputs:
        modules = dict(model.named_modules())
        result = Sensitivity()
        ranges: dict[str, list[float]] = {}

        def observe(name: str):
            def hook(module: nn.Module, args: tuple, output: Any) -> None:
                x = args[0].detach()
                lo, hi = float(x.min()), float(x.max())
                seen = ranges.setdefault(name, [lo, hi])
                seen[0], seen[1] = min(seen[0], lo), max(seen[1], hi)
                per_sample = output.numel() // max(x.shape[0], 1)
                result.macs[name] = per_sample * module.weight[0].numel()

            return hook

        handles = [modules[n].register_forward_hook(observe(n)) for n in [*layers, *frozen]]
        try:
            reference = [flat_output(model(x)) for x in inputs]
        finally:
            for handle in handles:
                handle.remove()

        result.params = {n: modules[n].weight.numel() for n in [*layers, *frozen]}
        w_probe, a_probe = _probe(w_bits), _probe(a_bits)
        for name in layers:
            weight = modules[name].weight
            result.w_bits[name], gain = _weight_sensitivity(
                model, weight, w_bits, w_probe, inputs, reference
            )
            _weight_changes(
                result, name, modules[name], gain, w_bits, quantizers, sparsities, rank_ratios
            )
            result.a_bits[name] = _activation_sensitivity(
                model, modules[name], ranges[name], a_bits, a_probe, inputs, reference
            )
        if masks is not None:
            result.prune = {
                name: _pruning_sensitivity(
                    model, masks, name, prune_ratios, inputs, reference, ignored
                )
                for name in prune_leaders
            }
        for name in blocks:
            handle = modules[name].register_forward_hook(lambda module, args, output: args[0])
            try:
                result.drop[name] = output_distortion(model, inputs, reference)
            finally:
                handle.remove()
        return result


def _pruning_sensitivity(
    model: nn.Module,
    masks: ChannelMasks,
    leader: str,
    ratios: Sequence[float],
    inputs: Sequence[Any],
    reference: Sequence[Tensor],
    ignored: Sequence[str],
) -> dict[float, float]:
    distortions = {0.0: 0.0}
    for ratio in ratios:
        if ratio <= 0:
            continue
        columns = masks.columns(leader, ratio)
        if columns is None:  # only the pruned network itself says
            example = inputs[0][:1]
            pruned = prune_(copy.deepcopy(model), {leader: ratio}, example, ignored=ignored)
            distortions[ratio] = output_distortion(pruned, inputs, reference)
            continue
        with zeroed_columns(columns):
            distortions[ratio] = output_distortion(model, inputs, reference)
    return distortions


def _weight_sensitivity(
    model: nn.Module,
    weight: Tensor,
    bits: Sequence[int],
    probe: int | None,
    inputs: Sequence[Any],
    reference: Sequence[Tensor],
) -> tuple[dict[int, float], float]:
    """The distortion of each width, and the layer's gain: distortion per unit of weight error
    energy."""
    errors = {b: _energy(quantize_weight(weight, b) - weight) for b in bits}
    if probe is None or errors[probe] == 0:
        return {b: 0.0 for b in bits}, 0.0
    original = weight.detach().clone()
    weight.copy_(quantize_weight(weight, probe))
    try:
        per_energy = output_distortion(model, inputs, reference) / errors[probe]
    finally:
        weight.copy_(original)
    return {b: per_energy * errors[b] for b in bits}, per_energy


def _energy(error: Tensor) -> float:
    return float(error.double().pow(2).sum())


def _weight_changes(
    result: Sensitivity,
    name: str,
    module: nn.Module,
    gain: float,
    w_bits: Sequence[int],
    quantizers: Sequence[str],
    sparsities: Sequence[Sparsity],
    rank_ratios: Sequence[float],
) -> None:
    """Record in ``result`` the distortion of each non-uniform quantizer, sparsity and paying
    rank ratio of layer ``name``: its gain times the change's weight error energy."""
    w = module.weight.detach().contiguous()  # the probes may run channels-last
    result.quantizer[name] = {}
    for quantizer in quantizers:
        if quantizer == UNIFORM:
            continue
        for bits in w_bits:
            if bits <= NONUNIFORM_MAX_BITS:
                codebook = fit_codebook(w, bits) if quantizer == CODEBOOK else None
                quantized = quantize_weight_nonuniform(w, bits, quantizer, codebook)
                result.quantizer[name][(quantizer, bits)] = gain * _energy(quantized - w)
    result.sparsity[name] = {
        value: gain * _energy(w[~sparsity_mask(w.abs(), value)])
        for value in sparsities
        if value != DENSE
    }
    shape = factorizable_shape(module)
    paying = [r for r in rank_ratios if shape is not None and low_rank_pays(r, *shape)]
    if not paying:
        return
    result.shapes[name] = shape
    # Energy beyond the rank: the discarded singular values (lowrank's channel SVD matrix).
    squared = torch.linalg.svdvals(w.reshape(shape)).double().pow(2)
    tail = squared.flip(0).cumsum(0).flip(0).tolist() + [0.0]
    result.rank[name] = {r: gain * tail[low_rank(r, *shape)] for r in paying if r < FULL_RANK}


def _activation_sensitivity(
    model: nn.Module,
    module: nn.Module,
    observed: list[float],
    bits: Sequence[int],
    probe: int | None,
    inputs: Sequence[Any],
    reference: Sequence[Tensor],
) -> dict[int, float]:
    if probe is None:
        return {b: 0.0 for b in bits}
    lo, hi = torch.tensor(observed[0]), torch.tensor(observed[1])
    scale, zero_point = activation_qparams(lo, hi, probe)

    def quantize_input(module: nn.Module, args: tuple) -> tuple:
        return (fake_quantize(args[0], scale, zero_point, 0, 2**probe - 1), *args[1:])

    handle = module.register_forward_pre_hook(quantize_input)
    try:
        distortion = output_distortion(model, inputs, reference)
    finally:
        handle.remove()
    levels = 2**probe - 1
    return {b: 0.0 if b >= FLOAT_BITS else distortion * (levels / (2**b - 1)) ** 2 for b in bits}
