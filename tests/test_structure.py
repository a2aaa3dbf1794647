"""The package's architecture, checked by parsing it: rooms import only downward (every import
statement counts, also those inside functions), and no module reaches into another module's
private names; nor does any test."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "autocompress"
TESTS = Path(__file__).resolve().parent

# Lowest first: each room may import only the rooms before it (see docs/extending.md).
ROOMS = (
    "core",
    "data",
    "spaces",
    "compression",
    "tasks",
    "hardware_profiles",
    "evaluators",
    "config",
    "report",
    "search",
    "export",
    "api",
    "cli",
)


def _imports(path: Path, package_root: Path) -> list[tuple[list[str], list[str], int]]:
    """(imported module path, imported names, line) of every ``autocompress`` import in
    ``path``; relative imports are resolved against the file's package."""
    module = path.relative_to(package_root.parent).with_suffix("").parts
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom):
            target = node.module.split(".") if node.module else []
            if node.level:  # a package's __init__ counts as a module inside the package
                target = list(module[: len(module) - node.level]) + target
            if target[:1] == ["autocompress"]:
                found.append((target, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                target = alias.name.split(".")
                if target[0] == "autocompress":
                    found.append((target, [], node.lineno))
    return found


def _room(parts: list[str]) -> str | None:
    return parts[1].removesuffix(".py") if len(parts) > 1 else None


def _is_module(parts: list[str], name: str) -> bool:
    base = PACKAGE.parent.joinpath(*parts, name)
    return base.is_dir() or base.with_suffix(".py").is_file()


def _package_files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _room_of(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def test_every_module_is_in_a_room():
    rooms = {_room_of(p) for p in _package_files()}
    assert rooms - {"__init__"} == set(ROOMS)


def test_rooms_import_only_downward():
    upward = []
    for path in _package_files():
        source = _room_of(path)
        if source == "__init__":
            continue
        for target, names, line in _imports(path, PACKAGE):
            # "from autocompress import x" imports the room x itself.
            rooms = [_room(target)] if len(target) > 1 else names
            for room in rooms:
                if room in ROOMS and room != source and ROOMS.index(room) > ROOMS.index(source):
                    upward.append(f"{path.relative_to(PACKAGE.parent)}:{line} {source} -> {room}")
    assert upward == []


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _private_imports(paths: list[Path], *, within_package: bool) -> list[str]:
    """Imports of private names, and of private modules from outside their own package (a
    package's ``__init__`` may re-export its ``_base``; nobody else may reach into it)."""
    found = []
    for path in paths:
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts if within_package else ()
        for target, names, line in _imports(path, PACKAGE if within_package else TESTS):
            where = f"{path.relative_to(path.parents[1])}:{line}"
            for name in names:
                sibling_module = _is_module(target, name) and tuple(target) == parts[:-1]
                if _private(name) and not sibling_module:
                    found.append(f"{where} {name} from {'.'.join(target)}")
            for depth, part in enumerate(target):
                sibling = tuple(target[:depth]) == parts[:-1]
                if _private(part) and not sibling:
                    found.append(f"{where} private module {'.'.join(target)}")
    return found


def test_no_module_imports_another_modules_private_names():
    assert _private_imports(_package_files(), within_package=True) == []


def test_no_test_imports_a_private_name_of_the_package():
    tests = sorted(TESTS.rglob("*.py"))
    assert _private_imports(tests, within_package=False) == []


@pytest.mark.parametrize("room", ROOMS)
def test_the_check_sees_each_room(room):
    # Guards the parser: a room that imports nothing from autocompress would make the test
    # above pass vacuously, so every room except core must show at least one import.
    files = [
        p for p in _package_files() if p.relative_to(PACKAGE).parts[0].removesuffix(".py") == room
    ]
    imports = [t for p in files for t in _imports(p, PACKAGE)]
    assert files and (imports or room == "core")
