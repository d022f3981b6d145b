"""`biomm embed`: embeddings per subject and modality into the store, and the index beside the model.

Incremental by default for clinical (patients) models: a sidecar `<model name>.json` records the model's
weights fingerprint and when the cohort was embedded; a later run re-embeds only the subjects that are new
or have a record written since, keeps the other rows, and rebuilds the index (cheap next to the model)."""
from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from biomm.model.bundle import Embeddings, LoadedModel, load
from biomm.query.index import build_indexes, index_dir
from biomm.store.atomic import sha256_file
from biomm.store.cohort import Cohort, utc_now


def embeddings_path(loaded: LoadedModel, cohort: str | Path) -> Path:
    """Where `biomm embed` stores a model's embeddings of a cohort: `<cohort>/embeddings/<model name>.npz`."""
    return Path(cohort) / "embeddings" / f"{loaded.config.name}.npz"


def write_cell_embeddings(loaded: LoadedModel, cohort: str | Path, emb: Embeddings) -> str:
    """Fused cell embeddings back into the cohort's AnnData: obsm["X_biomm"] (rows matched by subject id)."""
    from biomm.ingest.omics.writeback import write_back

    h5ad = loaded.datamodule(cohort).h5ad
    write_back(h5ad, emb.fused, key="X_biomm", cell_ids=emb.subject_ids)
    return str(h5ad)


def merge_embeddings(previous: Embeddings, fresh: Embeddings | None, keep: set[str]) -> Embeddings:
    """`previous` rows of subjects in `keep` that `fresh` does not replace, then every row of `fresh`."""
    new_ids = set(fresh.subject_ids) if fresh is not None else set()
    rows = [i for i, s in enumerate(previous.subject_ids) if s in keep and s not in new_ids]
    parts = [previous.subset(rows)] + ([fresh] if fresh is not None else [])
    cat = lambda get: {k: np.concatenate([get(p)[k] for p in parts]) for k in get(parts[0])}  # noqa: E731
    return Embeddings([s for p in parts for s in p.subject_ids], np.concatenate([p.fused for p in parts]),
                      cat(lambda p: p.modalities), cat(lambda p: p.present), cat(lambda p: p.labels))


def _changed(loaded: LoadedModel, cohort: str | Path, meta: dict, previous: Embeddings) -> tuple[set[str], list[str]]:
    """(the subjects the model reads now, those to embed again: new, or with a record written since)."""
    with Cohort(cohort, create=False, read_only=True) as c:
        current = c.subjects_with_any(loaded.modalities)
        changed = c.subjects_changed_since(datetime.fromisoformat(meta["embedded_at"]))
    return current, sorted((current - set(previous.subject_ids)) | (changed & current))


def embed_cohort(model: str | Path, cohort: str | Path, incremental: bool = True) -> dict[str, Any]:
    """Embed the cohort's subjects (only the new and changed ones when `incremental` and the saved embeddings
    come from the same weights), save the embeddings atomically and rebuild the indexes; returns what was done."""
    loaded = load(model)
    store = embeddings_path(loaded, cohort)
    meta_path = store.with_suffix(".json")
    fingerprint = sha256_file(loaded.folder / "model.safetensors")[:16]
    started = utc_now()  # records written while this runs count as changed next time
    emb, embedded = None, None
    if incremental and loaded.kind == "patients" and store.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        previous = Embeddings.load(store)
        if meta.get("model") == fingerprint:
            current, todo = _changed(loaded, cohort, meta, previous)
            fresh = loaded.embed_batches(loaded.datamodule(cohort, subjects=todo).loader("all")) if todo else None
            emb, embedded = merge_embeddings(previous, fresh, current), len(todo)
    if emb is None:
        emb = loaded.embed(cohort)
        embedded = len(emb.subject_ids)
    store.parent.mkdir(parents=True, exist_ok=True)
    tmp = store.with_name(f".{store.stem}.tmp.npz")
    emb.save(tmp)
    tmp.replace(store)
    meta_path.write_text(json.dumps({"model": fingerprint, "embedded_at": started.isoformat(),
                                     "subjects": len(emb.subject_ids)}))
    folder = index_dir(loaded.folder, cohort)
    indexes = build_indexes(emb)
    for name, index in indexes.items():
        index.save(folder / name)
    info: dict[str, Any] = {"subjects": len(emb.subject_ids), "embedded": embedded,
                            "reused": len(emb.subject_ids) - embedded, "embeddings": str(store), "index": str(folder),
                            "backend": indexes["fused"].backend, "indexes": sorted(indexes)}
    if loaded.kind == "cells":
        info["anndata"] = write_cell_embeddings(loaded, cohort, emb)
    return info
