"""Quantization-aware training: fake-quant Conv2d/Linear layers at any bit-width from 2 to 32.

Weights are quantized symmetrically per output channel; input activations asymmetrically per
tensor, with a min/max range tracked by an exponential moving average while training. Rounding
uses a straight-through estimator (STE) so the layers train like float layers.

A layer's weights may instead use a non-uniform quantizer (``w_quantizer``, 2..8 bits; the
input activations stay uniform). Each maps every weight to the nearest entry of a sorted level
table (ties to the lower level), as a ``b``-bit index into it, with an STE gradient:

* ``pot`` (power of two): levels ``{0, +-2^-k, k = 0 .. 2^(b-1) - 2}`` (a sign bit and a
  ``b - 1``-bit exponent index, 2^b - 1 levels) times the channel's scale ``s = max |w|``.
  Rounding is to the nearest level in the linear domain, not in the log domain: small weights
  go to 0 or the nearest power of two by absolute error.
* ``apot`` (additive powers of two, Li et al., ICLR 2020): each magnitude is the sum of two
  PoT terms, ``p0 in {0, 2^0, 2^-2, 2^-4, ...}`` (``ceil((b-1)/2)`` bits) and
  ``p1 in {0, 2^-1, 2^-3, ...}`` (``floor((b-1)/2)`` bits), normalised so the largest is 1, with
  a sign bit; times the channel's scale ``max |w|``. Float32 rounding may merge a few of the
  smallest sums at 7-8 bits.
* ``codebook`` (k-means, Deep Compression): 2^b shared float32 values per layer (no scale),
  the persistent buffer ``codebook``. It is fitted by :func:`fit_codebook` (Lloyd's algorithm,
  ``CODEBOOK_ITERATIONS`` iterations from 2^b values spaced linearly between the smallest and
  largest weight: deterministic) when the layer is made and at every training-mode forward, on
  the detached weights; evaluation, export and packing use the buffer as it is.

LSQ (learned step size, Esser et al., ICLR 2020; ``train.lsq``): :func:`enable_lsq_` gives each
uniform quantized weight a learnable per-channel step ``w_step`` (a parameter, initialised to
the ``max |w| / qmax`` scale it replaces), trained with LSQ's gradient, scaled by
``1 / sqrt(weights per channel x qmax)``. Weights only: activation ranges keep their EMA.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..spaces.candidate import FLOAT_BITS, MIN_BITS, UNIFORM, quantizer_problem
from ..spaces.groups import check_module_names

MOMENTUM = 0.1  # weight of the newest batch in the activation-range EMA
_MIN_SCALE = 1e-8  # keeps the activation scale finite when the observed range is empty
CODEBOOK = "codebook"
CODEBOOK_ITERATIONS = 8  # Lloyd iterations per fit: 1-D k-means from a linear start settles fast


def fake_quantize(
    x: Tensor, scale: Tensor | float, zero_point: Tensor | float, qmin: int, qmax: int
) -> Tensor:
    """Quantize ``x`` to integers in ``[qmin, qmax]`` and dequantize it back.

    ``scale`` and ``zero_point`` broadcast against ``x`` (shape them ``[C, 1, ...]`` for
    per-channel quantization). The gradient w.r.t. ``x`` is passed straight through where the
    integer value lies inside ``[qmin, qmax]`` and is zero where it is clamped; ``scale`` and
    ``zero_point`` get no gradient.
    """
    q_unclamped = torch.round(x / scale) + zero_point
    inside = (q_unclamped >= qmin) & (q_unclamped <= qmax)
    dequantized = (torch.clamp(q_unclamped, qmin, qmax) - zero_point) * scale
    # ``x - x.detach()`` is exactly zero in value but carries d/dx = 1, so the forward result is
    # bit-identical to ``dequantized`` (no float drift adding extra levels) while the backward is
    # the masked straight-through gradient. Plain tensor ops also keep the graph traceable.
    return dequantized.detach() + (x - x.detach()) * inside


def quantize_weight(weight: Tensor, bits: int) -> Tensor:
    """Symmetric per-output-channel fake-quant of a Conv/Linear weight (channel = dim 0)."""
    if bits >= FLOAT_BITS:
        return weight
    qmax = 2 ** (bits - 1) - 1
    max_abs = weight.detach().abs().flatten(1).amax(dim=1)
    # An all-zero channel would give scale 0 (and 0/0); any scale maps it to zero exactly.
    scale = torch.where(max_abs > 0, max_abs / qmax, torch.ones_like(max_abs))
    scale = scale.view(-1, *([1] * (weight.dim() - 1)))
    return fake_quantize(weight, scale, 0.0, -qmax, qmax)


@functools.cache
def _level_values(quantizer: str, bits: int) -> tuple[float, ...]:
    if quantizer == "pot":
        magnitudes = [2.0**-k for k in range(2 ** (bits - 1) - 1)]
    elif quantizer == "apot":
        first_bits = bits // 2  # ceil((bits - 1) / 2): the first term takes the odd bit
        second_bits = bits - 1 - first_bits
        first = [0.0] + [2.0 ** -(2 * j) for j in range(2**first_bits - 1)]
        second = [0.0] + [2.0 ** -(2 * j + 1) for j in range(2**second_bits - 1)]
        sums = [a + b for a in first for b in second]
        magnitudes = [v / max(sums) for v in sums if v > 0]
    else:
        raise ValueError(
            f"The 'quantizer' parameter of weight_levels must be 'pot' or 'apot' (a codebook is "
            f"fitted per layer). Got {quantizer!r} instead."
        )
    positive = sorted(set(np.float32(magnitudes).tolist()))
    return tuple([-m for m in reversed(positive)] + [0.0] + positive)


def weight_levels(quantizer: str, bits: int, *, like: Tensor | None = None) -> Tensor:
    """The sorted level table of ``pot`` or ``apot`` weights at ``bits`` bits, in units of the
    channel scale (largest level 1), as float32 (or ``like``'s dtype and device)."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= 8:
        raise ValueError(
            f"The 'bits' parameter of weight_levels must be an int in [{MIN_BITS}, 8]. "
            f"Got {bits!r} instead."
        )
    values = torch.tensor(_level_values(quantizer, bits), dtype=torch.float32)
    return values if like is None else values.to(like)


def nearest_level(x: Tensor, levels: Tensor) -> Tensor:
    """Index (int64) of the entry of the sorted 1-D ``levels`` nearest to each element of ``x``;
    a value exactly halfway between two levels goes to the lower one."""
    midpoints = (levels[1:] + levels[:-1]) / 2
    return torch.bucketize(x, midpoints)


@torch.no_grad()
def fit_codebook(weight: Tensor, bits: int, *, iterations: int = CODEBOOK_ITERATIONS) -> Tensor:
    """2^bits sorted values fitted to ``weight`` by 1-D k-means (Lloyd), in ``weight``'s dtype.

    Starts from values spaced linearly between the smallest and largest weight (Deep
    Compression's linear initialisation) and runs ``iterations`` Lloyd steps; a value that
    attracts no weight keeps its place. The weights are sorted once and each step finds the
    clusters as runs of the sorted weights and sums them by a float64 cumulative sum, so the
    result is deterministic and costs O(n log n) per fit.
    """
    work = weight.detach().reshape(-1)
    if work.device.type == "mps":  # no float64 there
        work = work.cpu()
    values = work.to(torch.float64).sort().values
    k = 2**bits
    if values.numel() == 0:
        return torch.zeros(k, dtype=weight.dtype, device=weight.device)
    lo, hi = values[0], values[-1]
    centroids = lo + (hi - lo) * torch.linspace(0, 1, k, dtype=torch.float64, device=values.device)
    cumulative = torch.cat([values.new_zeros(1), values.cumsum(0)])
    n = torch.tensor([values.numel()], device=values.device)
    for _ in range(iterations):
        midpoints = (centroids[1:] + centroids[:-1]) / 2
        # Weights up to and including a midpoint belong to the lower value (as nearest_level).
        bounds = torch.searchsorted(values, midpoints, right=True)
        starts, ends = torch.cat([n.new_zeros(1), bounds]), torch.cat([bounds, n])
        counts = ends - starts
        sums = cumulative[ends] - cumulative[starts]
        centroids = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)
    return centroids.sort().values.to(device=weight.device, dtype=weight.dtype)


