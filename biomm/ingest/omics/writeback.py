"""Write-back: embeddings into `obsm` (default `X_biomm`) and predictions into `obs` of an AnnData or .h5ad file."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Mapping, Sequence

import anndata as ad
import h5py
import numpy as np
import pandas as pd

from biomm.store.atomic import atomic_path


def write_back(target: str | Path | ad.AnnData, embeddings: Any, key: str = "X_biomm",
               obs_columns: Mapping[str, Sequence] | None = None, cell_ids: Sequence[str] | None = None):
    """Put embeddings [n_cells, D] in `obsm[key]` and predictions in `obs` columns.

    `cell_ids` (obs names, or biomm subject ids) align rows given in another order. A path is
    rewritten atomically without loading X (obs and obsm are replaced in a copy, then renamed)."""
    emb = np.asarray(embeddings.detach().cpu() if hasattr(embeddings, "detach") else embeddings, dtype=np.float32)
    cols = {k: np.asarray(v) for k, v in (obs_columns or {}).items()}

    def align(obs: pd.DataFrame) -> np.ndarray | None:
        if cell_ids is None:
            return None
        ids = pd.Index([str(c) for c in cell_ids])
        keyed = obs["biomm_subject_id"] if "biomm_subject_id" in obs and ids[0].startswith("cell:") else obs.index
        pos = pd.Index(keyed.astype(str)).get_indexer(ids)
        if (pos < 0).any():
            raise ValueError(f"{int((pos < 0).sum())} cell ids not in the file (e.g. {ids[pos < 0][:3].tolist()})")
        return pos

    def place(obs: pd.DataFrame, arr: np.ndarray, what: str) -> np.ndarray:
        pos = align(obs)
        n = len(obs) if pos is None else len(pos)
        if len(arr) != n:
            raise ValueError(f"{what} has {len(arr)} rows but the data has {n} cells")
        if pos is None:
            return arr
        if len(pos) != len(obs):
            raise ValueError(f"{what}: cell_ids cover {len(pos)} of {len(obs)} cells; give every cell")
        out = np.empty_like(arr)
        out[pos] = arr
        return out

    if isinstance(target, ad.AnnData):
        target.obsm[key] = place(target.obs, emb, "embeddings")
        for k, v in cols.items():
            target.obs[k] = place(target.obs, v, k)
        return target
    path = Path(target)
    with atomic_path(path) as tmp:
        shutil.copyfile(path, tmp)
        with h5py.File(tmp, "r+") as f:
            obs = ad.io.read_elem(f["obs"])
            placed = place(obs, emb, "embeddings")
            for k, v in cols.items():
                obs[k] = place(obs, v, k)
            if cols:
                del f["obs"]
                ad.io.write_elem(f, "obs", obs)
            if "obsm" not in f:
                f.create_group("obsm")
            if key in f["obsm"]:
                del f["obsm"][key]
            ad.io.write_elem(f["obsm"], key, placed)
    return path
