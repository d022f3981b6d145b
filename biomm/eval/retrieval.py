"""Cross-modal retrieval on held-out subjects, against a lexical and a CCA baseline, and zero-shot
classification from label prompts.

For every ordered pair (a -> b) of the model's modalities, each test subject with both is a query
(its `a` embedding) that must find its own `b` among all such subjects' `b` embeddings (cosine).
Reported: recall@1/5/10 and the median rank, each with a bootstrap 95% interval over query subjects,
and the chance level (recall@k = k / n, median rank (n + 1) / 2). Ties count as broken at random
(the expected recall and rank), so a baseline that scores many candidates equally is not flattered.

Baselines, on the same subjects and the same inputs the model sees:
- BM25 (Okapi, k1 1.5, b 0.75), where both sides have text: a subject's notes against the display
  names of the EHR codes the model reads (and the reverse);
- CCA on simple features fitted on the training subjects: TF-IDF of codes (EHR) or of word pieces
  (notes), pixels (imaging) or values (omics), each reduced by PCA / truncated SVD first.
"""
from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any

import numpy as np

from biomm.data.ehr import code_display
from biomm.data.samples import Sample
from biomm.eval import plots
from biomm.eval.metrics import auroc
from biomm.heads.clinical import binary_metrics, embed_samples
from biomm.model.bundle import LoadedModel
from biomm.store.cohort import Cohort

KS = (1, 5, 10)
# Prompts (positive, negative) of the cohort labels a model may be asked about zero-shot; others use
# the label's words and "no <words>".
PROMPTS = {"xray_pneumonia": ("chest x-ray showing pneumonia", "normal chest x-ray")}


# ------------------------------------------------------------------------------------------ metrics
def hit_and_rank(scores: np.ndarray, ks: tuple[int, ...] = KS) -> tuple[np.ndarray, np.ndarray]:
    """From `scores` [N, N] (query i's true candidate is i): expected hit [N, len(ks)] of recall@k and
    expected rank [N] (1 = first) when ties are broken at random."""
    true = np.diag(scores)[:, None]
    greater = (scores > true).sum(1)
    ties = (scores == true).sum(1) - 1
    hits = np.stack([np.clip((k - greater) / (ties + 1), 0.0, 1.0) for k in ks], 1)
    return hits, greater + 1 + ties / 2


def bootstrap_ci(values: np.ndarray, stat, n_boot: int = 1000, seed: int = 0) -> list[float]:
    """Percentile 95% interval of `stat` over `values` [N, ...] resampled by row (with replacement)."""
    rng = np.random.default_rng(seed)
    n = len(values)
    draws = [stat(values[rng.integers(0, n, n)]) for _ in range(n_boot)]
    return [float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))]


