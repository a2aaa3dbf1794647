"""What every dataset hands to an evaluator: :class:`DataBundle`."""

from __future__ import annotations

from dataclasses import dataclass

from torch.utils.data import Dataset

__all__ = ["DataBundle"]


@dataclass(frozen=True)
class DataBundle:
    """What a dataset provides to an evaluator: map-style datasets yielding (CHW float tensor,
    int label) pairs, the class count, and the (channels, height, width) of one input."""

    train: Dataset
    val: Dataset
    num_classes: int
    input_shape: tuple[int, int, int]
    name: str
