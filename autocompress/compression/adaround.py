"""AdaRound (Nagel et al., 2020, "Up or Down? Adaptive Rounding for Post-Training Quantization"):
choose, per weight, whether it rounds down or up to the quantization grid so that each layer's
output on calibration data stays close to the float layer's, instead of rounding to nearest.

For one layer with per-channel scale ``s`` (the weight quantizer's own: ``max |w| / qmax``), the
rounded weight is ``s * (floor(w / s) + h(V))`` with ``h(V) = clip(sigmoid(V) * (zeta - gamma) +
gamma, 0, 1)`` (the rectified sigmoid), and ``V`` minimises

    || layer(x_q; rounded weight) - layer_float(x_f) ||^2 / E[layer_float(x_f)^2]
    + reg x mean(1 - |2 h(V) - 1|^beta)

over the calibration batches, where ``x_q`` is what the layer receives in the quantized network
(the layers before it already rounded, activations quantized at their calibrated ranges) and
``x_f`` what it receives in the float network: the asymmetric reconstruction of the paper, which
also corrects the error the earlier layers made. ``beta`` anneals from 20 to 2 after a warm-up
without the regulariser, which drives every ``h`` to 0 or 1. Layers are processed in module
order.

The result is stored as the weight itself, snapped to the grid (``s x integer``, the largest
``|w|`` of each channel unchanged so that the quantizer recomputes the same scale): the layer,
its state_dict and its export compute with the chosen integer levels, with no new parameter.
Only uniform weight quantizers without a learned step are rounded (non-uniform levels and LSQ
steps have no floor/ceil pair to choose from).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..spaces.candidate import FLOAT_BITS
from .quantization import (
    UNIFORM,
    QuantConv2d,
    QuantLinear,
    float_output,
    quantization_disabled,
)

ZETA, GAMMA = 1.1, -0.1  # the rectified sigmoid's stretch (Nagel et al., 2020, section 3.2)
BETA_START, BETA_END = 20.0, 2.0
WARMUP = 0.2  # fraction of the iterations without the rounding regulariser


class _Captured(Exception):
    """Raised by a capture hook to end the forward pass once the layer's input is seen."""


def roundable(module: nn.Module) -> bool:
    """Whether AdaRound applies to ``module``: a fake-quant layer with uniform weights below
    32 bits and no learned (LSQ) step."""
    return (
        isinstance(module, QuantConv2d | QuantLinear)
        and module.w_bits < FLOAT_BITS
        and module.w_quantizer == UNIFORM
        and getattr(module, "w_step", None) is None
    )


def rectified_sigmoid(v: Tensor) -> Tensor:
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def _grid(weight: Tensor, bits: int) -> tuple[Tensor, Tensor, Tensor, int]:
    """The per-channel scale of :func:`quantize_weight` (shaped to broadcast), ``w / scale``,
    where each channel's largest ``|w|`` is, and ``qmax``."""
    qmax = 2 ** (bits - 1) - 1
    max_abs = weight.abs().flatten(1).amax(dim=1).view(-1, *([1] * (weight.dim() - 1)))
    scale = torch.where(max_abs > 0, max_abs / qmax, torch.ones_like(max_abs))
    return scale, weight / scale, (weight.abs() == max_abs) & (max_abs > 0), qmax


@torch.no_grad()
def layer_inputs(model: nn.Module, layer: nn.Module, inputs: Sequence[Tensor]) -> Tensor:
    """What ``layer`` receives (before its own input quantization) when ``model`` runs each
    batch of ``inputs``, concatenated; each forward pass stops at ``layer``."""
    seen: list[Tensor] = []

    def capture(module: nn.Module, args: tuple) -> None:
        seen.append(args[0].detach())
        raise _Captured

    handle = layer.register_forward_pre_hook(capture)
    try:
        for x in inputs:
            try:
                model(x)
            except _Captured:
                pass
    finally:
        handle.remove()
    if not seen:
        raise ValueError("The layer is not on the path of the calibration inputs.")
    return torch.cat(seen)


