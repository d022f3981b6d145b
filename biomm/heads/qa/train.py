"""Stage 2 (LLaVA recipe) on an exported clinical model: the encoders and fusion backbone stay frozen, so each
patient's fused tokens (as of its last record) are computed once; the projector, the LM, its markers and output
heads train on the training patients' questions, in the training wordings (the one head training loop,
biomm.train.heads). The evaluation (`biomm.heads.qa.evaluate`) runs on held-out patients and held-out wordings."""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from biomm.config import ConfigError
from biomm.heads.qa.config import QAConfig
from biomm.heads.qa.module import HEAD_DIR, Example, QAHead
from biomm.heads.qa.questions import FREE_TEXT_TYPES, KIND_WORDS, NOT_RECORDED, QAPair, QAStore
from biomm.heads.qa.evaluate import evaluate_head
from biomm.heads.qa.reader import (cohort_retriever, fused_tokens, loaded_model, open_store, prepare_pairs,
                                   split_subjects, stack, training_pairs)
from biomm.train.heads import fit_head
from biomm.train.precision import autocast

Key = tuple[str, float]
LOSS_PROBE = 512  # training examples the loss is measured on before and after training


def step_batches(n: int, batch_size: int, steps: int, seed: int) -> list[list[int]]:
    """Row indices of each training step's batch: seeded permutations of `n` rows, a new one when exhausted."""
    gen = torch.Generator().manual_seed(seed)
    order, cursor, out = torch.randperm(n, generator=gen).tolist(), 0, []
    for _ in range(steps):
        if cursor + batch_size > len(order):
            order, cursor = torch.randperm(n, generator=gen).tolist(), 0
        out.append(order[cursor:cursor + batch_size])
        cursor += batch_size
    return out


@torch.no_grad()
def mean_loss(head: QAHead, cache, examples: list[Example], precision: str, batch_size: int = 64) -> float:
    """Mean loss of the head over encoded examples."""
    head.eval()
    total, n = 0.0, 0
    for i in range(0, len(examples), batch_size):
        chunk = examples[i:i + batch_size]
        fused, mask = stack(cache, [e.key for e in chunk])
        with autocast(precision):
            total += float(head.loss(fused, mask, chunk)) * len(chunk)
        n += len(chunk)
    return total / max(n, 1)


def corpus(store: QAStore, pairs: list[QAPair]) -> list[str]:
    """Texts for the LM's vocabulary: the training questions, every code name and kind, the free-text answers."""
    names = [f"{kind} : {store.names.get(code, code.lower())}" for (code, _), kind in store.event_kinds.items()]
    fixed = [NOT_RECORDED, "yes", "no", "imaging : chest x-ray", *KIND_WORDS]
    return [p.question for p in pairs] + [p.answer for p in pairs if p.qtype in FREE_TEXT_TYPES] + names + fixed


def train_qa(model, cohort: str | Path, cfg: QAConfig, progress: bool = False) -> dict:
    """Train the QA head on the cohort's training patients, save it under `<model>/heads/qa/`, and evaluate it on
    the held-out patients and wordings (`biomm.heads.qa.evaluate`); returns (and saves) the metrics."""
    started = time.perf_counter()
    loaded = loaded_model(model)
    if loaded.kind != "patients":
        raise ConfigError(f"QA needs a patient model; {loaded.folder} is a '{loaded.kind}' model")
    store = open_store(cohort, cfg)
    pairs = training_pairs(store, cfg)
    if not pairs:
        raise ConfigError(f"cohort {cohort} gives no training QA pairs (no train-split subject with a record)")
    retriever = cohort_retriever(store)
    dm = loaded.datamodule(cohort)
    keys = sorted({(s, store.reference_time(s)) for split in ("train", "val", "test") for s in split_subjects(store, split)})
    cache = fused_tokens(loaded, dm, keys)
    torch.manual_seed(cfg.train.seed)  # seeds the head's initialisation and then its training (dropout)
    head = QAHead.build(cfg, corpus(store, pairs), loaded.model.config.d, loaded.model.projector, store.kinds)
    preps = prepare_pairs(head, store, retriever, pairs)
    examples = [p.example for p in preps]
    t = cfg.train
    probe = [examples[i] for i in step_batches(len(examples), min(LOSS_PROBE, len(examples)), 1, t.seed + 1)[0]]
    before = mean_loss(head, cache, probe, t.precision)
    batches = [[examples[i] for i in rows] for rows in step_batches(len(examples), t.batch_size, t.steps, t.seed)]

    def loss_fn(h: QAHead, chunk: list[Example]) -> torch.Tensor:
        fused, mask = stack(cache, [e.key for e in chunk])
        return h.loss(fused, mask, chunk)

    losses = fit_head(head, loss_fn, batches, lr=t.lr, weight_decay=t.weight_decay, seed=None, precision=t.precision,
                      gradient_clip_val=1.0, progress=progress, name="QA", hint="lower train.lr")
    after = mean_loss(head, cache, probe, t.precision)
    train_seconds = time.perf_counter() - started
    folder = head.save(loaded.folder / HEAD_DIR)
    retrieved = [p.example.pointer != -100 for p in preps]
    metrics = {
        "pairs": {"train": len(pairs)}, "steps": t.steps, "loss_before": before, "loss_after": after,
        "loss_probe": len(probe), "first_step_loss": losses[0], "last_step_loss": losses[-1],
        "train_retrieval_recall": sum(retrieved) / len(retrieved),
        "train_seconds": round(train_seconds, 1),
        "eval": evaluate_head(loaded, head, store, cohort, "test", cache=cache, dm=dm),
    }
    metrics["seconds"] = round(time.perf_counter() - started, 1)
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics
