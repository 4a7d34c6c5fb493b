"""The package's shape: imports point down the layers and there is no import cycle anywhere in
``helpers`` (read from the source, so lazy imports inside functions count too)."""

from __future__ import annotations

import ast
from pathlib import Path

HELPERS = Path(__file__).resolve().parents[1] / "helpers"
# lower layers never import higher ones (DESIGN: core <- data <- models <- eval <- train <- results <-
# configuration <- experiments <- report/suite)
LAYERS = {"core": 0, "data": 1, "models": 2, "eval": 3, "train": 4, "results": 5, "settings": 6, "profiles": 6,
          "experiments": 7, "report": 8, "suite": 8, "cache": 8, "__init__": 8}


def _modules() -> dict[str, Path]:
    out = {}
    for path in HELPERS.rglob("*.py"):
        parts = path.relative_to(HELPERS.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """helpers modules imported by ``path`` (``from helpers.x import y`` counts y when it is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("helpers"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in modules else node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("helpers")}
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, modules) - {name} for name, path in modules.items()}


def _layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS["__init__"] if len(parts) == 1 else LAYERS[parts[1]]


def test_no_import_cycle_in_helpers():
    graph = _graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(node, stack):
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_imports_point_down_the_layers():
    upward = [f"{src} imports {dst}" for src, dsts in _graph().items() for dst in dsts
              if _layer(dst) > _layer(src)]
    assert not upward, "imports pointing up the layers:\n" + "\n".join(sorted(upward))


def test_every_module_sits_in_a_layer():
    for name in _modules():
        assert _layer(name) is not None, name