def _channel_view(values: Tensor, dims: int) -> Tensor:
    return values.view(-1, *([1] * (dims - 1)))


def weight_code(
    weight: Tensor, bits: int, quantizer: str, codebook: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor | None]:
    """``(indices, table, scale)`` of a non-uniform quantizer: the int64 index into ``table``
    (sorted level values) of every weight, and the per-output-channel scale (``None`` for a
    codebook, whose values are the weights themselves). :func:`decode_weight` of them is the
    fake-quant weight."""
    w = weight.detach()
    if quantizer == CODEBOOK:
        if codebook is None:
            raise ValueError("The 'codebook' parameter of weight_code is needed for a codebook.")
        table = codebook.detach().to(w.dtype)
        return nearest_level(w, table), table, None
    table = weight_levels(quantizer, bits, like=w)
    max_abs = w.abs().flatten(1).amax(dim=1)
    # An all-zero channel: any scale maps it to the zero level exactly.
    scale = torch.where(max_abs > 0, max_abs, torch.ones_like(max_abs))
    return nearest_level(w / _channel_view(scale, w.dim()), table), table, scale


def decode_weight(indices: Tensor, table: Tensor, scale: Tensor | None) -> Tensor:
    """``table[indices]``, times the per-output-channel ``scale`` when there is one."""
    values = table[indices.long()]
    return values if scale is None else values * _channel_view(scale, values.dim())


