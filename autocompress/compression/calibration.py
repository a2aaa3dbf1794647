"""Post-training quantization (PTQ) of fake-quant layers, in place and without training:
BatchNorm statistics, weight clipping, activation ranges and bias correction.

Every result is stored where the quantizer already reads it (the clipped weights, the
``act_min``/``act_max`` observer buffers, the biases, the BatchNorm statistics), so a saved or
exported model is exactly the model that was scored. :func:`post_training_quantize_` chains the
steps; each one is public on its own.

Ranges are chosen per layer by ``method``: ``minmax`` (the observed extremes), ``percentile``
(the ``percentile``-th of the values, per tail) or ``mse`` (the clipping threshold, a fraction of
the extremes, that minimises the mean squared quantization error; Banner et al., 2019). Bias
correction follows Nagel et al., 2019 (empirical variant).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from functools import partial

import torch
from torch import Tensor, nn

from ..spaces.candidate import FLOAT_BITS
from .adaround import adaround_
from .quantization import (
    CODEBOOK,
    QuantConv2d,
    QuantLinear,
    activation_qparams,
    clip_weight_,
    float_output,
    quantization_disabled,
    quantize_weight_nonuniform,
    set_activation_range_,
)

CALIBRATIONS = ("minmax", "percentile", "mse")
# Clipping thresholds tried by ``mse``, as fractions of the observed extremes: geometric, since
# a heavy tail puts the best threshold far below the extremes. Largest first: on a tie the
# widest range (min/max) wins, so ``mse`` is never worse than ``minmax`` on the calibration data.
MSE_FRACTIONS = torch.logspace(0, -3, 100)
# Values of one batch kept per layer for ``percentile``/``mse`` (the extremes are always kept):
# over a few batches, enough for a 99.99th percentile; few enough for the MSE grid to take
# milliseconds.
SAMPLES_PER_BATCH = 2**14
# Elements of one vectorised step of the MSE grid search (256 kB of float32: larger
# steps run out of cache and take longer than the loop they replace).
_GRID_ELEMENTS = 2**16


def _check_method(method: str, *, where: str) -> None:
    if method not in CALIBRATIONS:
        raise ValueError(
            f"The 'method' parameter of {where} must be one of {', '.join(CALIBRATIONS)}. "
            f"Got {method!r} instead."
        )


def activation_range(
    x: Tensor, *, bits: int, method: str = "minmax", percentile: float = 99.99
) -> tuple[Tensor, Tensor]:
    """The range ``(lo, hi)`` to quantize activations ``x`` (any shape) to ``bits`` bits with
    the asymmetric per-tensor quantizer of the fake-quant layers, chosen by ``method``."""
    _check_method(method, where="activation_range")
    x = x.detach().flatten().float()
    lo, hi = x.amin(), x.amax()
    if method == "percentile":
        lo, hi = _quantile(x, 1 - percentile / 100), _quantile(x, percentile / 100)
    elif method == "mse":
        errors = torch.cat(
            [
                activation_error(x, fractions * lo, fractions * hi, bits)
                for fractions in _fraction_chunks(x.numel(), like=x)
            ]
        )
        best = MSE_FRACTIONS[int(errors.argmin())].to(x)  # the first of equals: the widest
        lo, hi = best * lo, best * hi
    return lo, hi


def _fraction_chunks(values: int, *, like: Tensor) -> tuple[Tensor, ...]:
    """``MSE_FRACTIONS`` in chunks that each broadcast against ``values`` values to at most
    ``_GRID_ELEMENTS`` elements: one vectorised error computation per chunk, not per fraction
    (per-fraction calls cost more in dispatch than in arithmetic on small layers)."""
    size = max(1, _GRID_ELEMENTS // max(values, 1))
    return MSE_FRACTIONS.to(like).split(size)


def _quantile(x: Tensor, q: float) -> Tensor:
    # kthvalue rather than torch.quantile, which refuses tensors of more than 2^24 values.
    return x.kthvalue(min(x.numel(), max(1, round(q * x.numel())))).values


def activation_error(x: Tensor, lo: Tensor, hi: Tensor, bits: int) -> Tensor:
    """Mean squared error of quantizing ``x`` (1-D) with the range ``[lo, hi]`` at ``bits``
    bits; with ``lo`` and ``hi`` of shape ``[k]``, the ``k`` errors of ``k`` ranges."""
    scale, zero_point = activation_qparams(lo, hi, bits)
    if scale.dim():
        scale, zero_point, x = scale[:, None], zero_point[:, None], x[None]
    # fake_quantize's forward value, without the straight-through term no one differentiates.
    q = torch.clamp(torch.round(x / scale) + zero_point, 0, 2**bits - 1)
    return ((q - zero_point) * scale - x).square().mean(dim=-1)


def weight_clip(
    weight: Tensor,
    *,
    bits: int,
    method: str = "minmax",
    percentile: float = 99.99,
    quantizer: str = "uniform",
) -> Tensor:
    """The per-output-channel clipping threshold (``max |w|`` of the symmetric quantizer, shape
    ``[C]``) for ``weight`` at ``bits`` bits, chosen by ``method``; ``minmax`` keeps every
    channel's largest ``|w|``. ``mse`` measures the error of ``quantizer`` (uniform, pot or apot:
    those scale each channel by its largest ``|w|``)."""
    _check_method(method, where="weight_clip")
    w = weight.detach().float()
    magnitudes = w.abs().flatten(1)
    max_abs = magnitudes.amax(dim=1)
    if method == "percentile":
        return torch.quantile(magnitudes, percentile / 100, dim=1)
    if method == "minmax" or bits >= FLOAT_BITS:
        return max_abs
    rows = w.flatten(1)
    errors = []
    for fractions in _fraction_chunks(rows.numel(), like=rows):
        # Every fraction's clipped copy at once, as rows of one weight: the quantizers scale
        # each row (output channel) by its own largest |w|, which clipping sets to the bound.
        bound = (fractions[:, None] * max_abs[None, :])[..., None]  # [k, C, 1]
        clipped = torch.minimum(torch.maximum(rows, -bound), bound)
        quantized = quantize_weight_nonuniform(clipped.flatten(0, 1), bits, quantizer)
        errors.append((quantized.view_as(clipped) - rows).square().mean(dim=-1))
    best = torch.cat(errors).argmin(dim=0)  # the first of equals: the widest clip
    return MSE_FRACTIONS.to(w)[best] * max_abs


def _quant_layers(model: nn.Module) -> dict[str, QuantConv2d | QuantLinear]:
    return {
        name: m for name, m in model.named_modules() if isinstance(m, QuantConv2d | QuantLinear)
    }


@torch.no_grad()
def recalibrate_batchnorm_(
    model: nn.Module, inputs: Iterable[Tensor], *, observe_ranges: bool = False
) -> int:
    """Re-estimate every BatchNorm's running statistics as the exact average over the batches
    ``inputs``, every other module in eval mode (fake-quant layers keep their ranges, dropout is
    off), or, with ``observe_ranges``, the whole model in train mode (fake-quant layers observe
    their input ranges on the same batches). Pruned or quantized networks need it: the inherited
    statistics describe the teacher's activations. Ends in eval mode; returns the number of
    batches."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    model.train(observe_ranges)
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average instead of an EMA
        m.train()
    used = 0
    try:
        for x in inputs:
            model(x)
            used += 1
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        model.eval()
    return used


