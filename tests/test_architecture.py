"""The package's import graph: the arrows ``docs/architecture.md`` forbids fail here.

Every ``import`` in the source counts (module level or inside a function: a lazy import is still
an arrow), and importing ``muonflow.a.b`` also runs the ``__init__`` of ``muonflow`` and of
``muonflow.a``, so those count too. The graph is closed transitively before it is checked.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

#: (importer prefix, forbidden prefixes): the optimizer is the bottom of the research stack.
FORBIDDEN = {
    "muonflow.optim": ("muonflow.meanfield", "muonflow.dynamics", "muonflow.experiments",
                       "muonflow.training", "muonflow.distributed", "muonflow.report",
                       "muonflow.models"),
    "muonflow.polar": ("muonflow.optim", "muonflow.meanfield", "muonflow.dynamics",
                       "muonflow.distributed", "muonflow.experiments", "muonflow.training"),
    "muonflow.spectral": ("muonflow.optim", "muonflow.dynamics", "muonflow.meanfield"),
    "muonflow.experiments": ("muonflow.report",),
    "muonflow.models": ("muonflow.meanfield", "muonflow.dynamics", "muonflow.experiments"),
}  # fmt: skip


#: Edges allowed despite the table, each with its reason and its end: deprecation shims only.
ALLOWED_EDGES = {
    ("muonflow.models.moe", "muonflow.meanfield.moe"):
        "the deprecated alias models.moe.ExpertParticles (lazy, warns), for one release",
}  # fmt: skip


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node except those under ``if TYPE_CHECKING:`` (never run)."""
    out, todo = [], [tree]
    while todo:
        node = todo.pop()
        out.append(node)
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            todo += node.orelse
            continue
        todo += ast.iter_child_nodes(node)
    return out


def imports_of(path: Path) -> set[str]:
    """The muonflow modules ``path`` imports, absolute, with every package ``__init__`` they
    run (``muonflow.a.b`` -> ``muonflow``, ``muonflow.a``, ``muonflow.a.b``)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in _runtime_nodes(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from pkg import sub` may import the submodule pkg.sub
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        for t in targets:
            if any(name == a and (t == b or t.startswith(b + ".")) for a, b in ALLOWED_EDGES):
                continue
            parts = t.split(".")
            if parts[0] == "muonflow":
                out |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
    return out


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in (SRC / "muonflow").rglob("*.py")}
    edges = {m: {t for t in imports_of(p) if t in modules and t != m} for m, p in modules.items()}
    closed: dict[str, set[str]] = {}
    for m in edges:  # transitive closure, one search per module
        seen, todo = set(), list(edges[m])
        while todo:
            t = todo.pop()
            if t not in seen:
                seen.add(t)
                todo += edges[t]
        closed[m] = seen - {m}
    return closed


@pytest.mark.parametrize("importer", sorted(FORBIDDEN))
def test_forbidden_arrows(importer):
    g = graph()
    bad = sorted(
        (m, t)
        for m, reach in g.items()
        if m == importer or m.startswith(importer + ".")
        for t in reach
        if any(t == f or t.startswith(f + ".") for f in FORBIDDEN[importer])
    )
    assert not bad, f"forbidden imports (module -> what it reaches): {bad[:10]}"


def test_the_walk_sees_lazy_and_init_arrows():
    """The checker itself can fail: a lazy import inside a function and an ``__init__`` run by
    an import are both arrows (mutants: ignoring function bodies, ignoring parent packages)."""
    g = graph()
    # optim.plan imports .dtensor inside a function only
    assert "muonflow.optim.dtensor" in g["muonflow.optim.plan"]
    # training.tasks imports ..models, whose __init__ runs: muonflow.models is reached
    assert "muonflow.models" in g["muonflow.training.tasks"]
    assert "muonflow.optim" in g["muonflow.training.optimizers"]


def test_no_function_is_longer_than_100_lines():
    """Say each thing once, in pieces a reader can hold: no function in ``src/`` spans more than
    100 lines (decorators excluded, docstring included)."""
    long = []
    for path in (SRC / "muonflow").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                if length > 100:
                    long.append(f"{module_name(path)}.{node.name}: {length} lines")
    assert not long, long
