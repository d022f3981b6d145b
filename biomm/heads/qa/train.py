"""Stage 2 (LLaVA recipe) on an exported clinical model: the encoders and fusion backbone stay frozen, so each
patient's fused tokens at each reference time are computed once; the projector and the LM train on the
patient's own QA pairs (the one head training loop, biomm.train.heads). Evaluation: exact match / token F1
per question type on held-out (test) patients, next to the majority-answer baseline of the training split."""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from biomm.config import ConfigError
from biomm.data.samples import Sample
from biomm.heads.qa.config import QAConfig
from biomm.heads.qa.metrics import majority_answers, score
from biomm.heads.qa.module import HEAD_DIR, QAHead, load_qa_head
from biomm.heads.qa.questions import (NO_SBP, NO_XRAY, SBP_QUESTION, XRAY_QUESTION, QAPair, QAStore, clean_display,
                                      diagnosis_question, generate_pairs)
from biomm.model.bundle import LoadedModel, load
from biomm.train.heads import fit_head
from biomm.train.precision import autocast

Key = tuple[str, float]
Encoded = tuple[Key, list[int], list[int]]


def loaded_model(model: str | Path | LoadedModel) -> LoadedModel:
    """`model` itself when already loaded, else the model folder opened."""
    return model if isinstance(model, LoadedModel) else load(model)


def open_store(cohort: str | Path, cfg: QAConfig, conditions: dict[str, str] | None = None) -> QAStore:
    """The cohort's QA facts under a QA config (`conditions`: a trained head's diagnosis codes)."""
    q = cfg.questions
    return QAStore(cohort, q.condition_sources, q.xray_labels, conditions)


def split_pairs(store: QAStore, cfg: QAConfig) -> dict[str, list[QAPair]]:
    """QA pairs of the train, val and test subjects."""
    q = cfg.questions
    out = {}
    for split in ("train", "val", "test"):
        subjects = [s for s, sp in store.split_of.items() if sp == split]
        out[split] = generate_pairs(store, subjects, q.reference_times, q.diagnoses_per_subject, q.seed)
    return out


@torch.no_grad()
def fused_tokens(loaded, dm, keys: list[Key], batch_size: int = 32) -> dict[Key, tuple[torch.Tensor, torch.Tensor]]:
    """Each (subject, time)'s fused tokens [T, D] and mask [T] from the frozen clinical model."""
    out = {}
    loaded.model.eval()
    for i in range(0, len(keys), batch_size):
        chunk = keys[i:i + batch_size]
        res = loaded.model(dm.collate([Sample(s, t) for s, t in chunk]))
        for k, x, m in zip(chunk, res.fused_tokens.float(), res.fused_mask):
            out[k] = (x, m)
    return out