def round_layer_(
    module: QuantConv2d | QuantLinear,
    x_quant: Tensor,
    target: Tensor,
    *,
    iterations: int,
    reg: float = 0.01,
    lr: float = 3e-2,  # the paper's 1e-3 is for 10-20k steps; a few hundred need more
    batch: int = 32,
    generator: torch.Generator | None = None,
) -> tuple[float, float]:
    """AdaRound one layer in place: ``x_quant`` its inputs in the quantized network (before its
    input quantization), ``target`` the float layer's outputs to match. Returns the relative
    output error (squared error / target energy over all the inputs) with rounding to nearest
    and with the learned rounding."""
    weight = module.masked_weight().detach()
    mask = module.weight_mask
    scale, scaled, pinned, qmax = _grid(weight, module.w_bits)
    base = torch.floor(scaled)
    rest = scaled - base
    v = (-torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1)).requires_grad_()
    # Each channel's largest |w| (``pinned``) lies on the grid at +-qmax: kept there, so the
    # quantizer recomputes the same scale from the stored weight.
    with torch.no_grad():
        x_in = module.quantize_input(x_quant)
        energy = target.pow(2).mean().clamp_min(1e-12)

    def rounded(h: Tensor) -> Tensor:
        levels = torch.where(pinned, torch.round(scaled), torch.clamp(base + h, -qmax, qmax))
        w = levels * scale
        return w if mask is None else w * mask

    def error(w: Tensor) -> float:
        with torch.no_grad():
            out = torch.cat([float_output(module, x, w) for x in x_in.split(256)])
            return float((out - target).pow(2).mean() / energy)

    nearest = error(rounded((rest >= 0.5).to(rest)))
    optimizer = torch.optim.Adam([v], lr=lr)
    warmup = int(WARMUP * iterations)
    count = x_in.shape[0]
    for step in range(iterations):
        picked = torch.randint(count, (min(batch, count),), generator=generator)
        picked = picked.to(x_in.device)
        h = rectified_sigmoid(v)
        out = float_output(module, x_in[picked], rounded(h))
        loss = (out - target[picked]).pow(2).mean() / energy
        if step >= warmup:
            progress = (step - warmup) / max(iterations - warmup, 1)
            beta = BETA_END + (BETA_START - BETA_END) * (1 - progress)
            loss = loss + reg * (1 - (2 * h - 1).abs().pow(beta)).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        final = rounded((rectified_sigmoid(v) >= 0.5).to(rest))
        learned = error(final)
        if learned > nearest:  # a short schedule can end worse: keep rounding to nearest
            final, learned = rounded((rest >= 0.5).to(rest)), nearest
        module.weight.copy_(final)
    return nearest, learned


def adaround_(
    model: nn.Module,
    inputs: Sequence[Tensor],
    *,
    iterations: int = 200,
    reg: float = 0.01,
    seed: int = 0,
) -> dict[str, tuple[float, float]]:
    """AdaRound every roundable layer of ``model`` (see the module doc) on the calibration
    batches ``inputs``, in module order, in place; the activation ranges must be calibrated
    already. Ends in eval mode. Returns ``{name: (error to nearest, error learned)}``, each the
    layer's relative output error against the float network on ``inputs``."""
    inputs = list(inputs)
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    errors = {}
    for name, module in model.named_modules():
        if not roundable(module):
            continue
        try:
            with quantization_disabled(model):
                x_float = layer_inputs(model, module, inputs)
            x_quant = layer_inputs(model, module, inputs)
        except ValueError:
            continue  # not on the path of these inputs: left as it is
        with torch.no_grad():
            weight = module.masked_weight()
            target = torch.cat([float_output(module, x, weight) for x in x_float.split(256)])
        with torch.enable_grad():
            errors[name] = round_layer_(
                module, x_quant, target, iterations=iterations, reg=reg, generator=generator
            )
    return errors


__all__ = ["adaround_", "layer_inputs", "rectified_sigmoid", "round_layer_", "roundable"]
