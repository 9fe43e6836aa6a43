"""The import rule of ARCHITECTURE.md: a module imports only from its own layer or below.

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

# Lowest first; the same table as ARCHITECTURE.md (the test below checks they agree).
LAYERS = {
    "foundation": [
        "errors", "backend", "results", "hardware", "datasets", "links", "course", "progress",
        "plain_text",
    ],
    "planning": [
        "catalog", "profiles", "memory", "sharding", "launch", "roofline", "provision", "tools",
        "gguf_header", "colab", "cost",
    ],
    "engines": [
        "llamacpp", "hf", "encoder", "process", "servers", "endpoint", "llama_bench", "quantize",
        "metrics",
    ],
    "session": ["session", "__init__"],
    "lessons": [
        "chat", "classify", "scoring", "precision_sweep", "gpu_plan", "guard_prompts", "guard",
        "guard_classifier", "guard_code", "bench", "sweeps", "loadtest", "wrapup",
        "quant_sweep", "kv_sweep", "evaluation", "judge", "drift", "structured",
    ],
    "commands": ["bench_cli", "service", "llama_cpp_server"],
}  # fmt: skip
LEVEL = {module: i for i, modules in enumerate(LAYERS.values()) for module in modules}


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def imported_modules(path: Path) -> set[str]:
    """The llmops_lib modules that `path` imports, at top level or inside functions."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            return
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module is None:  # from . import x, y
                found.update(alias.name for alias in node.names)
            elif node.level == 1:  # from .x import y
                found.add(node.module.split(".")[0])
            elif node.module and node.module.startswith("llmops_lib"):
                parts = node.module.split(".")
                if len(parts) > 1:
                    found.add(parts[1])
                else:
                    found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "llmops_lib" and len(parts) > 1:
                    found.add(parts[1])
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return {name for name in found if (PACKAGE / f"{name}.py").exists()}


MODULES = sorted(p.stem for p in PACKAGE.glob("*.py"))


def test_every_module_has_a_layer():
    assert sorted(LEVEL) == MODULES, "add the new module to LAYERS and to ARCHITECTURE.md"


@pytest.mark.parametrize("module", MODULES)
def test_imports_point_down_or_sideways(module):
    upward = {
        target: next(name for name, mods in LAYERS.items() if target in mods)
        for target in imported_modules(PACKAGE / f"{module}.py")
        if LEVEL[target] > LEVEL[module]
    }
    assert not upward, f"{module} imports from a higher layer: {upward}"


def test_the_rule_catches_an_upward_import(tmp_path):
    engine = tmp_path / "engine.py"
    engine.write_text("def f():\n    from .chat import Conversation\n")
    assert imported_modules(engine) == {"chat"}
    guarded = tmp_path / "guarded.py"
    guarded.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import chat\n"
    )
    assert imported_modules(guarded) == set()


def test_architecture_md_lists_the_same_layers():
    text = ARCHITECTURE.read_text(encoding="utf-8")
    for layer, modules in LAYERS.items():
        line = re.search(rf"^\| *{layer} *\|(.*)$", text, re.MULTILINE)
        assert line, f"ARCHITECTURE.md has no row for the {layer} layer"
        listed = set(re.findall(r"`(\w+)`", line.group(1)))
        assert listed == set(modules), f"{layer}: ARCHITECTURE.md lists {sorted(listed)}"
