"""Modules import each other only through their public surface, ``__all__``.

Every ``from authz.x import y`` inside the package names either a submodule of
``authz.x`` or a name in ``authz.x.__all__``; so does every ``x.y`` where a module
reached ``x`` by ``from authz.pkg import x``. A private helper used from another
module shows up here instead of turning into a hidden dependency. Every name an
``__all__`` lists exists.

Deliberate exceptions: the generated code under ``authz/_proto`` (``make proto``
rewrites it, and the staleness test diffs it) has no ``__all__``; its modules are
used as protobuf does.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import pkgutil
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

import authz

PACKAGE = Path(authz.__file__).resolve().parent
GENERATED = "authz._proto"


def is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def cross_module_uses() -> Iterator[tuple[str, str, str]]:
    """(file, module, name) for each name one authz module takes from another."""
    for path in sorted(PACKAGE.rglob("*.py")):
        if "_proto" in path.relative_to(PACKAGE).parts:
            continue
        tree = ast.parse(path.read_text(), str(path))
        where = str(path.relative_to(PACKAGE.parent))
        module_aliases: dict[str, str] = {}
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom) or node.level or not node.module:
                continue
            if not node.module.startswith("authz") or node.module.startswith(GENERATED):
                continue
            for alias in node.names:
                if is_module(f"{node.module}.{alias.name}"):
                    module_aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
                else:
                    yield where, node.module, alias.name
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in module_aliases):
                target = module_aliases[node.value.id]
                if not target.startswith(GENERATED):
                    yield where, target, node.attr


def modules_with_all() -> Iterator[ModuleType]:
    yield authz
    for info in pkgutil.walk_packages(authz.__path__, "authz."):
        if info.name.startswith(GENERATED):
            continue
        module = importlib.import_module(info.name)
        if hasattr(module, "__all__"):
            yield module


def test_modules_take_only_public_names_from_each_other() -> None:
    uses = list(cross_module_uses())
    assert len(uses) > 100  # the walk found the package's imports
    private = sorted({f"{where}: {module}.{name}" for where, module, name in uses
                      if name not in getattr(importlib.import_module(module), "__all__", ())})
    assert private == [], "\n".join(private)


@pytest.mark.parametrize("module", list(modules_with_all()), ids=lambda m: m.__name__)
def test_every_name_in_all_exists(module: ModuleType) -> None:
    names = list(module.__all__)
    assert len(names) == len(set(names)), f"{module.__name__}.__all__ repeats a name"
    missing = [name for name in names if not hasattr(module, name)]
    assert missing == []