@torch.no_grad()
def clip_weights_(
    model: nn.Module, *, method: str = "minmax", percentile: float = 99.99
) -> dict[str, Tensor]:
    """Clip the weights of every fake-quant layer of ``model`` that quantizes them, per output
    channel, at the threshold :func:`weight_clip` chooses; in place. Returns the thresholds by
    layer name."""
    _check_method(method, where="clip_weights_")
    thresholds = {}
    for name, m in _quant_layers(model).items():
        if m.w_bits >= FLOAT_BITS or method == "minmax":
            continue  # min/max is the quantizer's own range: nothing to clip
        if m.w_quantizer == CODEBOOK:
            continue  # a codebook has no range to clip: k-means places its values
        thresholds[name] = weight_clip(
            m.weight, bits=m.w_bits, method=method, percentile=percentile, quantizer=m.w_quantizer
        )
        clip_weight_(m, thresholds[name])
    return thresholds


@torch.no_grad()
def calibrate_activations_(
    model: nn.Module,
    inputs: Iterable[Tensor],
    *,
    method: str = "minmax",
    percentile: float = 99.99,
    seed: int = 0,
) -> dict[str, tuple[float, float]]:
    """Set the input range of every fake-quant layer of ``model`` that quantizes activations
    from the values it receives when the float network (quantization off) runs the batches
    ``inputs``, chosen by ``method``; in place. ``seed`` draws the values kept per batch for
    ``percentile``/``mse``. Ends in eval mode. Returns ``{name: (lo, hi)}``."""
    _check_method(method, where="calibrate_activations_")
    layers = {n: m for n, m in _quant_layers(model).items() if m.a_bits < FLOAT_BITS}
    seen: dict[str, list[Tensor]] = {name: [] for name in layers}
    generator = torch.Generator().manual_seed(seed)

    def keep(name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            x = args[0].detach().flatten().float()
            extremes = torch.stack([x.amin(), x.amax()])
            if method != "minmax" and x.numel() > SAMPLES_PER_BATCH:
                picked = torch.randint(x.numel(), (SAMPLES_PER_BATCH,), generator=generator)
                x = x[picked.to(x.device)]
            seen[name].append(torch.cat([extremes, x]).cpu() if method != "minmax" else extremes)

        return hook

    handles = [m.register_forward_pre_hook(keep(name)) for name, m in layers.items()]
    try:
        with quantization_disabled(model):
            model.eval()
            for x in inputs:
                model(x)
    finally:
        for handle in handles:
            handle.remove()
    ranges = {}
    for name, m in layers.items():
        if not seen[name]:
            continue  # not on the path of these inputs: its range stays as it was
        values = torch.cat(seen[name])
        lo, hi = activation_range(values, bits=m.a_bits, method=method, percentile=percentile)
        set_activation_range_(m, lo, hi)
        ranges[name] = (float(lo), float(hi))
    return ranges


@torch.no_grad()
def observe_activations_(model: nn.Module, inputs: Iterable[Tensor]) -> int:
    """Set the input ranges of ``model``'s fake-quant layers as QAT's own observer would on
    the batches ``inputs``, in place: each range restarts from the first batch and follows the
    exponential moving average of the per-batch extremes, observed on the quantized network
    (each layer sees its quantized upstream); BatchNorm and dropout stay in eval mode and
    nothing is trained. Ends in eval mode. Returns the number of batches run.

    Against :func:`calibrate_activations_`, whose ranges cover every batch's extremes on the
    float network, the average of per-batch extremes clips the rare outlier and suits the
    quantized inputs the layer really gets: on MobileNetV3 at int8 it kept 386 of 397 correct
    validation images on average over six calibration draws, min/max 383.5, the teacher 387."""
    model.eval()  # observed by hooks, not train mode: a codebook layer would refit in it
    layers = [m for m in _quant_layers(model).values() if m.a_bits < FLOAT_BITS]
    handles = []
    for m in layers:
        m.act_initialized.fill_(False)
        handles.append(m.register_forward_pre_hook(lambda m, args: m.observe_input(args[0])))
    count = 0
    try:
        for x in inputs:
            model(x)
            count += 1
    finally:
        for handle in handles:
            handle.remove()
    return count


def _channel_mean(y: Tensor, module: nn.Module) -> tuple[Tensor, int]:
    """Sum over everything but the output channel, and the count summed: a convolution's
    channels are dim 1, a linear layer's the last dim."""
    channels = y.movedim(1, -1) if isinstance(module, QuantConv2d) else y
    flat = channels.reshape(-1, channels.shape[-1])
    return flat.sum(dim=0), flat.shape[0]


@torch.no_grad()
def correct_bias_(
    model: nn.Module,
    inputs: Sequence[Tensor],
    *,
    float_weights: Mapping[str, Tensor] | None = None,
    passes: int = 2,
) -> dict[str, Tensor]:
    """Bias correction: shift the bias of every fake-quant layer of ``model`` that has one by
    the mean error, per output channel, between its quantized output and its float output on
    the inputs it receives when ``model`` runs ``inputs``; in place.

    After it, ``mean(quantized layer(x) - float layer(x)) ~ 0`` per channel on those inputs.
    ``float_weights``: the float layer's weights by layer name (e.g. saved before weight
    clipping); default: the layer's current weight. All layers are measured in one forward
    pass over ``inputs`` and corrected together, ``passes`` times: a layer's inputs move only
    with the corrections upstream of it, so each pass re-measures every layer on the inputs
    the previous pass's corrections produce (exact after as many passes as the network is
    deep, close after two since upstream shifts move a layer's mean error little; one pass
    per layer, the exact order, took 3x the whole PTQ's time on MobileNetV3 for the same
    accuracy). A layer without a bias is left as it is (a BatchNorm after it, re-estimated on
    the quantized network, absorbs its shift). Ends in eval mode. Returns the shift subtracted
    from each bias, by layer name.
    """
    float_weights = float_weights or {}
    model.eval()
    layers = {
        name: m
        for name, m in _quant_layers(model).items()
        if m.bias is not None
        and m.quant_enabled
        and (m.w_bits < FLOAT_BITS or m.a_bits < FLOAT_BITS)
    }
    biases = {name: m.bias.detach().clone() for name, m in layers.items()}
    weights = {name: float_weights.get(name, m.weight).to(m.weight) for name, m in layers.items()}
    shifts: dict[str, Tensor] = {}  # of the layers that saw inputs
    for _ in range(passes):
        errors: dict[str, tuple[Tensor, int]] = {}
        handles = [
            m.register_forward_hook(partial(_record_error, errors, name, weights[name]))
            for name, m in layers.items()
        ]
        try:
            for x in inputs:
                model(x)
        finally:
            for handle in handles:
                handle.remove()
        # The bias cancels out of a layer's own error: only its inputs, moved by the upstream
        # corrections, change the error from one pass to the next.
        for name, (total, count) in errors.items():
            shifts[name] = total / count
            layers[name].bias.copy_(biases[name] - shifts[name])
    return shifts


def _record_error(
    errors: dict[str, tuple[Tensor, int]],
    name: str,
    weight: Tensor,
    module: nn.Module,
    args: tuple,
    output: Tensor,
) -> None:
    """Forward hook: add the per-channel sum of ``output - float output`` to ``errors[name]``."""
    summed, n = _channel_mean(output - float_output(module, args[0], weight), module)
    total, count = errors.get(name, (0, 0))
    errors[name] = (total + summed, count + n)


def post_training_quantize_(
    model: nn.Module,
    inputs: Sequence[Tensor],
    *,
    method: str = "mse",
    percentile: float = 99.99,
    bias_correction: bool = True,
    adaround_iterations: int = 0,
    seed: int = 0,
) -> nn.Module:
    """Calibrate a compressed model's fake-quant layers on the batches ``inputs``, in place:

    1. BatchNorm statistics re-estimated on the float network (quantization off): a pruned
       network's inherited statistics are wrong, and the ranges below are read from it;
    2. weights clipped per output channel by ``method`` (:func:`clip_weights_`);
    3. activation ranges per layer by ``method`` (:func:`calibrate_activations_`);
    3b. with ``adaround_iterations``, each uniform weight rounded up or down by AdaRound, that
       many optimizer steps per layer (:func:`~autocompress.compression.adaround.adaround_`);
    4. ``bias_correction``: BatchNorm statistics re-estimated on the quantized network (it
       removes the mean shift of the bias-less layers before them), then the bias of the other
       layers corrected against the float weights of step 1 (:func:`correct_bias_`).

    Ends in eval mode. Returns ``model``.
    """
    _check_method(method, where="post_training_quantize_")
    inputs = list(inputs)
    with quantization_disabled(model):
        recalibrate_batchnorm_(model, inputs)
    float_weights = {
        name: m.weight.detach().clone()
        for name, m in _quant_layers(model).items()
        if m.bias is not None
    }
    clip_weights_(model, method=method, percentile=percentile)
    calibrate_activations_(model, inputs, method=method, percentile=percentile, seed=seed)
    if adaround_iterations:
        adaround_(model, inputs, iterations=adaround_iterations, seed=seed)
    if bias_correction:
        recalibrate_batchnorm_(model, inputs)
        correct_bias_(model, inputs, float_weights=float_weights)
    return model.eval()


__all__ = [
    "CALIBRATIONS",
    "activation_error",
    "activation_range",
    "calibrate_activations_",
    "clip_weights_",
    "correct_bias_",
    "observe_activations_",
    "post_training_quantize_",
    "quantization_disabled",
    "recalibrate_batchnorm_",
    "weight_clip",
]
