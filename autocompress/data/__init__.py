"""Datasets: the ``data:`` section of a run config, the dataset registry and seeded loaders.

``load_data(config, seed=...)`` turns a :class:`DataConfig` into a :class:`DataBundle` (train and
val datasets, class count, input shape, and for the built-in datasets the :class:`Preprocessing`
that turns a raw input into a model input); ``make_loaders`` wraps a bundle in seeded
DataLoaders.

Registered datasets (``list_datasets()``): ``digits`` (scikit-learn's bundled 8x8 digits) and
``synthetic`` need nothing beyond the core dependencies; ``cifar10``, ``mnist`` and
``imagefolder`` read a local directory through torchvision (the ``vision`` extra), imported only
when one of them is loaded; nothing is ever downloaded. A user adds a dataset with
``@register_dataset(name)`` or names a function as ``"package.module:function"``.
"""

# Imported for their @register_dataset side effect.
from . import builtin, cifar10, imagefolder, mnist  # noqa: F401
from .bundle import DataBundle, Preprocessing
from .config import DataConfig
from .loaders import load_data, make_loaders
from .registry import DatasetSpec, get_dataset, list_datasets, register_dataset

__all__ = [
    "DataBundle",
    "DataConfig",
    "DatasetSpec",
    "Preprocessing",
    "get_dataset",
    "list_datasets",
    "load_data",
    "make_loaders",
    "register_dataset",
]