def quantize_weight_nonuniform(
    weight: Tensor, bits: int, quantizer: str, codebook: Tensor | None = None
) -> Tensor:
    """Fake-quant of a Conv/Linear weight on a non-uniform level table (see the module doc),
    with a straight-through gradient; ``uniform`` is :func:`quantize_weight`."""
    if bits >= FLOAT_BITS:
        return weight
    if quantizer == UNIFORM:
        return quantize_weight(weight, bits)
    quantized = decode_weight(*weight_code(weight, bits, quantizer, codebook))
    # As in fake_quantize: the value is exactly ``quantized``, the gradient w.r.t. weight is 1.
    return quantized.detach() + (weight - weight.detach())


def lsq_scale(step: Tensor) -> Tensor:
    """The per-channel scale a learned step stands for (kept positive)."""
    return step.abs().clamp(min=_MIN_SCALE)


def quantize_weight_lsq(weight: Tensor, bits: int, step: Tensor) -> Tensor:
    """Symmetric per-channel fake-quant on the learned step ``step`` ``[C]`` (LSQ): the value is
    ``clamp(round(w / s), -qmax, qmax) * s``; ``w`` gets the straight-through gradient inside
    the range, ``step`` LSQ's gradient times ``1 / sqrt(weights per channel * qmax)``."""
    qmax = 2 ** (bits - 1) - 1
    scale = lsq_scale(step)
    grad_scale = 1.0 / math.sqrt(weight[0].numel() * qmax)
    # Exactly ``scale`` in value (0 * g + s), gradient g: the sums below stay bit-exact.
    scale = scale.detach() + (scale - scale.detach()) * grad_scale
    x = torch.clamp(weight / _channel_view(scale, weight.dim()), -qmax, qmax)
    q = torch.round(x).detach() + (x - x.detach())
    return q * _channel_view(scale, weight.dim())


