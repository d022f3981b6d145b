"""The evidence behind an answer: the subject's events before the prediction time, its most similar
subjects, each modality's occlusion attribution, and the labels of similar cells."""
from __future__ import annotations

import threading

import numpy as np

from biomm.data.ehr import EhrEvents, day_to_iso
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


def event_attributions(loaded: LoadedModel, dm, subject: str, prediction_time: float, head,
                       displays: dict[str, str], k: int) -> tuple[list[EventEvidence], list[float]] | None:
    """The `k` events (at or before `prediction_time`) with the largest gradient x input attribution to the task
    head's logit, highest first, and their attributions; None where the model reads no events or its EHR
    encoder is frozen (no gradient: the caller falls back to the most recent events).

    Attribution of event i: sum over its embedding's features of d(logit)/d(e_i) * e_i, where e_i is the event's
    input vector (code + value + time). It reflects what the model and the head use, not recency."""
    import torch

    events = dm.events
    adapter = loaded.model.adapters["ehr"] if "ehr" in loaded.model.adapters else None
    if events is None or adapter is None or subject not in events or adapter.frozen:
        return None
    batch = dm.collate([Sample(subject, prediction_time)])
    captured: dict[str, torch.Tensor] = {}
    me = threading.get_ident()

    def keep(module, inputs, output):  # the event vectors become a leaf whose gradient we read
        if threading.get_ident() != me:  # the model is shared: another query's forward passes through untouched
            return None
        captured["e"] = output.detach().requires_grad_(True)
        return captured["e"]

    handle = adapter.encoder["embed"].register_forward_hook(keep)
    try:
        with torch.enable_grad():
            out = loaded.model(batch)
            emb = out.fused if head.source == "fused" else out.pooled[head.source]
            x = emb.float()
            if head.source != "fused":
                x = torch.cat([x * out.present[head.source][:, None], out.present[head.source][:, None].float()], 1)
            logit = ((x - torch.as_tensor(head.mean, dtype=torch.float32)) / torch.as_tensor(head.scale, dtype=torch.float32)
                     ) @ torch.as_tensor(head.coef, dtype=torch.float32) + head.intercept
            grad, = torch.autograd.grad(logit.sum(), captured["e"], allow_unused=True)
    finally:
        handle.remove()
    if grad is None:
        return None
    attr = (grad * captured["e"]).sum(-1)[0].detach().numpy()
    idx, _ = events.context(subject, dm.sources["ehr"].max_events, prediction_time)
    n = min(len(idx), len(attr))
    idx, attr = idx[len(idx) - n:], attr[:n]
    order = np.argsort(-attr, kind="stable")[:k]
    evidence = []
    for j in order:
        i = int(idx[j])
        code = str(events.codes_text[i])
        evidence.append(EventEvidence(code=code, time=day_to_iso(float(events.times[i])),
                                      value=float(events.values[i]) if events.value_mask[i] else None,
                                      description=displays.get(code)))
    return evidence, [round(float(attr[j]), 5) for j in order]


FINDING_PREFIX = "SNOMED/"
"""Codes of diagnoses and procedures (what two similar patients are said to share)."""


def code_frequency(events: EhrEvents, prefix: str = FINDING_PREFIX) -> dict[str, int]:
    """Subjects with each code of `prefix` (computed once per cohort state: one pass over the events)."""
    codes = events.codes_text
    pick = np.flatnonzero(np.char.startswith(codes.astype(str), prefix)) if len(codes) else np.zeros(0, int)
    owner = np.zeros(len(codes), dtype=np.int64)
    for i, (s, e) in enumerate(events.subjects.values()):
        owner[s:e] = i
    pairs = set(zip(owner[pick].tolist(), codes[pick].tolist()))
    out: dict[str, int] = {}
    for _, code in pairs:
        out[code] = out.get(code, 0) + 1
    return out


def shared_findings(events: EhrEvents | None, displays: dict[str, str], frequency: dict[str, int], subject: str,
                    others: list[str], k: int = 3, prefix: str = FINDING_PREFIX) -> dict[str, list[str]]:
    """Per subject of `others`: the `k` diagnoses / procedures it shares with `subject`, the rarest in the
    cohort (`frequency`: subjects per code) first, by description."""
    if events is None or subject not in events:
        return {}

    def codes(sid: str) -> set[str]:
        s, e = events.subjects[sid]
        return {c for c in events.codes_text[s:e].tolist() if c.startswith(prefix)}

    mine = codes(subject)
    return {o: [displays.get(c, c) for c in sorted(mine & codes(o), key=lambda c: (frequency.get(c, 0), c))[:k]]
            for o in others if o in events}


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
