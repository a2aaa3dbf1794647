"""What the torchvision-backed datasets (cifar10, mnist, imagefolder) share: the lazy import of
torchvision (the ``vision`` extra), the root check, transforms and a seeded augmentation.

Nothing here imports torchvision at module import time, so ``import autocompress.data`` stays
light; nothing is ever downloaded.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import get_worker_info

from .bundle import Preprocessing

if TYPE_CHECKING:
    from .config import DataConfig

__all__ = [
    "RandomCropFlip",
    "existing_root",
    "image_preprocessing",
    "import_torchvision",
    "image_transforms",
]

# torchvision's ToTensor divides 8-bit pixels by this, mapping them to [0, 1].
_PIXEL_SCALE = 255.0


def import_torchvision() -> Any:
    """The torchvision module with its datasets and transforms, or an ImportError naming the
    extra to install."""
    try:
        import torchvision
        import torchvision.datasets
        import torchvision.transforms
    except ImportError as err:
        raise ImportError(
            "The cifar10, mnist and imagefolder datasets need torchvision. "
            "Install it with: pip install autocompress[vision]"
        ) from err
    return torchvision


def existing_root(config: DataConfig) -> Path:
    """``config.root``, or a ValueError saying why it cannot hold the dataset."""
    root = config.root
    if root is None:
        # DataConfig rejects this; a config built with model_construct/model_copy skips that.
        raise ValueError(
            "The 'data.root' parameter of load_data must be a directory path when data.dataset "
            f"is {config.dataset!r}. Got None instead."
        )
    if not root.is_dir():
        state = "it is not a directory" if root.exists() else "it does not exist"
        raise ValueError(
            "The 'data.root' parameter of load_data must be an existing directory for dataset "
            f"{config.dataset!r}. Got {str(root)!r} instead ({state})."
        )
    return root


def image_transforms(
    tv: Any,
    stats: tuple[tuple[float, ...], tuple[float, ...]],
    *,
    normalize: bool,
    resize: int | None = None,
    center_crop: bool = False,
    augment: Callable | None = None,
) -> Callable:
    """PIL image to CHW float tensor: optional resize and center crop, ``augment``, and
    per-channel standardization with ``stats`` (mean, std) when ``normalize``."""
    steps: list[Callable] = []
    if resize is not None:
        steps.append(tv.transforms.Resize(resize))  # shorter side to `resize`, aspect kept
    if center_crop:
        steps.append(tv.transforms.CenterCrop(resize))
    steps.append(tv.transforms.ToTensor())
    if augment is not None:
        steps.append(augment)  # crops the un-normalized image, so padding is black as usual
    if normalize:
        steps.append(tv.transforms.Normalize(*stats))
    return tv.transforms.Compose(steps)


def image_preprocessing(
    stats: tuple[tuple[float, ...], tuple[float, ...]],
    *,
    normalize: bool,
    input_shape: tuple[int, int, int],
    color: str,
    class_names: list[str],
    resize: int | None = None,
    center_crop: bool = False,
) -> Preprocessing:
    """The record of what :func:`image_transforms` does with the same arguments, when it is not
    augmenting (the evaluation transform, which is what a deployed model gets)."""
    mean, std = stats if normalize else (None, None)
    return Preprocessing(
        input_shape=input_shape,
        color=color,
        raw_range=(0.0, _PIXEL_SCALE),
        scale=_PIXEL_SCALE,
        mean=mean,
        std=std,
        resize=resize,
        center_crop=resize if center_crop else None,
        # torchvision's Resize default for PIL images.
        interpolation="bilinear" if resize is not None else None,
        class_names=class_names,
    )


class RandomCropFlip:
    """Zero-pad, random crop to ``size`` x ``size`` and random horizontal flip of a CHW tensor.

    torchvision's RandomCrop/RandomHorizontalFlip draw from torch's global RNG; this draws from
    its own seeded generator so runs replay exactly. Inside a DataLoader worker it reseeds once
    from the worker's seed (derived from the loader's seeded generator): otherwise each worker
    would start from the same copied state and repeat the others' crops.
    """

    def __init__(self, *, size: int, padding: int, seed: int) -> None:
        self.size = size
        self.padding = padding
        self._generator = torch.Generator().manual_seed(seed)
        self._worker_id: int | None = None

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        worker = get_worker_info()
        if worker is not None and worker.id != self._worker_id:
            self._generator.manual_seed(worker.seed)
            self._worker_id = worker.id
        p = self.padding
        padded = torch.nn.functional.pad(image, (p, p, p, p))
        height, width = padded.shape[-2:]
        top = int(torch.randint(0, height - self.size + 1, (), generator=self._generator))
        left = int(torch.randint(0, width - self.size + 1, (), generator=self._generator))
        crop = padded[..., top : top + self.size, left : left + self.size]
        if torch.rand((), generator=self._generator) < 0.5:
            crop = crop.flip(-1)
        return crop
