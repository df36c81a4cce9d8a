"""The package's shape: layered subpackages, no import cycles, small files.

Layers, lowest first; a module may import from its own subpackage and from lower layers only, so that a
reader can understand each layer without the ones above it (function-level imports count too)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "larp"
LAYERS = {
    "utils": 0,
    "models": 1, "data": 1,
    "eval": 2,
    "sample": 3, "videos": 3,
    "train": 4,
    "demo": 5, "app": 5,
    "cli": 6,
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def larp_imports(path: Path) -> set[str]:
    """Every larp module this file imports, at any depth (absolute or relative)."""
    tree = ast.parse(path.read_text())
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "larp"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == "larp":
                found.add(target)
    return found


ALIASES = {"sampling": "sample",  # larp.sampling re-exports larp.sample under its first name
           "__main__": "cli"}  # `python -m larp` runs larp.cli


def area(module: str) -> str | None:
    parts = module.split(".")
    return ALIASES.get(parts[1], parts[1]) if len(parts) > 1 else None


MODULES = {module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def test_every_area_has_a_layer():
    assert {area(m) for m in MODULES if area(m)} <= set(LAYERS), "a new subpackage needs a layer here"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if area(m)))
def test_imports_go_down_the_layers(module: str):
    mine = area(module)
    upward = sorted(t for t in larp_imports(MODULES[module])
                    if area(t) and area(t) != mine and LAYERS[area(t)] >= LAYERS[mine])
    assert not upward, f"{module} (layer {LAYERS[mine]}) imports {upward} from its own layer or above"


def test_no_import_cycles():
    graph = {m: {t for t in larp_imports(p) if t in MODULES and t != m} for m, p in MODULES.items()}
    graph["larp"] = set()  # its lazy re-exports point up by design: they are the public names
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                cycle = stack[stack.index(t):] + [t] if t in stack else [m, t]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if t not in state:
                visit(t, stack + [t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


def test_files_stay_readable():
    long = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > 550}
    assert not long, f"files over 550 lines: {long}"
