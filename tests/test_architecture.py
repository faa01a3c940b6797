"""The layers as the README's Architecture section draws them, checked on the source.

core <- vision, features, learning, inference, reporting <- stages <- api, cli: a stage
never imports another stage, no library module imports a stage, and no two modules
import each other (directly or around a loop), counting imports inside functions too.
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "fercli"
LAYERS = ("core", "vision", "features", "learning", "inference", "reporting", "stages")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 else None


def imports() -> dict[str, set[str]]:
    """module -> the fercli modules it imports (anywhere in the file)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[:len(base) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                for alias in node.names:  # `from .core import layout` names a module
                    candidate = f"{target}.{alias.name}"
                    found.add(candidate if candidate in modules else target)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def test_no_stage_imports_another_stage_and_no_library_module_imports_stages():
    graph = imports()
    offending = sorted(
        (module, target) for module, targets in graph.items() for target in targets
        if target.startswith("fercli.stages") and target != "fercli.stages"
        and (module.startswith("fercli.stages.") or layer(module) in LAYERS[:-1]))
    assert offending == []


def test_core_imports_no_upper_layer():
    graph = imports()
    upward = sorted((m, t) for m, targets in graph.items() if m.startswith("fercli.core")
                    for t in targets if layer(t) in LAYERS[1:])
    assert upward == []


def test_there_is_no_import_cycle():
    graph = imports()
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    # a package __init__ importing its own submodule is not a cycle of two modules
    cycles = [c for c in cycles if not (len(c) == 3 and c[0] == c[2]
                                        and c[1].startswith(c[0] + "."))]
    assert cycles == []


def test_every_layer_is_a_folder_with_a_docstring():
    for layer in LAYERS:
        init = PACKAGE / layer / "__init__.py"
        assert init.is_file() and ast.get_docstring(ast.parse(init.read_text())), layer
