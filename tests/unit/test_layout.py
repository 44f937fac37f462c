"""The package layout keeps its promises: no import cycles, and pure packages stay pure."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "haagent"

# Pure logic: may import only the standard library's pure parts and each other.
PURE = ("haagent.cluster", "haagent.decide", "haagent.agent.core", "haagent.fence.state")
IO_MODULES = {
    "grpc",
    "pyetcd",
    "pyroute2",
    "scapy",
    "subprocess",
    "threading",
    "select",
    "fcntl",
    "signal",
    "queue",
    "haagent.store",
    "haagent.net",
    "haagent.health.monitor",
    "haagent.health.checks",
    "haagent.agent.loop",
}


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> set[str]:
    """Modules imported at module level (not inside functions or TYPE_CHECKING blocks)."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for sub in [node] if not isinstance(node, ast.Try) else node.body:
            if isinstance(sub, ast.Import):
                found.update(a.name for a in sub.names)
            elif isinstance(sub, ast.ImportFrom) and sub.module and sub.level == 0:
                found.add(sub.module)
                found.update(f"{sub.module}.{a.name}" for a in sub.names)
    return found


MODULES = {module_name(p): p for p in ROOT.rglob("*.py")}


def graph() -> dict[str, set[str]]:
    g: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        deps = {d for d in imports(path) if d in MODULES and d != name}
        # Importing a.b.c runs a/__init__ and a/b/__init__ too, except the packages the
        # importing module itself sits in: those are initialising already.
        own = {name.rsplit(".", i)[0] for i in range(1, name.count(".") + 1)}
        for d in list(deps):
            parts = d.split(".")
            deps.update(p for i in range(2, len(parts)) if (p := ".".join(parts[:i])) in MODULES)
        g[name] = deps - {name} - own
    return g


def test_no_import_cycles():
    g = graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for d in sorted(g[n]):
            if state.get(d) == 1:
                cycle = [*stack[stack.index(d) :], d]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if d not in state:
                visit(d)
        stack.pop()
        state[n] = 2

    for n in sorted(g):
        if n not in state:
            visit(n)


@pytest.mark.parametrize("pure", PURE)
def test_pure_modules_import_no_io(pure):
    g = graph()
    seen: set[str] = set()
    todo = [n for n in MODULES if n == pure or n.startswith(pure + ".")]
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        seen.add(n)
        direct = imports(MODULES[n])
        bad = {i for i in direct if any(i == m or i.startswith(m + ".") for m in IO_MODULES)}
        assert not bad, f"{n} (reached from {pure}) imports {sorted(bad)}"
        todo.extend(d for d in g[n] if d.startswith("haagent."))
