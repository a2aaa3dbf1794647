"""Datasets from the user's own code, named in the config by an import string.

``data.dataset: "package.module:function"`` calls ``function(root=data.root, seed=seed)``, which
returns ``(train_dataset, val_dataset, num_classes, input_shape)``. The contract is smaller than a
registered loader's (no DataConfig, no DataBundle) so that a plain script can provide a dataset.
"""

from __future__ import annotations

import inspect
import numbers
from typing import TYPE_CHECKING

from autocompress.core.plugins import import_object

from .bundle import DataBundle

if TYPE_CHECKING:
    from .config import DataConfig

__all__ = ["load_import_string"]


def load_import_string(config: DataConfig, *, seed: int) -> DataBundle:
    """Import the function ``config.dataset`` names, call it and check what it returns."""
    spec = config.dataset
    # Searches sys.path, then the current directory, so a my_data.py beside the config works.
    function = import_object(spec, field="data.dataset")
    if not callable(function):
        module_name, function_name = spec.split(":")
        raise ValueError(
            "The 'data.dataset' parameter of load_data must name a function of its module in "
            f"'package.module:function'. Got {spec!r} instead (module {module_name!r} has no "
            f"callable {function_name!r})."
        )
    try:
        inspect.signature(function).bind(root=config.root, seed=seed)
    except TypeError as err:
        raise ValueError(
            f"The 'data.dataset' entry point {spec!r} must accept the keyword arguments root and "
            f"seed, as in def {spec.split(':')[1]}(root, seed). Got {err}."
        ) from None
    except ValueError:  # no signature to inspect (a builtin): the call will tell
        pass
    return _check_result(spec, function(root=config.root, seed=seed))


def _check_result(spec: str, result: object) -> DataBundle:
    def fail(problem: str) -> ValueError:
        return ValueError(
            f"The 'data.dataset' entry point {spec!r} of load_data must return (train_dataset, "
            f"val_dataset, num_classes, input_shape). Got {_short_repr(result)} instead "
            f"({problem})."
        )

    if not isinstance(result, tuple | list) or len(result) != 4:
        raise fail("not a 4-tuple")
    train, val, num_classes, input_shape = result
    for label, dataset in (("train_dataset", train), ("val_dataset", val)):
        if not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")):
            raise fail(f"{label} has no __getitem__/__len__")
    # A regression's outputs count as its classes: one target is one output.
    if not _is_int(num_classes) or num_classes < 1:
        raise fail("num_classes must be an int >= 1")
    shape = tuple(input_shape) if isinstance(input_shape, tuple | list) else ()
    if len(shape) != 3 or not all(_is_int(d) and d > 0 for d in shape):
        raise fail("input_shape must be three positive ints (channels, height, width)")
    return DataBundle(
        train=train,
        val=val,
        num_classes=int(num_classes),
        input_shape=(int(shape[0]), int(shape[1]), int(shape[2])),
        name=spec,
    )


def _is_int(value: object) -> bool:
    # numbers.Integral admits numpy integers (a common num_classes); bool is excluded on purpose.
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _short_repr(value: object, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
