"""One small registry type behind every extension point (model families, hardware profiles,
evaluators, samplers, datasets): names map to classes or factories, filled by a decorator, looked
up with an error that lists the valid names (timm's ``register_model`` / ``create_model``)."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Names -> entries of one kind (``kind`` is used in messages, e.g. "hardware profile").
    ``identity(entry)`` tells whether two registrations are the same entry (default: the
    qualified name of the class or function, which survives a module being imported again)."""

    def __init__(self, kind: str, *, identity: Callable[[T], str] | None = None) -> None:
        self.kind = kind
        self._identity = identity or qualified_name
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering its target under ``name``. Registering the same class or
        function again (a re-imported module) is harmless; another entry under a taken name is
        an error, since lookups would then depend on import order."""
        if not isinstance(name, str) or not name:
            raise ValueError(
                f"The 'name' of a {self.kind} must be a non-empty str. Got {name!r} instead."
            )

        def decorator(entry: T) -> T:
            existing = self._entries.get(name)
            if existing is not None and self._identity(existing) != self._identity(entry):
                raise ValueError(
                    f"A {self.kind} named {name!r} is already registered "
                    f"({self._identity(existing)}); cannot register {self._identity(entry)} "
                    "under that name."
                )
            self._entries[name] = entry
            return entry

        return decorator

    def get(self, name: object, *, where: str, alternative: str = "") -> T:
        """The entry registered as ``name``; ``where`` names what holds the name in the error
        (e.g. "The 'evaluator.name' field"), ``alternative`` what else it may hold."""
        entry = self._entries.get(name) if isinstance(name, str) else None
        if entry is None:
            other = f" or {alternative}" if alternative else ""
            raise ValueError(f"{where} must be one of {self.names()}{other}. Got {name!r} instead.")
        return entry

    def names(self, pattern: str = "*") -> list[str]:
        """Registered names matching the shell-style ``pattern``, sorted."""
        return sorted(name for name in self._entries if fnmatch.fnmatch(name, pattern))

    def __contains__(self, name: object) -> bool:
        return name in self._entries


def qualified_name(entry: object) -> str:
    """``module.QualifiedName`` of a class or function."""
    return f"{getattr(entry, '__module__', '?')}.{getattr(entry, '__qualname__', repr(entry))}"