def _stack(cache, keys: list[Key]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.stack([cache[k][0] for k in keys]), torch.stack([cache[k][1] for k in keys])


def _encode(head: QAHead, pairs: list[QAPair]) -> list[Encoded]:
    return [((p.subject_id, p.time), head.prompt_ids(p.question), head.answer_ids(p.answer)) for p in pairs]


def _loss(head: QAHead, cache, chunk: list[Encoded]) -> torch.Tensor:
    fused, mask = _stack(cache, [k for k, _, _ in chunk])
    return head.loss(fused, mask, [p for _, p, _ in chunk], [a for _, _, a in chunk])


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
def mean_loss(head: QAHead, cache, encoded, precision: str, batch_size: int = 64) -> float:
    """Answer-token mean loss of the head over encoded pairs."""
    head.eval()
    total, n = 0.0, 0
    for i in range(0, len(encoded), batch_size):
        chunk = encoded[i:i + batch_size]
        fused, mask = _stack(cache, [k for k, _, _ in chunk])
        with autocast(precision):
            loss = head.loss(fused, mask, [p for _, p, _ in chunk], [a for _, _, a in chunk])
        tokens = sum(len(a) for _, _, a in chunk)
        total, n = total + float(loss) * tokens, n + tokens
    return total / max(n, 1)


@torch.no_grad()
def predict(head: QAHead, cache, pairs: list[QAPair], precision: str, batch_size: int = 64) -> list[str]:
    """Greedy answers, batched by prompt length."""
    head.eval()
    prompts = [head.prompt_ids(p.question) for p in pairs]
    preds: list[str] = [""] * len(pairs)
    by_len: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        by_len.setdefault(len(p), []).append(i)
    for idx in by_len.values():
        for j in range(0, len(idx), batch_size):
            chunk = idx[j:j + batch_size]
            fused, mask = _stack(cache, [(pairs[i].subject_id, pairs[i].time) for i in chunk])
            with autocast(precision):
                answers = head.generate(fused, mask, [prompts[i] for i in chunk], head.cfg.train.max_answer_tokens)
            for i, a in zip(chunk, answers):
                preds[i] = a
    return preds


def evaluate_pairs(head: QAHead, cache, train: list[QAPair], held_out: list[QAPair]) -> dict:
    """EM / token F1 per question type of the model, of the training split's majority answer per type (`baseline`)
    and per question text (`baseline_question`: what a model that ignores the patient could learn)."""
    if not held_out:
        raise ConfigError("no held-out QA pairs to evaluate (the split has no subject with events)")
    preds = predict(head, cache, held_out, head.cfg.train.precision)
    majority = majority_answers([p.qtype for p in train], [p.answer for p in train])
    per_question = majority_answers([p.question for p in train], [p.answer for p in train])
    qtypes, golds = [p.qtype for p in held_out], [p.answer for p in held_out]
    return {"n": len(held_out), "model": score(qtypes, preds, golds),
            "baseline": score(qtypes, [majority.get(q, "") for q in qtypes], golds),
            "baseline_question": score(qtypes, [per_question.get(p.question, majority.get(p.qtype, "")) for p in held_out], golds),
            "baseline_answers": majority}


def corpus(store: QAStore, pairs: list[QAPair]) -> list[str]:
    """Texts for the LM's vocabulary: the training pairs, every question template and topic, the no-record answers."""
    topics = [diagnosis_question(clean_display(store.describe(c))) for c in sorted(store.diagnosis_codes) if store.describe(c)]
    fixed = [SBP_QUESTION, XRAY_QUESTION, NO_SBP, NO_XRAY, "yes", "no", "mm[Hg]"]
    return [t for p in pairs for t in (p.question, p.answer)] + topics + fixed


def train_qa(model, cohort: str | Path, cfg: QAConfig, progress: bool = False) -> dict:
    """Train the QA head on the cohort's training patients, save it under `<model>/heads/qa/`, evaluate on test."""
    started = time.perf_counter()
    loaded = loaded_model(model)
    if loaded.kind != "patients":
        raise ConfigError(f"QA needs a patient model; {loaded.folder} is a '{loaded.kind}' model")
    store = open_store(cohort, cfg)
    pairs = split_pairs(store, cfg)
    if not pairs["train"]:
        raise ConfigError(f"cohort {cohort} gives no training QA pairs (no train-split subject with events)")
    dm = loaded.datamodule(cohort)
    keys = sorted({(p.subject_id, p.time) for ps in pairs.values() for p in ps})
    cache = fused_tokens(loaded, dm, keys)
    torch.manual_seed(cfg.train.seed)  # seeds the head's initialisation and then its training (dropout)
    head = QAHead.build(cfg, corpus(store, pairs["train"]), loaded.model.config.d, loaded.model.projector,
                        store.conditions)
    train_enc, test_enc = _encode(head, pairs["train"]), _encode(head, pairs["test"])
    t = cfg.train
    before = {"train": mean_loss(head, cache, train_enc, t.precision), "test": mean_loss(head, cache, test_enc, t.precision)}
    batches = [[train_enc[i] for i in rows] for rows in step_batches(len(train_enc), t.batch_size, t.steps, t.seed)]
    losses = fit_head(head, lambda h, chunk: _loss(h, cache, chunk), batches, lr=t.lr, weight_decay=t.weight_decay,
                      seed=None, precision=t.precision, gradient_clip_val=1.0, progress=progress, name="QA",
                      hint="lower train.lr")
    after = {"train": mean_loss(head, cache, train_enc, t.precision), "test": mean_loss(head, cache, test_enc, t.precision)}
    folder = head.save(loaded.folder / HEAD_DIR)
    metrics = {
        "pairs": {s: len(p) for s, p in pairs.items()},
        "steps": t.steps, "loss_before": before, "loss_after": after,
        "first_step_loss": losses[0], "last_step_loss": losses[-1],
        "eval": evaluate_pairs(head, cache, pairs["train"], pairs["test"]),
        "seconds": round(time.perf_counter() - started, 1),
    }
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def evaluate_qa(model, cohort: str | Path, split: str = "test", xray_labels: str | None = None) -> dict:
    """Evaluate a saved QA head on one split of a cohort (pairs regenerated with the head's question config)."""
    loaded = loaded_model(model)
    head = load_qa_head(loaded)
    cfg = head.cfg
    if xray_labels:
        cfg = cfg.model_copy(update={"questions": cfg.questions.model_copy(update={"xray_labels": xray_labels})})
    store = open_store(cohort, cfg, head.conditions)
    pairs = split_pairs(store, cfg)
    if split not in pairs:
        raise ConfigError(f"unknown split '{split}' (train, val, test)")
    dm = loaded.datamodule(cohort)
    keys = sorted({(p.subject_id, p.time) for p in pairs[split]})
    cache = fused_tokens(loaded, dm, keys)
    return {"split": split, **evaluate_pairs(head, cache, pairs["train"], pairs[split])}
