"""`biomm embed`: embeddings per subject and modality into the store, and the index beside the model."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from biomm.model.bundle import Embeddings, LoadedModel, load
from biomm.query.index import build_indexes, index_dir


def embeddings_path(loaded: LoadedModel, cohort: str | Path) -> Path:
    """Where `biomm embed` stores a model's embeddings of a cohort: `<cohort>/embeddings/<model name>.npz`."""
    return Path(cohort) / "embeddings" / f"{loaded.config.name}.npz"


def write_cell_embeddings(loaded: LoadedModel, cohort: str | Path, emb: Embeddings) -> str:
    """Fused cell embeddings back into the cohort's AnnData: obsm["X_biomm"] (rows matched by subject id)."""
    from biomm.ingest.omics.writeback import write_back

    h5ad = loaded.datamodule(cohort).h5ad
    write_back(h5ad, emb.fused, key="X_biomm", cell_ids=emb.subject_ids)
    return str(h5ad)


def embed_cohort(model: str | Path, cohort: str | Path) -> dict[str, Any]:
    """Embed every subject, save the embeddings (atomically) and the indexes; returns what was written."""
    loaded = load(model)
    emb = loaded.embed(cohort)
    store = embeddings_path(loaded, cohort)
    store.parent.mkdir(parents=True, exist_ok=True)
    tmp = store.with_name(f".{store.stem}.tmp.npz")
    emb.save(tmp)
    tmp.replace(store)
    folder = index_dir(loaded.folder, cohort)
    indexes = build_indexes(emb)
    for name, index in indexes.items():
        index.save(folder / name)
    info: dict[str, Any] = {"subjects": len(emb.subject_ids), "embeddings": str(store), "index": str(folder),
                            "backend": indexes["fused"].backend, "indexes": sorted(indexes)}
    if loaded.kind == "cells":
        info["anndata"] = write_cell_embeddings(loaded, cohort, emb)
    return info
