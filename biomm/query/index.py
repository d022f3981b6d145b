"""Nearest-neighbour index over embeddings: faiss where installed (IVF for large sets), with an
exact numpy fallback that gives the same answers for the flat case."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from biomm.model.bundle import Embeddings

try:  # optional import, MONAI-style: biomm runs without faiss, only slower at scale
    import faiss  # type: ignore
except ImportError:  # pragma: no cover - exercised where faiss is absent
    faiss = None

INDEX_DIR = "index"
"""Indexes of a cohort live beside the model: `<model>/index/<cohort key>/<fused | modality>/`."""


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class VectorIndex:
    """Cosine-similarity search. `backend`: "faiss-flat" (exact), "faiss-ivf" (approximate,
    for >= 50k vectors), "exact" (numpy) or "auto". With `center`, vectors are compared after
    removing the set's mean: learned embeddings share a large common direction that otherwise
    makes every pair look alike (all cosines near 1)."""

    def __init__(self, vectors: np.ndarray, ids: list[str], backend: str = "auto", nprobe: int = 16,
                 center: bool = False):
        if len(vectors) != len(ids):
            raise ValueError(f"{len(vectors)} vectors for {len(ids)} ids")
        self.ids = list(ids)
        vectors = np.asarray(vectors, dtype=np.float32)
        self.mean = vectors.mean(0) if center and len(vectors) > 1 else np.zeros(vectors.shape[1], np.float32)
        self.vectors = _normalise(vectors - self.mean)
        if backend == "auto":
            backend = "exact" if faiss is None else ("faiss-ivf" if len(ids) >= 50_000 else "faiss-flat")
        if backend.startswith("faiss") and faiss is None:
            raise ImportError("faiss is not installed: use backend='exact'")
        self.backend = backend
        self._index = None
        d = self.vectors.shape[1]
        if backend == "faiss-flat":
            self._index = faiss.IndexFlatIP(d)
            self._index.add(self.vectors)
        elif backend == "faiss-ivf":
            nlist = int(max(16, min(4096, np.sqrt(len(ids)) * 4)))
            quantizer = faiss.IndexFlatIP(d)
            self._index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
            rng = np.random.default_rng(0)
            train = self.vectors[rng.choice(len(ids), min(len(ids), nlist * 64), replace=False)]
            self._index.train(train)
            self._index.add(self.vectors)
            self._index.nprobe = nprobe
        self._row = {sid: i for i, sid in enumerate(self.ids)}

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, subject_id: object) -> bool:
        return subject_id in self._row

    def vector(self, subject_id: str) -> np.ndarray:
        """The stored (centered, unit-norm) vector [D] of a subject."""
        return self.vectors[self._row[subject_id]]

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores [Q, k], row indices [Q, k]) of the k most similar vectors per query."""
        q = _normalise(np.atleast_2d(queries))  # stored rows and `vector()` are centered already
        k = min(k, len(self.ids))
        if self._index is not None:
            return self._index.search(q, k)
        sims = q @ self.vectors.T
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        order = np.take_along_axis(sims, top, 1).argsort(1)[:, ::-1]
        rows = np.take_along_axis(top, order, 1)
        return np.take_along_axis(sims, rows, 1), rows

    def neighbours(self, subject_id: str, k: int) -> list[tuple[str, float]]:
        """The k most similar other subjects."""
        scores, rows = self.search(self.vector(subject_id)[None], k + 1)
        out = [(self.ids[r], float(s)) for s, r in zip(scores[0], rows[0]) if r >= 0 and self.ids[r] != subject_id]
        return out[:k]

    def query_vector(self, raw: np.ndarray) -> np.ndarray:
        """A new embedding in this index's space (centered like the stored ones)."""
        return np.asarray(raw, dtype=np.float32) - self.mean

    def save(self, folder: str | Path) -> None:
        """Vectors, mean and ids (and the faiss index, when there is one) into `folder`."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / "vectors.npy", self.vectors)
        np.save(folder / "mean.npy", self.mean)
        (folder / "index.json").write_text(json.dumps({"ids": self.ids, "backend": self.backend}))
        if self._index is not None:
            faiss.write_index(self._index, str(folder / "index.faiss"))

    @classmethod
    def load(cls, folder: str | Path) -> "VectorIndex":
        """Read what `save` wrote (exact search when faiss is absent)."""
        folder = Path(folder)
        meta = json.loads((folder / "index.json").read_text())
        obj = cls.__new__(cls)
        obj.ids, obj.backend = meta["ids"], meta["backend"]
        obj.vectors = np.load(folder / "vectors.npy")
        obj.mean = np.load(folder / "mean.npy") if (folder / "mean.npy").exists() else np.zeros(obj.vectors.shape[1], np.float32)
        obj._index = faiss.read_index(str(folder / "index.faiss")) if (folder / "index.faiss").exists() and faiss else None
        if obj._index is None:
            obj.backend = "exact"
        obj._row = {sid: i for i, sid in enumerate(obj.ids)}
        return obj


def cohort_key(cohort: str | Path) -> str:
    """A short stable key of a cohort folder (its resolved path), naming its index folder."""
    return hashlib.sha256(str(Path(cohort).resolve()).encode()).hexdigest()[:12]


def index_dir(model_folder: str | Path, cohort: str | Path) -> Path:
    """Where the indexes of `cohort` over the model in `model_folder` are saved."""
    return Path(model_folder) / INDEX_DIR / cohort_key(cohort)


def build_indexes(emb: Embeddings, backend: str = "auto") -> dict[str, VectorIndex]:
    """One index on the fused embedding (every subject) and one per modality (subjects that have it),
    each centered on its cohort's mean (see VectorIndex)."""
    out = {"fused": VectorIndex(emb.fused, emb.subject_ids, backend, center=True)}
    for m, vectors in emb.modalities.items():
        rows = np.flatnonzero(emb.present[m])
        if len(rows) >= 2:
            out[m] = VectorIndex(vectors[rows], [emb.subject_ids[i] for i in rows], backend, center=True)
    return out
