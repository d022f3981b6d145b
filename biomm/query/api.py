"""The Python API: what `biomm.load(DIR)` returns.

    import biomm
    m = biomm.load("models/clin")
    emb = m.embed("cohort/")
    resp = m.query("cohort/", kind="similar", subject=emb.subject_ids[0], k=5)
"""
from __future__ import annotations

from pathlib import Path

from biomm.model.bundle import LoadedModel
from biomm.query.engine import QueryEngine
from biomm.schema import QueryRequest, QueryResponse


class Model(LoadedModel):
    """An exported model that embeds cohorts (`embed`) and answers questions about them (`query`)."""

    def __init__(self, folder: str | Path):
        super().__init__(folder)
        self.engine: QueryEngine | None = None  # over one cohort at a time: an engine holds its embeddings

    def query(self, cohort: str | Path, request: QueryRequest | None = None, **fields) -> QueryResponse:
        """Ask this model about a cohort: `m.query("cohort/", kind="task", subject=..., task=...)`, or pass a
        QueryRequest. The query engine (embeddings, indexes) is built once per cohort and kept."""
        cohort = Path(cohort).resolve()
        if self.engine is None or self.engine.cohort != cohort:
            self.engine = None  # let the previous cohort's embeddings go before embedding the next one
            self.engine = QueryEngine(self, cohort)
        return self.engine.query(request if request is not None else QueryRequest(**fields))


def load(folder: str | Path) -> Model:
    """Open an exported model: `m = biomm.load(dir)`."""
    return Model(folder)
