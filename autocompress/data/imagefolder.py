"""``imagefolder``: one folder of images per class under ``data.root`` (optionally split into
``train/`` and ``val/``), read with torchvision's ImageFolder."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from torch.utils.data import Subset

from .bundle import DataBundle
from .registry import register_dataset
from .sampling import STREAM_SPLIT, augment_seed, rng, stratified_split
from .vision import (
    RandomCropFlip,
    existing_root,
    image_preprocessing,
    image_transforms,
    import_torchvision,
)

if TYPE_CHECKING:
    from .config import DataConfig

__all__ = ["load_imagefolder"]

# ImageNet's per-channel statistics: the usual choice for natural photographs of unknown origin.
_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
_DEFAULT_IMAGE_SIZE = 32


@register_dataset("imagefolder", needs_root=True, augmentable=True, resizable=True)
def load_imagefolder(config: DataConfig, *, seed: int) -> DataBundle:
    tv = import_torchvision()
    root = existing_root(config)
    size = config.image_size or _DEFAULT_IMAGE_SIZE
    eval_tf = image_transforms(
        tv, _STATS, normalize=config.normalize, resize=size, center_crop=True
    )
    train_tf = eval_tf
    if config.augment:
        augment = RandomCropFlip(size=size, padding=max(1, size // 8), seed=augment_seed(seed))
        train_tf = image_transforms(
            tv, _STATS, normalize=config.normalize, resize=size, augment=augment
        )
    has_train, has_val = (root / "train").is_dir(), (root / "val").is_dir()
    if has_train != has_val:
        raise ValueError(
            "The 'data.root' parameter of load_data must hold either both train/ and val/ "
            "subfolders of class folders, or the class folders themselves. Got "
            f"{str(root)!r} instead, which has only {'train/' if has_train else 'val/'}."
        )
    if has_train:
        train = _image_folder(tv, root / "train", train_tf, root=root)
        val = _image_folder(tv, root / "val", eval_tf, root=root)
        if train.classes != val.classes:
            raise ValueError(
                "The 'data.root' parameter of load_data must have the same class folders in "
                f"train/ and val/. Got {str(root)!r} instead, with train classes "
                f"{train.classes} and val classes {val.classes}."
            )
        classes = train.classes
    else:
        full = _image_folder(tv, root, train_tf, root=root)
        eval_view = copy.copy(full)  # shares the file list; differs only in its transform
        eval_view.transform = eval_tf
        train_idx, val_idx = stratified_split(
            np.asarray(full.targets),
            val_fraction=config.val_fraction,
            rng=rng(seed, STREAM_SPLIT),
        )
        train, val = Subset(full, train_idx.tolist()), Subset(eval_view, val_idx.tolist())
        classes = full.classes
    # The evaluation transform's parameters: training augmentation is not part of deployment.
    preprocessing = image_preprocessing(
        _STATS,
        normalize=config.normalize,
        input_shape=(3, size, size),
        color="RGB",  # ImageFolder's loader converts every image to RGB
        class_names=list(classes),
        resize=size,
        center_crop=True,
    )
    return DataBundle(
        train=train,
        val=val,
        num_classes=len(classes),
        input_shape=(3, size, size),
        name="imagefolder",
        preprocessing=preprocessing,
    )


def _image_folder(tv: Any, path: Path, transform: Callable, *, root: Path) -> Any:
    try:
        return tv.datasets.ImageFolder(str(path), transform=transform)
    except FileNotFoundError as err:
        raise ValueError(
            "The 'data.root' parameter of load_data must hold one folder of images per class "
            f"(optionally under train/ and val/). Got {str(root)!r} instead: {err}"
        ) from err
