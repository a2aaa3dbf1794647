"""Quantization-aware training: fake-quant Conv2d/Linear layers at any bit-width from 2 to 32.

Weights are quantized symmetrically per output channel; input activations asymmetrically per
tensor, with a min/max range tracked by an exponential moving average while training. Rounding
uses a straight-through estimator (STE) so the layers train like float layers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..spaces.candidate import FLOAT_BITS, MIN_BITS
from ..spaces.groups import check_module_names

MOMENTUM = 0.1  # weight of the newest batch in the activation-range EMA
_MIN_SCALE = 1e-8  # keeps the activation scale finite when the observed range is empty


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
    (``float_type``), applies it (``_layer``) and lists its hyper-parameters."""

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

    def __init__(self, *args: Any, w_bits: int, a_bits: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[call-arg]
        self._init_quant(w_bits=w_bits, a_bits=a_bits)

    def forward(self, x: Tensor) -> Tensor:
        weight = self.masked_weight()
        if not self.quant_enabled:
            if self.weight_mask is not None:
                return self._layer(x, weight)
            return super().forward(x)  # type: ignore[misc]
        x = self._quantize_input(x)
        return self._layer(x, quantize_weight(weight, self.w_bits))

    def masked_weight(self) -> Tensor:
        """The weight with the sparsity mask applied (the weight itself when dense). Masked
        weights get no gradient; zero quantizes to zero, so they stay zero after fake-quant."""
        if self.weight_mask is None:
            return self.weight
        return self.weight * self.weight_mask

    def _layer(self, x: Tensor, weight: Tensor) -> Tensor:
        raise NotImplementedError

    @staticmethod
    def _hyper_parameters(module: nn.Module) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_float(cls, module: nn.Module, *, w_bits: int, a_bits: int) -> Any:
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
        return quant

    def _init_quant(self, *, w_bits: int, a_bits: int) -> None:
        self.w_bits = w_bits
        self.a_bits = a_bits
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
    def _observe(self, x: Tensor) -> None:
        batch_min = x.detach().amin().to(self.act_min.dtype)
        batch_max = x.detach().amax().to(self.act_max.dtype)
        # torch.where instead of ``if self.act_initialized``: no host-device sync per layer and
        # no data-dependent Python branch (keeps the layer traceable/exportable).
        first = ~self.act_initialized
        self.act_min.copy_(torch.where(first, batch_min, self.act_min.lerp(batch_min, MOMENTUM)))
        self.act_max.copy_(torch.where(first, batch_max, self.act_max.lerp(batch_max, MOMENTUM)))
        self.act_initialized.fill_(True)

    def _quantize_input(self, x: Tensor) -> Tensor:
        if self.a_bits >= FLOAT_BITS:
            return x
        if self.training:
            self._observe(x)
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


def quantize_(model: nn.Module, bits: Mapping[str, tuple[int, int]]) -> nn.Module:
    """Swap the named Conv2d/Linear layers of ``model`` for fake-quant layers, in place.

    ``bits`` maps fully-qualified module names (as in ``model.named_modules()``) to
    ``(w_bits, a_bits)``; 32 leaves that tensor in float. A layer that is already a Quant layer
    only gets its bits updated (its observer state is kept). Everything is validated before the
    model is touched. Returns ``model``.
    """
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
        if name == "" and not isinstance(model, _QuantMixin):
            raise ValueError(
                "The 'bits' parameter of quantize_ must not name the root module '' unless it "
                "is already a Quant layer (a module cannot replace itself in place). "
                f"Got {type(model).__name__} instead."
            )

    for name, (w_bits, a_bits) in bits.items():
        module = modules[name]
        if isinstance(module, _QuantMixin):
            module.w_bits, module.a_bits = int(w_bits), int(a_bits)
            continue
        quant_cls = QuantConv2d if isinstance(module, nn.Conv2d) else QuantLinear
        quant = quant_cls.from_float(module, w_bits=int(w_bits), a_bits=int(a_bits))
        parent_name, _, child_name = name.rpartition(".")
        setattr(modules[parent_name], child_name, quant)
    return model


def quantized_layers(model: nn.Module) -> dict[str, tuple[int, int]]:
    """``{name: (w_bits, a_bits)}`` of every fake-quant layer in ``model``, in module order."""
    return {
        name: (m.w_bits, m.a_bits)
        for name, m in model.named_modules()
        if isinstance(m, QuantConv2d | QuantLinear)
    }
