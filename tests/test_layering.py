"""superrl/'s import graph is acyclic and layered: a package imports only from its own layer or
the layers below, so a reader can learn the code bottom-up (README "Layout")."""
import ast
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parent.parent / "superrl"
LAYERS = [  # bottom first
    {"superrl.hf_config", "superrl.distributed", "superrl.console"},
    {"superrl.rope"},
    {"superrl.rollout", "superrl.ops", "superrl.algorithms", "superrl.rewards"},
    {"superrl.models", "superrl.data", "superrl.config"},
    {"superrl.sync", "superrl.weights"},
    {"superrl.trainer"},
    {"superrl.train", "superrl.eval", "superrl.plot", "superrl.plan"},
]
LAYER_OF = {unit: level for level, units in enumerate(LAYERS) for unit in units}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name == "superrl" or name.startswith("superrl.")}


def _unit(module: str) -> str:
    """The package or top-level module a module belongs to, e.g. superrl.sync.plan -> superrl.sync."""
    return ".".join(module.split(".")[:2])


GRAPH = {_module_name(p): _imports(p) for p in PACKAGE_DIR.rglob("*.py")}


def test_every_package_has_a_layer():
    assert {_unit(m) for m in GRAPH if m != "superrl"} <= set(LAYER_OF)


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_go_down_or_sideways(module):
    if module == "superrl":
        return
    upward = sorted(name for name in GRAPH[module]
                    if _unit(name) in LAYER_OF and LAYER_OF[_unit(name)] > LAYER_OF[_unit(module)])
    assert not upward, f"{module} (layer {LAYER_OF[_unit(module)]}) imports from a higher layer: {upward}"


def _resolve(name: str) -> str:
    """`from superrl.x.y import z` names module superrl.x.y or, when that is a package, its __init__."""
    while name not in GRAPH and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def test_import_graph_is_acyclic():
    state = {}  # module -> "visiting" | "done"

    def visit(module, path):
        if state.get(module) == "done":
            return
        if state.get(module) == "visiting":
            cycle = path[path.index(module):] + [module]
            raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
        state[module] = "visiting"
        for name in sorted(GRAPH[module]):
            target = _resolve(name)
            if target != module:
                visit(target, path + [module])
        state[module] = "done"

    for module in sorted(GRAPH):
        visit(module, [])


def test_units_depend_without_cycles_inside_a_layer():
    """sync may import weights (same layer) but then weights may not import sync."""
    edges = {(_unit(m), _unit(n)) for m, names in GRAPH.items() for n in names if _unit(m) != _unit(n)}
    mutual = sorted((a, b) for a, b in edges if (b, a) in edges and a < b)
    assert not mutual, f"packages importing each other: {mutual}"
