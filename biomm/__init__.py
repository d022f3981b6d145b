"""biomm: multimodal biomedical foundation models.

    import biomm
    m = biomm.load("models/clinical")      # an exported model
    emb = m.embed("cohort/")                # per-subject fused and per-modality embeddings
"""
from __future__ import annotations

__version__ = "0.1.0"


def load(folder):
    """Open a model folder written by `biomm export` (see biomm.bundle.LoadedModel)."""
    from biomm.bundle import load as _load

    return _load(folder)


__all__ = ["load", "__version__"]
