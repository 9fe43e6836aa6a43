"""The import rule of ARCHITECTURE.md: a module imports only from its own layer or below.

A module's layer is its folder under llmops_lib/ (`core/`, `planning/`, `programs/`,
`engines/`, `lessons/`, `commands/`; the top-level files are the session); the order of the
layers and the one hand-written list of modules are ARCHITECTURE.md's table, checked against
the folders.
Lazy imports inside functions count too (they are dependencies all the same); only imports
under `if TYPE_CHECKING:` are skipped, because they never run.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import llmops_lib

PACKAGE = Path(llmops_lib.__file__).parent
ARCHITECTURE = PACKAGE.parent / "ARCHITECTURE.md"
TOP = "session"  # the layer of the files directly in llmops_lib/


def module_name(path: Path) -> str:
    """`lessons/nb08/judge.py` -> "lessons.nb08.judge" (a package's file keeps `__init__`)."""
    return ".".join(path.relative_to(PACKAGE).with_suffix("").parts)


MODULES = {
    module_name(p): p
    for p in sorted(PACKAGE.rglob("*.py"))
    if "data" not in p.relative_to(PACKAGE).parts
}


def layer_of(module: str) -> str:
    """The folder a module lies in, named as its layer in ARCHITECTURE.md."""
    head, _, rest = module.partition(".")
    return FOLDERS[head] if rest else TOP


def _table() -> list[tuple[str, str, set[str]]]:
    """ARCHITECTURE.md's rows, lowest first: (layer, folder, the modules it lists)."""
    rows = re.findall(
        r"^\| *(\w+) *\| *(`\w+/`|top level) *\|(.*)\|$",
        ARCHITECTURE.read_text(encoding="utf-8"),
        re.MULTILINE,
    )
    return [
        (layer, folder.strip("`/"), set(re.findall(r"`([\w/]+)`", cells)))
        for layer, folder, cells in rows
    ]


TABLE = _table()
FOLDERS = {folder: layer for layer, folder, _ in TABLE if folder != "top level"}
LEVEL = {layer: i for i, (layer, _, _) in enumerate(TABLE)}


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _resolve(parts: list[str], names: list[str]) -> set[str]:
    """The modules `from llmops_lib.<parts> import <names>` reaches."""
    found = set()
    for name in names:
        if ".".join([*parts, name]) in MODULES:
            found.add(".".join([*parts, name]))
        elif ".".join(parts) in MODULES:
            found.add(".".join(parts))
        else:  # a name from a package's __init__
            found.add(".".join([*parts, "__init__"]))
    return {m for m in found if m in MODULES}


def imported_modules(source: str, package: list[str]) -> set[str]:
    """The llmops_lib modules that `source` (a module in llmops_lib.<package>) imports, at
    top level or inside functions."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            return
        names = (
            [a.name for a in node.names] if isinstance(node, ast.Import | ast.ImportFrom) else []
        )
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - node.level + 1]
            found.update(_resolve(base + (node.module.split(".") if node.module else []), names))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("llmops_lib"):
            found.update(_resolve(node.module.split(".")[1:], names))
        elif isinstance(node, ast.Import):
            for name in names:
                if name.startswith("llmops_lib."):
                    *parts, last = name.split(".")[1:]
                    found.update(_resolve(parts, [last]))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(source))
    return found


def _package(module: str) -> list[str]:
    return module.split(".")[:-1]


def test_every_folder_is_a_layer_of_the_table():
    folders = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert folders == set(FOLDERS), "each folder of llmops_lib/ is one row of ARCHITECTURE.md"
    assert [layer for layer, _, _ in TABLE].count(TOP) == 1


@pytest.mark.parametrize("layer, folder, listed", TABLE, ids=[row[0] for row in TABLE])
def test_architecture_md_lists_the_modules_of_each_folder(layer, folder, listed):
    prefix = "" if folder == "top level" else folder + "."
    present = {
        module.removeprefix(prefix).replace(".", "/")
        for module in MODULES
        if layer_of(module) == layer and not module.endswith("." + "__init__")
    }
    assert listed == present, f"{layer}: ARCHITECTURE.md lists {sorted(listed)}"


def test_package_folders_hold_no_code():
    """A folder's __init__ is its docstring only, so the table's modules are all there is."""
    for module, path in MODULES.items():
        if module.endswith(".__init__"):
            body = ast.parse(path.read_text(encoding="utf-8")).body
            assert len(body) == 1 and isinstance(body[0], ast.Expr), module


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down_or_sideways(module):
    source = MODULES[module].read_text(encoding="utf-8")
    upward = {
        target: layer_of(target)
        for target in imported_modules(source, _package(module))
        if LEVEL[layer_of(target)] > LEVEL[layer_of(module)]
    }
    assert not upward, f"{module} imports from a higher layer: {upward}"


# A model, a server or a client of one comes from the session (which asks the registry)
# or from a running server (`ServerProcess.endpoint()`), never from a lesson itself, so a
# lesson runs on whichever engine the profile names. llama.cpp's command-line tools are a
# layer of their own below the engines (programs/): nothing of theirs loads in-process.
@pytest.mark.parametrize("module", [m for m in sorted(MODULES) if layer_of(m) == "lessons"])
def test_lessons_load_models_only_through_the_session(module):
    source = MODULES[module].read_text(encoding="utf-8")
    engines = {t for t in imported_modules(source, _package(module)) if layer_of(t) == "engines"}
    assert not engines, f"{module} imports engine modules: {sorted(engines)}"


def test_the_rule_catches_an_upward_import():
    lazy = "def f():\n    from ..lessons.nb05.chat import Conversation\n"
    assert imported_modules(lazy, ["engines"]) == {"lessons.nb05.chat"}
    absolute = "from llmops_lib.lessons.nb08 import judge\nimport llmops_lib.core.errors\n"
    assert imported_modules(absolute, ["engines"]) == {"lessons.nb08.judge", "core.errors"}
    sideways = "from . import scoring\nfrom .nb08.judge import parse\n"
    assert imported_modules(sideways, ["lessons"]) == {"lessons.scoring", "lessons.nb08.judge"}
    guarded = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import chat\n"
    assert imported_modules(guarded, ["lessons", "nb05"]) == set()
    assert layer_of("lessons.nb05.chat") == "lessons" and layer_of("session") == TOP
