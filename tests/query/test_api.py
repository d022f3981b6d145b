"""The Python API's shape: `biomm.load` gives a model that embeds and queries; the engine dispatches every
query kind; the model bundle (layer `model`) imports nothing from the layers above it."""
from __future__ import annotations

import ast
from pathlib import Path
from typing import get_args

import biomm
from biomm.query.handlers import HANDLERS
from biomm.schema import QueryKind

PROJECT = Path(__file__).resolve().parents[2]


def test_every_query_kind_has_a_handler():
    assert set(HANDLERS) == set(get_args(QueryKind))
    assert all(callable(h) for h in HANDLERS.values())


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
    return out


def test_the_model_bundle_imports_nothing_from_query_or_heads():
    imported = _imports(PROJECT / "biomm" / "model" / "bundle.py")
    above = [m for m in imported if m.split(".")[:2] in (["biomm", "query"], ["biomm", "heads"], ["biomm", "train"])]
    assert not above, f"biomm/model/bundle.py imports {above}"


def test_the_query_schema_module_re_exports_the_contract():
    import biomm.query.schema as old
    import biomm.schema as new

    assert old.QueryRequest is new.QueryRequest and set(old.__all__) == set(new.__all__)


def test_load_gives_a_model_that_queries(clinical_model, query_cohort):
    from biomm.query.api import Model
    from biomm.query.engine import QueryEngine

    m = biomm.load(clinical_model)
    assert isinstance(m, Model) and m.engine is None
    subject = m.embed(query_cohort).subject_ids[0]
    resp = m.query(query_cohort, kind="similar", subject=subject, k=3)
    assert resp.kind == "similar" and len(resp.evidence.similar_subjects) == 3
    engine = m.engine
    assert isinstance(engine, QueryEngine) and set(engine.handlers) == set(get_args(QueryKind))
    m.query(query_cohort, kind="similar", subject=subject, k=2)
    assert m.engine is engine  # built once per cohort, kept on the model
