"""The dataset registry: every name ``data.dataset`` accepts, and what each dataset supports.

A dataset is a function ``loader(config, *, seed) -> DataBundle`` registered under a name with
:func:`register_dataset`. ``data.dataset`` may also be an import string
``"package.module:function"`` naming a user function with the simpler contract of
:mod:`autocompress.data.user`; :func:`get_dataset` resolves both.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from autocompress.core.plugins import is_import_string
from autocompress.core.registry import Registry, qualified_name

from .user import load_import_string

if TYPE_CHECKING:
    from .bundle import DataBundle
    from .config import DataConfig

__all__ = ["DatasetLoader", "DatasetSpec", "get_dataset", "list_datasets", "register_dataset"]

# ':' is reserved for import strings, and glob characters would make list_datasets ambiguous.
_NAME = re.compile(r"^[A-Za-z0-9_][\w.-]*$")
_IMPORT_STRING = "an import string 'package.module:function'"


class DatasetLoader(Protocol):
    """Builds the train/val datasets that ``config`` describes.

    ``seed`` must fix every random choice (split, generated samples, augmentation stream); the
    loader must not draw from global RNGs. ``load_data`` applies ``limit_train``/``limit_val``
    afterwards, so a loader ignores them.
    """

    def __call__(self, config: DataConfig, *, seed: int) -> DataBundle: ...


@dataclass(frozen=True)
class DatasetSpec:
    """A registered dataset: its loader and the config fields it honours.

    ``needs_root``: ``data.root`` is required. ``augmentable``: ``data.augment`` is allowed.
    ``resizable``: ``data.image_size`` is allowed. DataConfig rejects the fields a dataset would
    otherwise silently ignore.
    """

    name: str
    loader: DatasetLoader
    needs_root: bool = False
    augmentable: bool = False
    resizable: bool = False


# Re-registering the same function (a re-imported module) is harmless, whatever its flags.
_DATASETS: Registry[DatasetSpec] = Registry(
    "dataset", identity=lambda spec: qualified_name(spec.loader)
)


def register_dataset(
    name: str, *, needs_root: bool = False, augmentable: bool = False, resizable: bool = False
) -> Callable[[DatasetLoader], DatasetLoader]:
    """Function decorator: make ``loader(config, *, seed) -> DataBundle`` selectable as
    ``data.dataset: name``. The flags are those of :class:`DatasetSpec`."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(
            "The 'name' parameter of register_dataset must be a non-empty str of letters, "
            f"digits, '_', '.' and '-' (':' marks an import string). Got {name!r} instead."
        )

    def decorator(loader: DatasetLoader) -> DatasetLoader:
        if not callable(loader):
            raise TypeError(
                f"register_dataset({name!r}) can only decorate a function. Got {loader!r} instead."
            )
        spec = DatasetSpec(
            name=name,
            loader=loader,
            needs_root=needs_root,
            augmentable=augmentable,
            resizable=resizable,
        )
        _DATASETS.register(name)(spec)
        return loader

    return decorator


def list_datasets(pattern: str = "*") -> list[str]:
    """Registered dataset names matching the glob ``pattern``, sorted."""
    return _DATASETS.names(pattern)


def get_dataset(name: str) -> DatasetSpec:
    """The dataset ``data.dataset: name`` selects: a registered one, or for an import string a
    spec whose loader imports the user function when called (so naming it imports nothing)."""
    if is_import_string(name):
        return DatasetSpec(name=name, loader=load_import_string)
    return _DATASETS.get(name, where="The 'data.dataset' field", alternative=_IMPORT_STRING)
