"""biomm: multimodal biomedical foundation models.

    import biomm
    m = biomm.load("models/clinical")      # an exported model
    emb = m.embed("cohort/")                # per-subject fused and per-modality embeddings
    resp = m.query("cohort/", kind="similar", subject=emb.subject_ids[0], k=5)
"""
from __future__ import annotations

__version__ = "0.1.0"


def load(folder):
    """Open a model folder written by `biomm export`: a `biomm.query.api.Model` (`.embed`, `.query`)."""
    from biomm.query.api import load as load_model

    return load_model(folder)


__all__ = ["load", "__version__"]
