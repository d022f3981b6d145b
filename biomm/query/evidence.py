"""The evidence behind an answer: the subject's events before the prediction time, its most similar
subjects, each modality's occlusion attribution, and the labels of similar cells."""
from __future__ import annotations

import numpy as np

from biomm.data.ehr import EhrEvents
from biomm.data.samples import Sample
from biomm.heads.cells.annotation import label_prompts
from biomm.heads.clinical import SampleEmbeddings, embed_batch
from biomm.model.bundle import Embeddings, LoadedModel
from biomm.query.index import VectorIndex
from biomm.schema import EventEvidence, ModalityAttribution, Neighbor

BUILTIN_DISPLAYS = {"MEDS_BIRTH": "Birth", "MEDS_DEATH": "Death"}
"""Readable names of the MEDS codes no source vocabulary describes."""


def event_evidence(events: EhrEvents | None, displays: dict[str, str], subject: str, before: float | None,
                   k: int) -> list[EventEvidence]:
    """The subject's `k` most recent events at or before `before` (days; None: all), newest first."""
    if events is None or subject not in events:
        return []
    return [EventEvidence(code=e["code"], time=e["time"], value=e["value_z"], description=displays.get(e["code"]))
            for e in events.top_events(subject, before, k)]


def neighbour_evidence(index: VectorIndex, subject: str, k: int) -> list[Neighbor]:
    """The `k` subjects most similar to `subject` in `index`, best first (cosine, 4 decimals)."""
    return [Neighbor(subject_id=s, score=round(score, 4)) for s, score in index.neighbours(subject, k)]


def occlusion_embeddings(loaded: LoadedModel, dm, subject: str, prediction_time: float
                         ) -> tuple[SampleEmbeddings, str | None]:
    """Embeddings [M + 1, D] of the subject at `prediction_time`: row 0 with every modality, row i with the
    model's i-th modality left out; and the image series the model saw (None without one)."""
    mods = loaded.modalities
    batch = dm.collate([Sample(subject, prediction_time)] * (len(mods) + 1))
    for i, m in enumerate(mods, 1):
        if m in batch.modalities:
            batch.modalities[m].present[i] = False
    emb = embed_batch(loaded.model, batch)
    return emb, (batch.extras.get("imaging_series") or [None])[0]


def occlusion_attributions(modalities: list[str], emb: SampleEmbeddings, scores: np.ndarray) -> list[ModalityAttribution]:
    """Per modality: present or not, and the change of the score [M + 1] (row 0: everything; row i: modality
    i left out) when it is left out."""
    out = []
    for i, m in enumerate(modalities, 1):
        present = bool(emb.present[m][0]) if m in emb.present else False
        out.append(ModalityAttribution(modality=m, present=present,
                                       attribution=round(float(scores[0]) - float(scores[i]), 4) if present else None))
    return out


def cell_labels(loaded: LoadedModel, embeddings: Embeddings, subjects: list[str]) -> dict[str, str]:
    """The cells' own labels (the model's trained label column), by category name; {} for a model without one."""
    key = loaded.config.data.label_key
    if not key or key not in embeddings.labels:
        return {}
    key, categories, _ = label_prompts(loaded)
    codes = embeddings.labels.get(key)
    row = {s: i for i, s in enumerate(embeddings.subject_ids)}
    out = {}
    for s in subjects:
        code = codes[row[s]] if codes is not None and s in row else float("nan")
        if not np.isnan(code) and 0 <= int(code) < len(categories):
            out[s] = categories[int(code)]
    return out
