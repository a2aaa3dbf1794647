"""User code named by an import string ``"package.module:attribute"`` (a dataset function, a
model factory, an evaluator class): one parser, one importer, one message shape."""

from __future__ import annotations

import importlib
import os
import re
import sys
from typing import Any

IMPORT_STRING = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def is_import_string(text: object) -> bool:
    """Whether ``text`` has the form ``"package.module:attribute"``."""
    return isinstance(text, str) and IMPORT_STRING.match(text) is not None


def import_object(spec: str, *, field: str) -> Any:
    """The attribute named by ``spec`` (``"package.module:attribute"``). ``field`` names the
    config field or parameter that holds ``spec`` in the ValueError raised when the module or
    the attribute cannot be found.

    Modules are searched on ``sys.path`` and then in the current directory, so a ``my_data.py``
    beside the config works without ``PYTHONPATH=.``, as it does under ``python -m``."""
    if not is_import_string(spec):
        raise ValueError(
            f"The {field!r} field must be an import string 'package.module:attribute'. "
            f"Got {spec!r} instead."
        )
    module_name, attribute = spec.split(":")
    try:
        module = _import_module(module_name)
    except ImportError as err:
        raise ValueError(
            f"The {field!r} field must name an importable module in 'package.module:attribute'. "
            f"Got {spec!r} instead ({err})."
        ) from err
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise ValueError(
            f"The {field!r} field must name an attribute of its module in "
            f"'package.module:attribute'. Got {spec!r} instead (module {module_name!r} has no "
            f"{attribute!r})."
        ) from None


def _import_module(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        cwd = os.getcwd()
        # Only a miss of the user's own top-level module is retried from the current directory.
        if err.name != name.split(".")[0] or cwd in sys.path:
            raise
        sys.path.append(cwd)
        return importlib.import_module(name)
