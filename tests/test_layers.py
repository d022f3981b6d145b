"""The import graph of `biomm`, read with ast (imports inside functions count): no cycle, and no import
from a lower layer to a higher one. The layer order is written down here, once."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "biomm"

# Bottom to top. A module may import modules of its own layer or of a lower one.
LAYERS: list[tuple[str, ...]] = [
    ("biomm.types", "biomm.config", "biomm.modalities", "biomm.schema", "biomm.resources"),
    ("biomm.vocab",),
    ("biomm.store",),
    ("biomm.ingest",),
    ("biomm.data",),
    ("biomm.nn",),
    ("biomm.adapters",),
    ("biomm.fusion",),
    ("biomm.objectives",),
    ("biomm.model",),
    ("biomm.train",),
    ("biomm.heads",),
    ("biomm.query",),
    ("biomm.eval", "biomm.serve", "biomm.bench"),
    ("biomm.pipeline",),
    ("biomm.commands",),
    ("biomm.cli", "biomm.__main__"),
    ("biomm",),  # the package itself: `biomm.load`
]


def modules() -> dict[str, Path]:
    out = {}
    for p in PACKAGE.rglob("*.py"):
        rel = p.relative_to(PACKAGE.parent).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        out[".".join(parts)] = p
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Modules of `biomm` that `name` imports (resolved to the deepest known module), parents excluded."""
    out: set[str] = set()
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".") if is_pkg else name.split(".")[:-1]
                parts = parts[:len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name and not name.startswith(t + "."):
                out.add(t)
    return out


def layer_of(module: str) -> int:
    best, rank = -1, None
    for i, names in enumerate(LAYERS):
        for prefix in names:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), i
    assert rank is not None, f"{module} is in no layer: add it to LAYERS"
    return rank


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    known = modules()
    return {m: imports(m, p, known) for m, p in known.items()}


def test_no_import_points_up_the_stack(graph):
    upward = sorted(f"{m} (layer {layer_of(m)}) imports {t} (layer {layer_of(t)})"
                    for m, targets in graph.items() for t in targets if layer_of(t) > layer_of(m))
    assert not upward, "imports that point up the stack:\n" + "\n".join(upward)


def test_import_graph_has_no_cycle(graph):
    index, low, stack, on, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_checker_sees_a_lazy_upward_import(tmp_path):
    """The walk reads imports inside functions too (the cycle of the old layout hid behind them)."""
    mod = tmp_path / "m.py"
    mod.write_text("def f():\n    from biomm.query.engine import QueryEngine\n")
    known = {"biomm.query.engine": Path("x"), "biomm.store.m": mod}
    assert imports("biomm.store.m", mod, known) == {"biomm.query.engine"}
    assert layer_of("biomm.query.engine") > layer_of("biomm.store.m")
