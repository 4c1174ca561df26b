"""The package's layers: no module imports from a layer above its own.

The order is the one docs/architecture.md draws. Read from the source with
``ast`` (nothing is imported), so a new upward import fails here with the
module and the name it reaches for, before it turns into an import cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import twodtm

ROOT = Path(twodtm.__file__).parent

# Bottom to top; a module may import from its own layer and those below.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("data", "errors", "_hostmemory", "devices", "progress"),
    ("ctf", "orientations", "significance", "evaluation", "masking"),
    ("preprocess",),
    ("config",),
    ("io",),
    ("search",),
    ("simulate",),
    ("model_template",),
    ("local",),
    ("picking",),
    ("report",),
    ("programs",),
    ("cli", "launch", "__main__", "__init__"),
)
LEVEL = {name: level for level, names in enumerate(LAYERS) for name in names}


def _unit(module: str) -> str:
    """First component below ``twodtm`` (the package itself is ``__init__``)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found.append((".".join(("twodtm", *parts)), path))
    return found


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
        elif isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
    return [n for n in names if n == "twodtm" or n.startswith("twodtm.")]


def test_every_module_has_a_layer():
    units = {_unit(module) for module, _ in _modules()}
    assert units <= set(LEVEL), f"modules with no layer: {sorted(units - set(LEVEL))}"


def test_no_module_imports_from_a_layer_above():
    upward = []
    for module, path in _modules():
        here = LEVEL[_unit(module)]
        for target in _imports(path):
            if target == "twodtm" and module != "twodtm":
                upward.append(f"{module} imports the package root")
            elif LEVEL.get(_unit(target), -1) > here:
                upward.append(f"{module} -> {target}")
    assert not upward, "imports from a higher layer:\n" + "\n".join(upward)


def test_the_check_catches_an_upward_import(tmp_path):
    # The rule must be able to fail: a search module reaching for a program.
    probe = tmp_path / "probe.py"
    probe.write_text("from twodtm.programs.match import run_match\n")
    (target,) = _imports(probe)
    assert LEVEL[_unit(target)] > LEVEL["search"]