def lsq_grid(weight: Tensor, bits: int, step: Tensor) -> tuple[Tensor, Tensor]:
    """``(integers, scale)`` of :func:`quantize_weight_lsq`: ``integers * scale`` is its value
    bit for bit (int32 integers, float32 scale)."""
    qmax = 2 ** (bits - 1) - 1
    scale = lsq_scale(step.detach()).to(weight.dtype)
    integers = torch.clamp(
        torch.round(weight.detach() / _channel_view(scale, weight.dim())), -qmax, qmax
    )
    return integers.to(torch.int32), scale.float()


def activation_qparams(lo: Tensor, hi: Tensor, bits: int) -> tuple[Tensor, Tensor]:
    """Scale and integer zero point of the unsigned range ``[0, 2^bits - 1]`` covering [lo, hi].

    The range is widened to include 0 so that zero (padding, ReLU output) is exactly
    representable.
    """
    qmax = 2**bits - 1
    lo = torch.clamp(lo, max=0.0)
    hi = torch.clamp(hi, min=0.0)
    scale = torch.clamp((hi - lo) / qmax, min=_MIN_SCALE)
    zero_point = torch.clamp(torch.round(-lo / scale), 0, qmax)
    return scale, zero_point


class _QuantMixin:
    """What QuantConv2d and QuantLinear share: the constructor's bit-widths, the observer state,
    the two fake-quant steps and ``from_float``. A subclass names its float layer
    (``float_type``), applies it (``_layer``) and lists its hyper-parameters.
    ``w_quantizer`` is the weights' quantizer (see the module doc); a ``codebook`` layer has the
    persistent buffer ``codebook`` too (2^w_bits values)."""

    float_type: ClassVar[type[nn.Module]]
    weight: Tensor
    bias: Tensor | None
    training: bool
    act_min: Tensor
    act_max: Tensor
    act_initialized: Tensor
    weight_mask: Tensor | None
    sparsity: float | str
    register_buffer: Any

    def __init__(
        self, *args: Any, w_bits: int, a_bits: int, w_quantizer: str = UNIFORM, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[call-arg]
        self._init_quant(w_bits=w_bits, a_bits=a_bits)
        self.set_weight_quantizer_(w_quantizer)

    def forward(self, x: Tensor) -> Tensor:
        weight = self.masked_weight()
        if not self.quant_enabled:
            if self.weight_mask is not None:
                return self._layer(x, weight)
            return super().forward(x)  # type: ignore[misc]
        x = self.quantize_input(x)
        if self.training and self.w_quantizer == CODEBOOK:
            self.refit_codebook_()
        return self._layer(x, self.quantized_weight())

    def masked_weight(self) -> Tensor:
        """The weight with the sparsity mask applied (the weight itself when dense). Masked
        weights get no gradient; zero quantizes to zero, so they stay zero after fake-quant."""
        if self.weight_mask is None:
            return self.weight
        return self.weight * self.weight_mask

    def quantized_weight(self) -> Tensor:
        """The fake-quant weight this layer computes with (the masked weight itself at 32
        bits). Zero is a level of every quantizer but the codebook, which is never sparse."""
        weight = self.masked_weight()
        if self.w_quantizer == UNIFORM:
            step = getattr(self, "w_step", None)
            if step is not None and self.w_bits < FLOAT_BITS:
                return quantize_weight_lsq(weight, self.w_bits, step)
            return quantize_weight(weight, self.w_bits)
        return quantize_weight_nonuniform(
            weight, self.w_bits, self.w_quantizer, getattr(self, "codebook", None)
        )

    def set_weight_quantizer_(self, quantizer: str) -> None:
        """Quantize the weights with ``quantizer`` from now on (a codebook is fitted to the
        current weights); checked against the layer's ``w_bits``."""
        problem = quantizer_problem(quantizer, self.w_bits)
        if problem:
            raise ValueError(f"The 'w_quantizer' of a {type(self).__name__} must be {problem}.")
        self.w_quantizer = quantizer
        if quantizer != CODEBOOK:
            if "codebook" in self._buffers:  # type: ignore[attr-defined]
                del self._buffers["codebook"]  # type: ignore[attr-defined]
            return
        codebook = fit_codebook(self.weight, self.w_bits)
        if getattr(self, "codebook", None) is not None and self.codebook.shape == codebook.shape:
            with torch.no_grad():
                self.codebook.copy_(codebook)
        else:
            self.register_buffer("codebook", codebook)

    @torch.no_grad()
    def refit_codebook_(self) -> None:
        """Fit a codebook layer's values to its current weights (see :func:`fit_codebook`)."""
        if self.w_quantizer == CODEBOOK:
            self.codebook.copy_(fit_codebook(self.weight, self.w_bits))

    def _layer(self, x: Tensor, weight: Tensor) -> Tensor:
        raise NotImplementedError

    @staticmethod
    def _hyper_parameters(module: nn.Module) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_float(
        cls, module: nn.Module, *, w_bits: int, a_bits: int, w_quantizer: str = UNIFORM
    ) -> Any:
        """A quantized copy of the float layer ``module``: its hyper-parameters, weights, device
        and dtype, and its observer state when it is quantized already."""
        where = f"{cls.__name__}.from_float"
        if not isinstance(module, cls.float_type):
            raise ValueError(
                f"The 'module' parameter of {where} must be an nn.{cls.float_type.__name__}. "
                f"Got {type(module).__name__} instead."
            )
        _check_bits(w_bits, a_bits, where=where, name="bits")
        quant = cls(
            **cls._hyper_parameters(module),
            bias=module.bias is not None,
            device=module.weight.device,
            dtype=module.weight.dtype,
            w_bits=w_bits,
            a_bits=a_bits,
        )
        _copy_params(module, quant)
        quant._copy_quant_state(module)
        # After the weights are copied: a codebook is fitted to them.
        quant.set_weight_quantizer_(w_quantizer)
        return quant

    def _init_quant(self, *, w_bits: int, a_bits: int) -> None:
        self.w_bits = w_bits
        self.a_bits = a_bits
        self.w_quantizer = UNIFORM
        self.quant_enabled = True
        # Persistent so a saved QAT checkpoint restores the frozen activation ranges too.
        like = {"device": self.weight.device, "dtype": self.weight.dtype}
        self.register_buffer("act_min", torch.zeros((), **like))
        self.register_buffer("act_max", torch.zeros((), **like))
        self.register_buffer(
            "act_initialized", torch.zeros((), dtype=torch.bool, device=self.weight.device)
        )
        # Fine-grained sparsity (see compression.sparsity): a boolean keep-mask of the weight's
        # shape, None (and so absent from the state dict) while the layer is dense.
        self.sparsity = 0.0
        self.register_buffer("weight_mask", None)

    @torch.no_grad()
    def observe_input(self, x: Tensor) -> None:
        """Move the input range toward ``x``'s extremes (an EMA of weight ``MOMENTUM``; the
        first observed batch sets it): what training mode does before each forward."""
        batch_min = x.detach().amin().to(self.act_min.dtype)
        batch_max = x.detach().amax().to(self.act_max.dtype)
        # torch.where instead of ``if self.act_initialized``: no host-device sync per layer and
        # no data-dependent Python branch (keeps the layer traceable/exportable).
        first = ~self.act_initialized
        self.act_min.copy_(torch.where(first, batch_min, self.act_min.lerp(batch_min, MOMENTUM)))
        self.act_max.copy_(torch.where(first, batch_max, self.act_max.lerp(batch_max, MOMENTUM)))
        self.act_initialized.fill_(True)

    def quantize_input(self, x: Tensor) -> Tensor:
        """``x`` fake-quantized at ``a_bits`` with this layer's input range (observed first in
        training mode); ``x`` itself at 32 bits."""
        if self.a_bits >= FLOAT_BITS:
            return x
        if self.training:
            self.observe_input(x)
        # Evaluated before any training batch: use this batch's range without storing it, so
        # the observer is still initialised by the first real training batch.
        lo = torch.where(self.act_initialized, self.act_min, x.detach().amin().to(self.act_min))
        hi = torch.where(self.act_initialized, self.act_max, x.detach().amax().to(self.act_max))
        scale, zero_point = activation_qparams(lo, hi, self.a_bits)
        return fake_quantize(x, scale.to(x.dtype), zero_point.to(x.dtype), 0, 2**self.a_bits - 1)

    def _copy_quant_state(self, source: nn.Module) -> None:
        if isinstance(source, _QuantMixin):
            self.quant_enabled = source.quant_enabled
            with torch.no_grad():
                self.act_min.copy_(source.act_min)
                self.act_max.copy_(source.act_max)
                self.act_initialized.copy_(source.act_initialized)
            self.sparsity = source.sparsity
            if source.weight_mask is not None:
                self.weight_mask = source.weight_mask.clone()

    def extra_repr(self) -> str:
        text = f"{super().extra_repr()}, w_bits={self.w_bits}, a_bits={self.a_bits}"  # type: ignore[misc]
        text = text if self.w_quantizer == UNIFORM else f"{text}, w_quantizer={self.w_quantizer}"
        return text if self.weight_mask is None else f"{text}, sparsity={self.sparsity!r}"


@torch.no_grad()
def set_activation_range_(module: nn.Module, lo: Tensor | float, hi: Tensor | float) -> None:
    """Fix the input range ``[lo, hi]`` that fake-quant layer ``module`` quantizes with, as
    post-training calibration chooses it. Eval-mode forwards and the export read exactly this
    range (widened to include 0, see :func:`activation_qparams`); training mode would go on
    moving it by the EMA of the observed batches."""
    if not isinstance(module, _QuantMixin):
        raise ValueError(
            "The 'module' parameter of set_activation_range_ must be a QuantConv2d or "
            f"QuantLinear. Got {type(module).__name__} instead."
        )
    lo, hi = torch.as_tensor(lo, dtype=torch.float64), torch.as_tensor(hi, dtype=torch.float64)
    if lo.numel() != 1 or hi.numel() != 1 or not bool(torch.isfinite(lo) & (lo <= hi)):
        raise ValueError(
            "The 'lo' and 'hi' parameters of set_activation_range_ must be finite scalars with "
            f"lo <= hi. Got lo={lo.tolist()!r}, hi={hi.tolist()!r} instead."
        )
    module.act_min.copy_(lo.reshape(()))
    module.act_max.copy_(hi.reshape(()))
    module.act_initialized.fill_(True)


@torch.no_grad()
def clip_weight_(module: nn.Module, max_abs: Tensor) -> None:
    """Clip the weights of fake-quant layer ``module`` to ``[-max_abs[c], max_abs[c]]`` per
    output channel ``c``, in place.

    The weight quantizer takes each channel's scale from its largest ``|w|``
    (:func:`quantize_weight`), so clipping the stored weight is clipping its quantization
    range: the layer, its state_dict and the export all use the same, narrower grid.
    """
    if not isinstance(module, _QuantMixin):
        raise ValueError(
            "The 'module' parameter of clip_weight_ must be a QuantConv2d or QuantLinear. "
            f"Got {type(module).__name__} instead."
        )
    channels = module.weight.shape[0]
    if max_abs.shape != (channels,) or not bool(torch.all(max_abs >= 0)):
        raise ValueError(
            f"The 'max_abs' parameter of clip_weight_ must hold {channels} values >= 0, one per "
            f"output channel. Got {max_abs!r} instead."
        )
    bound = max_abs.to(module.weight).view(-1, *([1] * (module.weight.dim() - 1)))
    module.weight.copy_(torch.minimum(torch.maximum(module.weight, -bound), bound))
    module.refit_codebook_()


@contextmanager
def quantization_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model``'s fake-quant layers as their float layers inside the block."""
    layers = [m for m in model.modules() if isinstance(m, _QuantMixin)]
    before = [m.quant_enabled for m in layers]
    for m in layers:
        m.quant_enabled = False
    try:
        yield model
    finally:
        for m, enabled in zip(layers, before, strict=True):
            m.quant_enabled = enabled


def float_output(module: nn.Module, x: Tensor, weight: Tensor | None = None) -> Tensor:
    """What fake-quant layer ``module`` computes on ``x`` in float: neither ``x`` nor the
    weight quantized, ``weight`` (default: its own) in place of its weight, its bias kept."""
    if not isinstance(module, _QuantMixin):
        raise ValueError(
            "The 'module' parameter of float_output must be a QuantConv2d or QuantLinear. "
            f"Got {type(module).__name__} instead."
        )
    return module._layer(x, module.weight if weight is None else weight)


class QuantConv2d(_QuantMixin, nn.Conv2d):
    """``nn.Conv2d`` with fake-quantized weights (``w_bits``) and input activations (``a_bits``).

    Same parameters and state_dict weight/bias keys as the float layer, plus the persistent
    buffers ``act_min``, ``act_max`` and ``act_initialized``. ``quant_enabled=False`` makes
    ``forward`` exactly the float convolution (the observer is not updated either).
    """

    float_type = nn.Conv2d

    def _layer(self, x: Tensor, weight: Tensor) -> Tensor:
        return self._conv_forward(x, weight, self.bias)

    @staticmethod
    def _hyper_parameters(module: nn.Conv2d) -> dict[str, Any]:
        return {
            "in_channels": module.in_channels,
            "out_channels": module.out_channels,
            "kernel_size": module.kernel_size,
            "stride": module.stride,
            "padding": module.padding,
            "dilation": module.dilation,
            "groups": module.groups,
            "padding_mode": module.padding_mode,
        }


class QuantLinear(_QuantMixin, nn.Linear):
    """``nn.Linear`` with fake-quantized weights and input activations; see QuantConv2d."""

    float_type = nn.Linear

    def _layer(self, x: Tensor, weight: Tensor) -> Tensor:
        return F.linear(x, weight, self.bias)

    @staticmethod
    def _hyper_parameters(module: nn.Linear) -> dict[str, Any]:
        return {"in_features": module.in_features, "out_features": module.out_features}


def _copy_params(source: nn.Module, target: nn.Module) -> None:
    with torch.no_grad():
        target.weight.copy_(source.weight)
        target.weight.requires_grad_(source.weight.requires_grad)
        if source.bias is not None:
            target.bias.copy_(source.bias)
            target.bias.requires_grad_(source.bias.requires_grad)
    target.train(source.training)


def _check_bits(*bits: Any, where: str, name: str) -> None:
    for b in bits:
        # bool is an int subclass; True/False as a bit-width is always a caller bug.
        if isinstance(b, bool) or not isinstance(b, int) or not MIN_BITS <= b <= FLOAT_BITS:
            raise ValueError(
                f"The '{name}' parameter of {where} must hold integers in "
                f"[{MIN_BITS}, {FLOAT_BITS}]. Got {bits!r} instead."
            )


def quantize_(
    model: nn.Module,
    bits: Mapping[str, tuple[int, int]],
    quantizers: Mapping[str, str] | None = None,
) -> nn.Module:
    """Swap the named Conv2d/Linear layers of ``model`` for fake-quant layers, in place.

    ``bits`` maps fully-qualified module names (as in ``model.named_modules()``) to
    ``(w_bits, a_bits)``; 32 leaves that tensor in float. ``quantizers`` maps some of those
    names to their weight quantizer (``QUANTIZERS``; the others are uniform). A layer that is
    already a Quant layer only gets its bits and quantizer updated (its observer state is kept).
    Everything is validated before the model is touched. Returns ``model``.
    """
    quantizers = dict(quantizers or {})
    stray = sorted(set(quantizers) - set(bits))
    if stray:
        raise ValueError(
            "The 'quantizers' parameter of quantize_ must name layers of 'bits'. "
            f"Got {stray} instead."
        )
    modules = check_module_names(
        model, bits, rule="The 'bits' parameter of quantize_ must be keyed by"
    )
    for name, pair in bits.items():
        if not isinstance(modules[name], nn.Conv2d | nn.Linear):
            raise ValueError(
                "The 'bits' parameter of quantize_ must name nn.Conv2d or nn.Linear layers. "
                f"Got {name!r} ({type(modules[name]).__name__}) instead."
            )
        if not isinstance(pair, tuple | list) or len(pair) != 2:
            raise ValueError(
                f"The 'bits[{name!r}]' parameter of quantize_ must be a (w_bits, a_bits) pair. "
                f"Got {pair!r} instead."
            )
        _check_bits(*pair, where="quantize_", name=f"bits[{name!r}]")
        problem = quantizer_problem(quantizers.get(name, UNIFORM), int(pair[0]))
        if problem:
            raise ValueError(
                f"The 'quantizers[{name!r}]' parameter of quantize_ must be {problem}."
            )
        if name == "" and not isinstance(model, _QuantMixin):
            raise ValueError(
                "The 'bits' parameter of quantize_ must not name the root module '' unless it "
                "is already a Quant layer (a module cannot replace itself in place). "
                f"Got {type(model).__name__} instead."
            )

    for name, (w_bits, a_bits) in bits.items():
        module = modules[name]
        quantizer = quantizers.get(name, UNIFORM)
        if isinstance(module, _QuantMixin):
            module.w_bits, module.a_bits = int(w_bits), int(a_bits)
            module.set_weight_quantizer_(quantizer)
            continue
        quant_cls = QuantConv2d if isinstance(module, nn.Conv2d) else QuantLinear
        quant = quant_cls.from_float(
            module, w_bits=int(w_bits), a_bits=int(a_bits), w_quantizer=quantizer
        )
        parent_name, _, child_name = name.rpartition(".")
        setattr(modules[parent_name], child_name, quant)
    return model


def enable_lsq_(model: nn.Module, names: list[str] | None = None) -> list[str]:
    """Give the uniform quantized weights of ``model``'s fake-quant layers (those in ``names``
    when given) a learnable per-channel step ``w_step``, initialised to their current scale
    (LSQ, see the module doc); layers that have one keep it. Returns the layers that have one."""
    done = []
    for name, module in model.named_modules():
        if not isinstance(module, _QuantMixin) or (names is not None and name not in names):
            continue
        if module.w_quantizer != UNIFORM or module.w_bits >= FLOAT_BITS:
            continue
        if getattr(module, "w_step", None) is None:
            qmax = 2 ** (module.w_bits - 1) - 1
            max_abs = module.weight.detach().abs().flatten(1).amax(dim=1)
            scale = torch.where(max_abs > 0, max_abs / qmax, torch.ones_like(max_abs))
            module.w_step = nn.Parameter(scale.clone())
        done.append(name)
    return done


def prepare_for_state_(model: nn.Module, state: Mapping[str, Tensor]) -> nn.Module:
    """Give the layers of ``model`` whose learned steps ``state`` holds (``<layer>.w_step``) a
    step, so that ``model.load_state_dict(state)`` finds every key. Returns ``model``."""
    names = [k.removesuffix(".w_step") for k in state if k.endswith(".w_step")]
    if names:
        enable_lsq_(model, names)
    return model


def quantized_layers(model: nn.Module) -> dict[str, tuple[int, int]]:
    """``{name: (w_bits, a_bits)}`` of every fake-quant layer in ``model``, in module order."""
    return {
        name: (m.w_bits, m.a_bits)
        for name, m in model.named_modules()
        if isinstance(m, QuantConv2d | QuantLinear)
    }
