"""User code: an object named by an import string ``"package.module:attribute"`` (a dataset
function, a model factory), and plugins, modules imported for what they register (families,
datasets, evaluators, samplers, hardware profiles): named in a run config's ``plugins`` list or
with ``--import``, or installed with an ``autocompress.plugins`` entry point."""

from __future__ import annotations

import importlib
import os
import re
import sys
from pathlib import Path
from typing import Any

IMPORT_STRING = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
ENTRY_POINT_GROUP = "autocompress.plugins"
_installed: list[str] | None = None


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


def import_plugin(spec: str, *, base: Path | None = None) -> str:
    """Import plugin ``spec``: a module name (``my_package.plugins``) or a ``.py`` file (relative
    to ``base``, default the current directory). Returns how to name it again from anywhere: the
    module name, or the file's absolute path. A file's folder joins ``sys.path`` so its module
    imports by name too (as Ray and spawned workers do when they unpickle what it defines)."""
    if spec.endswith(".py") or os.sep in spec or "/" in spec:
        path = (Path(base or ".") / spec).expanduser().resolve()
        if not path.is_file() and path.stem in sys.modules:
            return str(path)  # moved since it was recorded, and imported from its new place
        if not path.is_file():
            raise ImportError(f"no file {str(path)!r}")
        if str(path.parent) not in sys.path:
            sys.path.insert(0, str(path.parent))
        importlib.import_module(path.stem)
        return str(path)
    _import_module(spec)
    return spec


def load_installed_plugins(*, reload: bool = False) -> list[str]:
    """Import every installed ``autocompress.plugins`` entry point (once per process, unless
    ``reload``); their names."""
    global _installed
    if _installed is None or reload:
        from importlib.metadata import entry_points

        found = entry_points(group=ENTRY_POINT_GROUP)
        for entry in found:
            entry.load()
        _installed = sorted(entry.name for entry in found)
    return _installed
