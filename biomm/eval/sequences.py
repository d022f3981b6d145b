"""`biomm eval` for sequence models: a linear probe on the sequence embeddings and zero-shot annotation from
the label prompts, against a k-mer count logistic regression (k = 3 for proteins, 6 for DNA) and the
majority class, with stratified k-fold 95% intervals.

Protocol (the same for every method, on the same sequences): the held-out sequences (the val and test
splits: never seen in training) are cut into K stratified folds. For each fold, the probe and the k-mer
LR are fitted on the training split plus the other folds (the labels the model saw, and more) and scored
on the fold; zero-shot fits nothing. Intervals are mean +/- t(0.975, K-1) * sd / sqrt(K) over the folds;
the probe's target is checked on the paired per-fold difference to the k-mer LR."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import StratifiedKFold

from biomm.heads.cells.annotation import LinearProbe
from biomm.heads.sequences import SequenceHeads
from biomm.model.bundle import LoadedModel

KMER = {"protein": 3, "dna": 6}


def interval(values: list[float]) -> dict[str, float]:
    """Mean and 95% interval (t distribution over folds) of per-fold values."""
    a = np.asarray(values, dtype=float)
    half = float(stats.t.ppf(0.975, len(a) - 1) * a.std(ddof=1) / np.sqrt(len(a))) if len(a) > 1 else float("nan")
    return {"mean": float(a.mean()), "low": float(a.mean() - half), "high": float(a.mean() + half),
            "folds": [float(v) for v in a]}


def kmer_logreg(train_seqs: list[str], y_train: np.ndarray, test_seqs: list[str], k: int) -> np.ndarray:
    """The baseline: counts of every k-mer (overlapping, of the upper-case sequence), then logistic regression."""
    vec = CountVectorizer(analyzer="char", ngram_range=(k, k), lowercase=False, dtype=np.float32)
    x_train = vec.fit_transform(train_seqs)
    lr = LogisticRegression(max_iter=2000, C=1.0).fit(x_train, y_train)
    return lr.predict(vec.transform(test_seqs))


def _scores(y: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    return float(accuracy_score(y, pred)), float(f1_score(y, pred, average="macro", zero_division=0))


def evaluate_sequences(loaded: LoadedModel, cohort: str | Path, out: str | Path, folds: int = 5,
                       seed: int = 0) -> dict[str, Any]:
    """Probe and zero-shot against the k-mer LR and the majority class (see the module doc); fits and saves
    the probe on the training split for queries; writes a bar plot of the intervals."""
    from biomm.store.cohort import Cohort
    from biomm.store.sequences import read_sequences

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    heads = SequenceHeads(loaded, cohort)
    if not heads.categories:
        raise ValueError(f"model {loaded.config.name} was trained without labels: nothing to evaluate against")
    with Cohort(cohort, create=False, read_only=True) as c:
        df = read_sequences(c)
    seq_of = dict(zip(df["subject_id"] if "subject_id" in df else df["sequence_id"], df["sequence"]))
    split: dict[str, tuple] = {}
    for name in ("train", "val", "test"):
        ids, emb, codes = heads.cohort_embeddings(name) if heads.dm.samples[name] else ([], np.zeros((0, 1)), np.zeros(0, int))
        keep = codes >= 0
        split[name] = ([i for i, k in zip(ids, keep) if k], emb[keep], codes[keep])
    tr_ids, tr_emb, tr_y = split["train"]
    ev_ids = split["val"][0] + split["test"][0]
    ev_emb = np.concatenate([split["val"][1], split["test"][1]])
    ev_y = np.concatenate([split["val"][2], split["test"][2]])
    k = KMER[heads.alphabet]
    n_folds = min(folds, int(np.bincount(ev_y).min()) if len(ev_y) else 0)
    if n_folds < 2:
        raise ValueError(f"cohort {cohort}: too few held-out labelled sequences per class for {folds}-fold intervals")
    zs_all = heads.zero_shot(ev_emb).argmax(1)
    rows: dict[str, dict[str, list[float]]] = {m: {"accuracy": [], "macro_f1": []}
                                               for m in ("probe", "zero_shot", "kmer_logreg", "majority")}
    diff = []
    skf = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for fit_rows, test_rows in skf.split(ev_emb, ev_y):
        y_fit = np.concatenate([tr_y, ev_y[fit_rows]])
        y_test = ev_y[test_rows]
        probe = LinearProbe.fit(np.concatenate([tr_emb, ev_emb[fit_rows]]), y_fit, list(range(len(heads.categories))))
        pred = {"probe": np.array(probe.classes)[probe.proba(ev_emb[test_rows]).argmax(1)],
                "zero_shot": zs_all[test_rows],
                "kmer_logreg": kmer_logreg([seq_of[i] for i in tr_ids] + [seq_of[ev_ids[j]] for j in fit_rows], y_fit,
                                           [seq_of[ev_ids[j]] for j in test_rows], k),
                "majority": np.full(len(test_rows), np.bincount(y_fit).argmax())}
        for m, p in pred.items():
            acc, f1 = _scores(y_test, p)
            rows[m]["accuracy"].append(acc)
            rows[m]["macro_f1"].append(f1)
        diff.append(rows["probe"]["accuracy"][-1] - rows["kmer_logreg"]["accuracy"][-1])
    results = {m: {metric: interval(v) for metric, v in r.items()} for m, r in rows.items()}
    results["kmer_logreg"]["k"] = k
    d = interval(diff)
    zs, maj = results["zero_shot"]["accuracy"]["mean"], results["majority"]["accuracy"]["mean"]
    targets = {
        "probe_vs_kmer_difference": d,
        "probe_at_least_kmer_within_interval": bool(d["high"] >= 0),
        "zero_shot_at_least_2x_majority": bool(zs >= 2 * maj),
        "zero_shot_over_majority": zs / maj if maj else None,
        "note": ("with balanced binary classes the majority class scores about 0.5, so 2x majority would be a "
                 "perfect 1.0") if len(heads.categories) == 2 else None,
    }
    heads.fit_probe("train")  # the probe queries use: fitted on the training split, saved with the model
    counts = {heads.categories[i]: int(n) for i, n in enumerate(np.bincount(ev_y, minlength=len(heads.categories)))}
    report: dict[str, Any] = {
        "kind": "sequences", "model": loaded.config.name, "cohort": str(cohort), "alphabet": heads.alphabet,
        "label_name": heads.label_name, "categories": heads.categories, "folds": n_folds,
        "n_train": len(tr_y), "n_heldout": len(ev_y), "heldout_by_class": counts,
        "methods": results, "targets": targets,
    }
    report["plots"] = {"accuracy": _plot(results, f"{loaded.config.name}: accuracy, {n_folds}-fold 95% intervals",
                                         out / "accuracy.png").name}
    return report


def _plot(results: dict, title: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    means = [results[n]["accuracy"]["mean"] for n in names]
    err = [[m - results[n]["accuracy"]["low"] for n, m in zip(names, means)],
           [results[n]["accuracy"]["high"] - m for n, m in zip(names, means)]]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.bar(names, means, yerr=err, capsize=4, color=["#4c72b0", "#55a868", "#c44e52", "#8c8c8c"][: len(names)])
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def sequences_markdown(report: dict[str, Any]) -> str:
    """The Markdown report of a sequence-model evaluation."""
    f = lambda i: f"{i['mean']:.3f} [{i['low']:.3f}, {i['high']:.3f}]"
    t = report["targets"]
    lines = [f"# biomm eval: {report['model']} ({report['alphabet']} sequences) on {Path(report['cohort']).name}", "",
             f"Held-out sequences (val + test splits): {report['n_heldout']} {report['heldout_by_class']}; "
             f"{report['folds']} stratified folds. Probe and k-mer LR are fitted on the {report['n_train']} training "
             "sequences plus the other folds; zero-shot fits nothing.", "",
             "| method | accuracy (95% interval) | macro-F1 (95% interval) |", "|---|---|---|"]
    for name, r in report["methods"].items():
        label = f"k-mer LR (k={r['k']})" if name == "kmer_logreg" else name
        lines.append(f"| {label} | {f(r['accuracy'])} | {f(r['macro_f1'])} |")
    lines += ["", f"Probe minus k-mer LR (paired over folds): {f(t['probe_vs_kmer_difference'])}; "
                  f"target probe >= k-mer LR within the interval: {'met' if t['probe_at_least_kmer_within_interval'] else 'NOT met'}.",
              f"Zero-shot / majority: {t['zero_shot_over_majority']:.2f}x; target >= 2x: "
              f"{'met' if t['zero_shot_at_least_2x_majority'] else 'NOT met'}" + (f" ({t['note']})." if t.get("note") else "."),
              ""]
    for name in report.get("plots", {}).values():
        lines += [f"![{name}]({name})", ""]
    return "\n".join(lines)
