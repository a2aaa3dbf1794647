"""``mnist``: MNIST as uncompressed idx files (``MNIST/raw/``) under ``data.root``, read through
torchvision without downloading."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .bundle import DataBundle
from .registry import register_dataset
from .vision import existing_root, image_preprocessing, image_transforms, import_torchvision

if TYPE_CHECKING:
    from .config import DataConfig

__all__ = ["load_mnist"]

# Per-channel statistics of the training split.
_STATS = ((0.1307,), (0.3081,))
_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


@register_dataset("mnist", needs_root=True)
def load_mnist(config: DataConfig, *, seed: int) -> DataBundle:
    tv = import_torchvision()
    root = existing_root(config)
    raw = root / "MNIST" / "raw"
    missing = [f for f in _FILES if not (raw / f).is_file()]
    if missing:
        zipped = [f for f in missing if (raw / f"{f}.gz").is_file()]
        hint = f" Decompress {', '.join(f + '.gz' for f in zipped)} (gunzip)." if zipped else ""
        raise ValueError(
            "The 'data.root' parameter of load_data must be a directory holding MNIST as "
            f"MNIST/raw/{{{', '.join(_FILES)}}}. Got {str(root)!r} instead, which lacks "
            f"{', '.join('MNIST/raw/' + f for f in missing)}.{hint}"
        )
    transform = image_transforms(tv, _STATS, normalize=config.normalize)
    splits = []
    for train in (True, False):
        try:
            dataset = tv.datasets.MNIST(str(root), train=train, transform=transform, download=False)
        except Exception as err:
            prefix = "train" if train else "t10k"
            raise ValueError(
                "The 'data.root' parameter of load_data must hold readable MNIST idx files. Got "
                f"{str(root)!r} instead, where MNIST/raw/{prefix}-*-ubyte could not be read "
                f"({err})."
            ) from err
        if len(dataset.data) != len(dataset.targets):
            raise ValueError(
                "The 'data.root' parameter of load_data must hold MNIST idx files with as many "
                f"labels as images. Got {str(root)!r} instead ({len(dataset.data)} images, "
                f"{len(dataset.targets)} labels)."
            )
        splits.append(dataset)
    height, width = splits[0].data.shape[1:]
    input_shape = (1, int(height), int(width))
    preprocessing = image_preprocessing(
        _STATS,
        normalize=config.normalize,
        input_shape=input_shape,
        color="grayscale",
        # torchvision's names ("0 - zero", ...) restate the digit; the digit alone is the name.
        class_names=[str(digit) for digit in range(10)],
    )
    return DataBundle(
        train=splits[0],
        val=splits[1],
        num_classes=10,
        input_shape=input_shape,
        name="mnist",
        preprocessing=preprocessing,
    )
