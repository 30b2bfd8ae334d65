"""The package's layout holds (docs/design.md section 9): every module imports only its own
family or lower floors, the maths imports no file I/O, and there are no import cycles."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "ambient_med"

# floor of each family: a module may import its own family and any lower floor, nothing higher
FLOORS = {
    "errors": 0, "utils": 0,
    "mri": 1, "noise": 2, "io": 2,
    "diffusion": 3, "recon": 4,
    "synthetic": 5, "training": 5,
    "prior": 6,
    "tasks": 7, "interop": 7,
    "cli": 8, "__main__": 8, "__init__": 8,
}
MATHS = ("mri", "noise", "diffusion", "recon")


def _family(module: str) -> str:
    return module.split(".")[1] if "." in module else "__init__"


def _imports() -> dict[str, set[str]]:
    """``ambient_med.x.y`` -> the ``ambient_med`` modules it imports (lazy imports included)."""
    graph = {}
    for f in ROOT.rglob("*.py"):
        parts = ["ambient_med", *f.relative_to(ROOT).with_suffix("").parts]
        package = parts[:-1] if parts[-1] != "__init__" else parts[:-1]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        deps = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package[: len(package) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                if target.startswith("ambient_med"):
                    names = [f"{target}.{a.name}" for a in node.names] if node.module is None else []
                    deps.update(names or [target])
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.startswith("ambient_med"))
        graph[".".join(parts)] = {d for d in deps if d != "ambient_med"}
    return graph


GRAPH = _imports()


def test_every_family_has_a_floor():
    assert {_family(m) for m in GRAPH} <= set(FLOORS), sorted({_family(m) for m in GRAPH} - set(FLOORS))


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_no_import_from_a_higher_floor(module):
    mine = FLOORS[_family(module)]
    higher = [d for d in GRAPH[module] if _family(d) != _family(module) and FLOORS[_family(d)] > mine]
    assert not higher, f"{module} (floor {mine}) imports {higher}"


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if _family(m) in MATHS))
def test_the_maths_reads_no_files(module):
    assert not [d for d in GRAPH[module] if _family(d) == "io"], f"{module} imports file I/O"


def test_no_import_cycles():
    def module_of(dep: str) -> str | None:  # "pkg.mod.name" -> the module that defines it
        while dep and dep not in GRAPH:
            dep = dep.rpartition(".")[0]
        return dep or None

    edges = {m: {module_of(d) for d in ds} - {None, m} for m, ds in GRAPH.items()}
    for m in edges:  # a package's __init__ re-exports its modules: not a cycle through them
        edges[m] = {d for d in edges[m] if not m.startswith(d + ".")}
    state: dict[str, int] = {}

    def visit(m, path):
        state[m] = 1
        for d in edges[m]:
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(d):] + [d]))
            if d not in state:
                visit(d, path + [d])
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])
