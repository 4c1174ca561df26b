"""The public surface: lazy package exports and every module's ``__all__``."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import twodtm

_INIT = Path(twodtm.__file__)


def _modules() -> list[str]:
    found = pkgutil.walk_packages(twodtm.__path__, prefix="twodtm.")
    return sorted(info.name for info in found if info.name != "twodtm.__main__")


def test_lazy_exports_resolve():
    for name in twodtm.__all__:
        assert getattr(twodtm, name) is not None, name


def test_each_export_comes_from_the_module_that_defines_it():
    exports = twodtm._EXPORTS
    assert set(exports) == set(twodtm.__all__) - {"__version__"}
    for name, module in exports.items():
        value = getattr(importlib.import_module(module), name)
        assert getattr(twodtm, name) is value, name
        assert value.__module__ == module, f"{name} is defined in {value.__module__}"


def test_type_checking_imports_match_the_lazy_table():
    # mypy reads the TYPE_CHECKING imports, the runtime the table: both must agree.
    tree = ast.parse(_INIT.read_text(encoding="utf-8"))
    guarded = next(
        node
        for node in tree.body
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"
    )
    imported = {
        alias.name: node.module
        for node in ast.walk(guarded)
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert imported == twodtm._EXPORTS


def test_every_all_names_what_its_module_holds():
    for name in _modules():
        module = importlib.import_module(name)
        listed = getattr(module, "__all__", [])
        assert len(set(listed)) == len(listed), f"{name}: duplicates in __all__"
        missing = [n for n in listed if not hasattr(module, n)]
        assert not missing, f"{name}.__all__ names missing objects: {missing}"
