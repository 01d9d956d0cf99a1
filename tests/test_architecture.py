"""The shape of the tree (docs/architecture.md): no import cycles, measure/ is a library, small modules.

Imports are read from the source (module level and inside functions; ``if TYPE_CHECKING:`` blocks
excluded), so a cycle hidden by a function-local import is still a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

LEM = Path(__file__).resolve().parents[1] / "lem"
MAX_LINES = 420  # "about 400"
DATA_MODULES = {"lem.workload.builtin_prompts"}  # prompt text, not code
# What measure/ may import from lem: it is a library the rest of lem (and anyone) builds on.
MEASURE_MAY_IMPORT = ("lem.measure", "lem.errors", "lem.records", "lem.files")


def module_files() -> dict[str, Path]:
    modules = {}
    for path in LEM.rglob("*.py"):
        parts = list(path.relative_to(LEM.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


MODULES = module_files()


def imports_of(name: str, path: Path) -> set[str]:
    """The lem modules ``name`` imports, with the packages whose ``__init__`` those imports run."""
    tree = ast.parse(path.read_text())
    type_checking = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test) for n in ast.walk(node)}
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in type_checking:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in MODULES}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.add(full if full in MODULES else base)
    for module in list(found):  # importing a.b.c runs a/__init__ and a/b/__init__ too
        parts = module.split(".")
        found |= {".".join(parts[:i]) for i in range(1, len(parts)) if not name.startswith(".".join(parts[:i]) + ".")}
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: imports_of(name, path) for name, path in MODULES.items()}


def cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in GRAPH:
        if v not in index:
            visit(v)
    return found


def test_the_checker_sees_a_cycle_hidden_in_a_function() -> None:
    GRAPH["lem.records"].add("lem.pipeline")  # records -> pipeline -> ... -> records
    try:
        assert any("lem.records" in c and "lem.pipeline" in c for c in cycles())
    finally:
        GRAPH["lem.records"].discard("lem.pipeline")


def test_no_import_cycles() -> None:
    assert cycles() == []


def test_measure_is_a_library() -> None:
    upward = {
        f"{name} imports {dep}"
        for name, deps in GRAPH.items()
        if name.startswith("lem.measure")
        for dep in deps
        if not dep.startswith(MEASURE_MAY_IMPORT) and dep != "lem"
    }
    assert upward == set()


def test_no_module_over_about_400_lines() -> None:
    long = {name: n for name, path in MODULES.items() if name not in DATA_MODULES and (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_an_engine_is_one_folder_in_the_registry() -> None:
    from lem.backends.registry import ENGINE_NAMES, ENGINES

    for name in ENGINE_NAMES:
        folder = LEM / "backends" / name
        assert {"config.py", "engine.py"} <= {p.name for p in folder.iterdir()}, name
        engine = ENGINES[name]
        assert engine.adapter.startswith(f"lem.backends.{name}.")
        assert engine.adapter_class().scheduling in ("batch", "continuous", "serial")
    assert not (LEM.parent / "conf" / "backend").exists()  # backend=<name> comes from the registry, not YAML
