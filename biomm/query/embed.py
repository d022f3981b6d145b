"""`biomm embed`: embeddings per subject and modality into the store, and the index beside the model."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from biomm.bundle import load
from biomm.query.engine import INDEX_DIR, build_indexes


def cohort_key(cohort: str | Path) -> str:
    return hashlib.sha256(str(Path(cohort).resolve()).encode()).hexdigest()[:12]


def write_cell_embeddings(loaded, cohort: str | Path, emb) -> str:
    """Fused cell embeddings back into the cohort's AnnData: obsm["X_biomm"] (rows matched by subject id)."""
    from biomm.ingest.omics import write_back

    h5ad = loaded.datamodule(cohort).h5ad
    write_back(h5ad, emb.fused, key="X_biomm", cell_ids=emb.subject_ids)
    return str(h5ad)


def embed_cohort(model: str | Path, cohort: str | Path) -> dict[str, Any]:
    loaded = load(model)
    emb = loaded.embed(cohort)
    store = Path(cohort) / "embeddings" / f"{loaded.config.name}.npz"
    store.parent.mkdir(parents=True, exist_ok=True)
    tmp = store.with_name(f".{store.stem}.tmp.npz")
    emb.save(tmp)
    tmp.replace(store)
    index_dir = loaded.folder / INDEX_DIR / cohort_key(cohort)
    indexes = build_indexes(emb)
    for name, index in indexes.items():
        index.save(index_dir / name)
    info: dict[str, Any] = {"subjects": len(emb.subject_ids), "embeddings": str(store), "index": str(index_dir),
                            "backend": indexes["fused"].backend, "indexes": sorted(indexes)}
    if loaded.kind == "cells":
        info["anndata"] = write_cell_embeddings(loaded, cohort, emb)
    return info
