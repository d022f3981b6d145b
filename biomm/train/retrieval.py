"""Cross-modal retrieval recall@k, chunked so memory grows linearly with the number of subjects."""
from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F


def recall_at_k(queries: torch.Tensor, candidates: torch.Tensor, ks: list[int], chunk: int = 1024) -> dict[int, float]:
    """Row i of `queries` should retrieve row i of `candidates` (cosine similarity)."""
    q = F.normalize(queries.float(), dim=-1)
    c = F.normalize(candidates.float(), dim=-1)
    n = q.shape[0]
    hits = {k: 0 for k in ks}
    for a in range(0, n, chunk):
        sim = q[a:a + chunk] @ c.T
        true = sim[torch.arange(sim.shape[0]), torch.arange(a, a + sim.shape[0])]
        rank = (sim > true[:, None]).sum(1)  # 0 = retrieved first
        for k in ks:
            hits[k] += int((rank < k).sum())
    return {k: hits[k] / max(n, 1) for k in ks}


def pairwise_recall(embeddings: dict[str, torch.Tensor], present: dict[str, torch.Tensor], ks: list[int],
                    chunk: int = 1024) -> dict[str, float]:
    """recall@k between every pair of modalities, over the subjects that have both, both directions averaged."""
    out: dict[str, float] = {}
    for a, b in itertools.combinations(sorted(embeddings), 2):
        both = present[a] & present[b]
        n = int(both.sum())
        if n < 2:
            continue
        ea, eb = embeddings[a][both], embeddings[b][both]
        ab, ba = recall_at_k(ea, eb, ks, chunk), recall_at_k(eb, ea, ks, chunk)
        for k in ks:
            out[f"recall@{k}/{a}-{b}"] = (ab[k] + ba[k]) / 2
        out[f"pairs/{a}-{b}"] = float(n)
    return out