def retrieval_metrics(scores: np.ndarray, ks: tuple[int, ...] = KS, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """recall@k and the median rank of a score matrix [N, N] (true = diagonal), each {value, ci}."""
    hits, ranks = hit_and_rank(scores, ks)
    out: dict[str, Any] = {}
    for j, k in enumerate(ks):
        out[f"recall@{k}"] = {"value": float(hits[:, j].mean()),
                              "ci": bootstrap_ci(hits[:, j], np.mean, n_boot, seed + j)}
    out["median_rank"] = {"value": float(np.median(ranks)), "ci": bootstrap_ci(ranks, np.median, n_boot, seed + 99)}
    return out


def chance(n: int, ks: tuple[int, ...] = KS) -> dict[str, float]:
    """Chance level among `n` candidates: recall@k = min(k, n) / n, median rank (n + 1) / 2."""
    return {**{f"recall@{k}": min(k, n) / n for k in ks}, "median_rank": (n + 1) / 2}


def cosine_scores(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarities [N, M] of rows of `a` [N, D] and `b` [M, D]."""
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return a @ b.T


# ------------------------------------------------------------------------------------------ BM25
def words(text: str) -> list[str]:
    """Lower-cased alphanumeric words of `text`."""
    return re.findall(r"[a-z0-9]+", text.lower())


def bm25_scores(queries: list[str], docs: list[str], k1: float = 1.5, b: float = 0.75) -> np.ndarray:
    """Okapi BM25 score [Nq, Nd] of each query against each document (IDF over `docs`)."""
    toks = [words(d) for d in docs]
    vocab: dict[str, int] = {}
    for t in toks:
        for w in t:
            vocab.setdefault(w, len(vocab))
    tf = np.zeros((len(docs), max(1, len(vocab))))
    for i, t in enumerate(toks):
        for w in t:
            tf[i, vocab[w]] += 1
    df = (tf > 0).sum(0)
    n = len(docs)
    idf = np.log((n - df + 0.5) / (df + 0.5) + 1.0)
    length = tf.sum(1)
    norm = k1 * (1 - b + b * length / max(length.mean(), 1e-9))
    weight = tf * (k1 + 1) / (tf + norm[:, None]) * idf[None]  # [Nd, V]
    out = np.zeros((len(queries), n))
    for i, q in enumerate(queries):
        ids = [vocab[w] for w in set(words(q)) if w in vocab]
        if ids:
            out[i] = weight[:, ids].sum(1)
    return out


# ------------------------------------------------------------------------------------------ CCA
def simple_features(modality: str, batch, vocab_size: int | None = None):
    """Baseline features [B, F] of one modality's batch tensors (the model's own inputs): code counts (EHR),
    word-piece counts (text), pixels (imaging), values (any other modality's first float tensor)."""
    from scipy.sparse import csr_matrix

    t = batch.modalities[modality].tensors
    if modality == "ehr":
        ids, mask = t["codes"].numpy(), t["mask"].numpy()
    elif "input_ids" in t:
        ids, mask = t["input_ids"].numpy(), t["attention_mask"].numpy().astype(bool)
    else:
        key = "image" if "image" in t else next(k for k, v in t.items() if v.is_floating_point())
        return t[key].float().reshape(t[key].shape[0], -1).numpy()
    rows, cols = np.nonzero(mask)
    size = int(vocab_size or ids.max() + 1)
    return csr_matrix((np.ones(len(rows)), (rows, ids[rows, cols])), shape=(ids.shape[0], size))


def _reducer(x_train, dims: int):
    """TF-IDF + truncated SVD for counts (sparse), standardise + PCA for dense features; fitted on train."""
    from sklearn.decomposition import PCA, TruncatedSVD
    from sklearn.feature_extraction.text import TfidfTransformer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    dims = max(1, min(dims, x_train.shape[0] - 1, x_train.shape[1] - 1 if x_train.shape[1] > 1 else 1))
    if hasattr(x_train, "tocsr"):
        return make_pipeline(TfidfTransformer(), TruncatedSVD(dims, random_state=0)).fit(x_train)
    return make_pipeline(StandardScaler(), PCA(dims, random_state=0)).fit(x_train)


def cca_scores(a_train, b_train, a_test, b_test, dims: int = 32, components: int = 8) -> np.ndarray:
    """CCA fitted on training pairs (features reduced to `dims` first); cosine scores [N, N] of the test
    pairs' canonical variates (a queries, b candidates)."""
    from sklearn.cross_decomposition import CCA

    n = a_train.shape[0]
    ra, rb = _reducer(a_train, min(dims, n // 2)), _reducer(b_train, min(dims, n // 2))
    za, zb = ra.transform(a_train), rb.transform(b_train)
    k = max(1, min(components, za.shape[1], zb.shape[1], n - 1))
    cca = CCA(n_components=k, max_iter=1000).fit(za, zb)
    ua, ub = cca.transform(ra.transform(a_test), rb.transform(b_test))
    return cosine_scores(ua, ub)


# ------------------------------------------------------------------------------------------ inputs
def _collate_all(dm, samples: list[Sample], size: int = 128):
    return [dm.collate(samples[i:i + size]) for i in range(0, len(samples), size)]


def _features(dm, samples: list[Sample], modality: str, vocab_size: int | None):
    from scipy.sparse import vstack

    parts = [simple_features(modality, b, vocab_size) for b in _collate_all(dm, samples)]
    return vstack(parts).tocsr() if hasattr(parts[0], "tocsr") else np.concatenate(parts)


def _presence(dm, samples: list[Sample], modalities: list[str]) -> dict[str, np.ndarray]:
    out: dict[str, list[np.ndarray]] = {m: [] for m in modalities}
    for b in _collate_all(dm, samples):
        for m in modalities:
            out[m].append(b.present(m).numpy())
    return {m: np.concatenate(v) if v else np.zeros(0, bool) for m, v in out.items()}


def ehr_text(dm, samples: list[Sample], displays: dict[str, str], max_events: int) -> list[str]:
    """Each sample's EHR as text: the display names of the codes of the events the model reads."""
    events, out = dm.events, []
    for s in samples:
        if s.subject_id not in events:
            out.append("")
            continue
        a, e = events.span(s.subject_id, s.prediction_time)
        codes = events.codes_text[max(a, e - max_events):e]
        out.append(" ".join(code_display(str(c), displays) for c in codes))
    return out


def notes_text(dm, samples: list[Sample], as_read: bool = True) -> list[str]:
    """Each sample's notes ('' without notes): with `as_read`, exactly the word pieces the text modality reads
    (cut at `text_max_length` tokens, decoded), so BM25 and the model see the same input; else the whole notes."""
    src = dm.sources["text"]
    texts = [src.notes.text(s.subject_id, s.prediction_time, src.last) or "" for s in samples]
    if not as_read:
        return texts
    enc = src.tokenizer(texts, truncation=True, max_length=src.max_length)
    return [src.tokenizer.decode(ids, skip_special_tokens=True) for ids in enc["input_ids"]]


# ------------------------------------------------------------------------------------------ report
def evaluate_retrieval(loaded: LoadedModel, cohort: str | Path, out: str | Path | None = None,
                       ks: tuple[int, ...] = KS, n_boot: int = 1000, dm=None) -> dict[str, Any]:
    """Retrieval on the test subjects for every ordered modality pair: biomm, BM25 (where both sides have text)
    and CCA (fitted on the training subjects), with intervals and chance; plus zero-shot label prompts."""
    from biomm.eval.clinical import split_map

    dm = dm or loaded.datamodule(cohort)
    split_of = split_map(cohort)
    every = dm.samples["all"]
    train = [s for s in every if split_of.get(s.subject_id) == "train"]
    test = [s for s in every if split_of.get(s.subject_id) == "test"]
    mods = [m for m in loaded.modalities if m in dm.sources]
    emb = embed_samples(loaded.model, dm.collate, test)
    pres_train = _presence(dm, train, mods)
    with Cohort(cohort, create=False, read_only=True) as c:
        displays = c.code_displays()
    max_events = loaded.config.data.max_events
    vocab = {m: getattr(loaded.config.model.adapters[m], "vocab_size", None) for m in mods}
    feats_train = {m: _features(dm, train, m, vocab[m]) for m in mods}
    feats_test = {m: _features(dm, test, m, vocab[m]) for m in mods}
    texts = {}
    if "text" in mods:
        texts["text"] = notes_text(dm, test)
        texts["text_whole"] = notes_text(dm, test, as_read=False)  # what BM25 gets with the notes uncut
    if "ehr" in mods:
        texts["ehr"] = ehr_text(dm, test, displays, max_events)
    report: dict[str, Any] = {"test_subjects": len(test), "train_subjects": len(train), "pairs": {}}
    for a, b in itertools.permutations(mods, 2):
        both = emb.present[a] & emb.present[b]
        n = int(both.sum())
        if n < 2:
            continue
        idx = np.flatnonzero(both)
        r: dict[str, Any] = {"n": n, "chance": chance(n, ks)}
        r["biomm"] = retrieval_metrics(cosine_scores(emb.modalities[a][idx], emb.modalities[b][idx]), ks, n_boot)
        if a in texts and b in texts:
            r["bm25"] = retrieval_metrics(bm25_scores([texts[a][i] for i in idx], [texts[b][i] for i in idx]), ks, n_boot)
            if "text" in (a, b):
                whole = {m: texts["text_whole"] if m == "text" else texts[m] for m in (a, b)}
                r["bm25_whole_notes"] = retrieval_metrics(
                    bm25_scores([whole[a][i] for i in idx], [whole[b][i] for i in idx]), ks, n_boot)
        tr = np.flatnonzero(pres_train[a] & pres_train[b])
        if len(tr) >= 4:
            r["cca"] = retrieval_metrics(cca_scores(feats_train[a][tr], feats_train[b][tr], feats_test[a][idx],
                                                    feats_test[b][idx]), ks, n_boot)
            r["cca_train_pairs"] = int(len(tr))
        report["pairs"][f"{a}->{b}"] = r
    report["zero_shot"] = zero_shot(loaded, dm, cohort, test, emb, n_boot)
    if out is not None and report["pairs"]:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        report["plot"] = retrieval_plot(report, out / "retrieval.png").name
    return report


def _prompt_embeddings(loaded: LoadedModel, dm, prompts: list[str]) -> np.ndarray:
    """Text-adapter embeddings [P, D] of `prompts` (the run's tokenizer)."""
    from biomm.data.text import encode_texts

    src = dm.sources["text"]
    return loaded.model.embed("text", encode_texts(src.tokenizer, prompts, src.max_length)).float().numpy()


def zero_shot(loaded: LoadedModel, dm, cohort: str | Path, test: list[Sample], emb, n_boot: int = 1000) -> dict[str, Any]:
    """Binary cohort labels of the tasks, predicted with no training from each non-text modality's embedding:
    score = cos(e, positive prompt) - cos(e, negative prompt); AUROC with a bootstrap interval."""
    if "text" not in dm.sources:
        return {}
    from biomm.data.tasks import load_tasks

    names = sorted({t.label.label_name for t in load_tasks([]).values()
                    if getattr(t.label, "kind", "") == "cohort_label" and getattr(t.label, "label_name", None)})
    out: dict[str, Any] = {}
    with Cohort(cohort, create=False, read_only=True) as c:
        values = {n: {sid: v for sid, v, _ in c.labels(n)} for n in names}
    for name in names:
        pos, neg = PROMPTS.get(name, (name.replace("_", " "), "no " + name.replace("_", " ")))
        prompts = _prompt_embeddings(loaded, dm, [pos, neg])
        for m, e in emb.modalities.items():
            if m == "text":
                continue
            rows = [i for i, s in enumerate(test) if emb.present[m][i] and s.subject_id in values[name]]
            y = np.array([float(values[name][test[i].subject_id]) for i in rows])
            if len(rows) < 2 or len(np.unique(y)) < 2:
                out[f"{name}/{m}"] = {"skipped": f"{len(rows)} test subjects with {m} and the label, "
                                                 f"{int(y.sum()) if len(y) else 0} positive"}
                continue
            s = cosine_scores(e[rows], prompts)
            score = s[:, 0] - s[:, 1]
            auc = binary_metrics(y, 1 / (1 + np.exp(-score)))["auroc"]
            pairs = np.stack([y, score], 1)
            ci = bootstrap_ci(pairs, _auroc_or_chance, n_boot)
            out[f"{name}/{m}"] = {"prompts": [pos, neg], "n": len(rows), "positives": int(y.sum()),
                                  "auroc": {"value": auc, "ci": ci}, "chance": 0.5}
    return out


def _auroc_or_chance(pairs: np.ndarray) -> float:
    """AUROC of (label, score) rows [N, 2]; 0.5 where a resample has one class only."""
    v = auroc(pairs[:, 0], pairs[:, 1])
    return 0.5 if v is None else v


def _cell(m: dict | None, key: str) -> str:
    if not m or key not in m:
        return "n/a"
    v = m[key]
    return f"{v['value']:.3f} [{v['ci'][0]:.2f}, {v['ci'][1]:.2f}]" if key != "median_rank" else \
        f"{v['value']:.1f} [{v['ci'][0]:.1f}, {v['ci'][1]:.1f}]"


def retrieval_markdown(report: dict[str, Any]) -> str:
    """The retrieval and zero-shot section of an evaluation report."""
    lines = ["## Cross-modal retrieval (held-out test subjects)", "",
             f"Each test subject with both modalities queries with one and must find its own other among all of them "
             f"(cosine). Bootstrap 95% intervals over query subjects; CCA is fitted on the {report['train_subjects']} "
             "training subjects' simple features; BM25 reads the EHR codes' display names and the notes as the model "
             "reads them (cut at the text length; `bm25_whole_notes`: uncut).", "",
             "| pair | n | method | recall@1 | recall@5 | recall@10 | median rank |", "|---|---|---|---|---|---|---|"]
    for pair, r in report["pairs"].items():
        c = r["chance"]
        lines.append(f"| {pair} | {r['n']} | chance | {c['recall@1']:.3f} | {c['recall@5']:.3f} | {c['recall@10']:.3f} | "
                     f"{c['median_rank']:.1f} |")
        for method in ("biomm", "bm25", "bm25_whole_notes", "cca"):
            if method in r:
                m = r[method]
                lines.append(f"| {pair} | {r['n']} | {method} | {_cell(m, 'recall@1')} | {_cell(m, 'recall@5')} | "
                             f"{_cell(m, 'recall@10')} | {_cell(m, 'median_rank')} |")
    if report.get("zero_shot"):
        lines += ["", "## Zero-shot classification from label prompts", "",
                  "| label / modality | n | positives | AUROC | prompts |", "|---|---|---|---|---|"]
        for key, z in report["zero_shot"].items():
            if "skipped" in z:
                lines.append(f"| {key} | | | skipped: {z['skipped']} | |")
            else:
                lines.append(f"| {key} | {z['n']} | {z['positives']} | {_cell(z, 'auroc')} | {' / '.join(z['prompts'])} |")
    if report.get("plot"):
        lines += ["", f"![retrieval]({report['plot']})"]
    return "\n".join(lines + [""])


def retrieval_plot(report: dict[str, Any], path: Path) -> Path:
    """Bars of recall@1 per ordered pair and method with their 95% intervals, chance as a tick."""
    plt = plots.plt  # the Agg backend, set by biomm.eval.plots
    pairs = list(report["pairs"])
    methods = ["biomm", "bm25", "cca"]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(pairs) + 2), 3.6), dpi=110)
    width = 0.8 / len(methods)
    for j, method in enumerate(methods):
        xs, ys, lo, hi = [], [], [], []
        for i, p in enumerate(pairs):
            m = report["pairs"][p].get(method)
            if m:
                v = m["recall@1"]
                xs.append(i + j * width)
                ys.append(v["value"])
                lo.append(v["value"] - v["ci"][0])
                hi.append(v["ci"][1] - v["value"])
        if xs:
            ax.bar(xs, ys, width, yerr=[lo, hi], capsize=2, label=method)
    for i, p in enumerate(pairs):
        ax.hlines(report["pairs"][p]["chance"]["recall@1"], i - width / 2, i + width * (len(methods) - 0.5), colors="k",
                  linestyles=":", lw=1)
    ax.set_xticks(np.arange(len(pairs)) + width, pairs, fontsize=7, rotation=20)
    ax.set(ylim=(0, 1), ylabel="recall@1 (95% CI)", title="retrieval on held-out subjects (dotted: chance)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


__all__ = ["bm25_scores", "cca_scores", "chance", "evaluate_retrieval", "hit_and_rank", "retrieval_markdown",
           "retrieval_metrics", "zero_shot"]
