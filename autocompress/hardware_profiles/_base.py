"""The hardware-profile extension point: an ABC, its result type and a name registry."""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..core.registry import Registry


@dataclass(frozen=True)
class HardwareMetrics:
    """Cost of one batch-1 inference of a model on one target.

    ``latency_ms``: milliseconds per inference. ``energy_mj``: millijoules per inference (NaN when
    the profile cannot know it). ``size_bytes``: deployed size of the weights at their bit-widths.
    ``peak_mem_bytes``: peak activation memory. ``details``: profile-specific extras (per-layer
    breakdown, spread of measurements, notes); plain JSON-friendly values.
    """

    latency_ms: float
    energy_mj: float
    size_bytes: int
    peak_mem_bytes: int
    details: Mapping[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, float | int]:
        """The four headline numbers, e.g. for objectives, constraints or a CSV row."""
        return {
            "latency_ms": self.latency_ms,
            "energy_mj": self.energy_mj,
            "size_bytes": self.size_bytes,
            "peak_mem_bytes": self.peak_mem_bytes,
        }

    @property
    def has_energy(self) -> bool:
        return not math.isnan(self.energy_mj)


class HardwareProfile(abc.ABC):
    """Estimates or measures what a model costs on one hardware target.

    Contract for implementations:

    * ``profile(model, input_shape=...)`` costs ONE inference at batch size 1; ``input_shape`` is
      the shape of one sample without the batch dimension, e.g. ``(3, 32, 32)``.
    * Units: latency in milliseconds, energy in millijoules, sizes in bytes.
    * Bits are read from the layers themselves: an ``nn.Conv*``/``nn.Linear`` (or subclass) with
      int attributes ``w_bits``/``a_bits`` is quantized at those bits (``a_bits`` is the bit-width
      of the layer's *input*); a layer without them is float (32 bits).
    * The model must come back unchanged: same parameters, buffers, attributes and training mode
      of every module. Implementations may briefly switch it to eval mode or attach hooks while
      holding a lock, so do not train the same model in another thread while profiling it.
    * Thread-safety: ``profile`` may be called from several threads at once (on the same or
      different models); implementations keep no per-call state on ``self``.
    """

    #: Registry name; set by :func:`register_hardware_profile`.
    name: str = ""

    @abc.abstractmethod
    def profile(self, model: nn.Module, *, input_shape: tuple[int, ...]) -> HardwareMetrics:
        """Cost of one batch-1 inference of ``model`` on an input of ``(1, *input_shape)``."""


_PROFILES: Registry[type[HardwareProfile]] = Registry("hardware profile")


def register_hardware_profile(
    name: str,
) -> Callable[[type[HardwareProfile]], type[HardwareProfile]]:
    """Class decorator: make a :class:`HardwareProfile` creatable by ``name``."""
    register = _PROFILES.register(name)

    def decorator(cls: type[HardwareProfile]) -> type[HardwareProfile]:
        if not (isinstance(cls, type) and issubclass(cls, HardwareProfile)):
            raise TypeError(
                f"register_hardware_profile({name!r}) can only decorate HardwareProfile "
                f"subclasses. Got {cls!r} instead."
            )
        register(cls)
        cls.name = name
        return cls

    return decorator


def create_hardware_profile(name: str, **kwargs: Any) -> HardwareProfile:
    """Build the profile registered as ``name`` with ``kwargs`` (e.g. ``device="cortex_a72"``)."""
    cls = _PROFILES.get(name, where="The 'name' parameter of create_hardware_profile")
    return cls(**kwargs)


def list_hardware_profiles() -> list[str]:
    """Names accepted by :func:`create_hardware_profile`, sorted."""
    return _PROFILES.names()
