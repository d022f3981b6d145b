"""Cell-type annotation from cell embeddings: zero-shot (cosine to the embedded label prompts, CLIP
style) and supervised (a multinomial logistic-regression probe, scikit-learn, on frozen embeddings)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file, save_file
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

from biomm.data.text import encode_texts
from biomm.vocab.text import load_text_tokenizer
from biomm.schema import QueryError


def label_prompts(loaded) -> tuple[str, list[str], str]:
    """(label key, categories, prompt template) the model was trained with."""
    path = loaded.folder / "artifacts" / "cell_labels.json"
    if not path.exists():
        raise QueryError(f"model {loaded.folder.name} was not trained with cell label prompts (no {path.name})")
    info = json.loads(path.read_text())
    return info["label_key"], list(info["categories"]), info["prompt"]


@torch.no_grad()
def prompt_embeddings(loaded, categories: list[str], prompt: str) -> np.ndarray:
    """Text embeddings [C, D] of `prompt.format(label=c)` for each category."""
    if "text" not in loaded.model.adapters:
        raise QueryError(f"model {loaded.folder.name} has no text adapter: zero-shot annotation needs one")
    tok = load_text_tokenizer(loaded.folder / "artifacts" / "text_tokenizer")
    enc = encode_texts(tok, [prompt.format(label=c) for c in categories], loaded.config.data.text_max_length)
    return loaded.model.embed("text", enc).float().numpy()


def _unit(a: np.ndarray) -> np.ndarray:
    return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)


def zero_shot_scores(cell_emb: np.ndarray, prompt_emb: np.ndarray) -> np.ndarray:
    """Cosine similarity [N, C] of each cell to each label prompt."""
    return _unit(cell_emb) @ _unit(prompt_emb).T


def softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax of scores [N, C]."""
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


class LinearProbe:
    """Logistic regression on frozen embeddings. Stored as plain arrays (safetensors + JSON), not pickle."""

    def __init__(self, coef: np.ndarray, intercept: np.ndarray, classes: list[str], mean: np.ndarray, scale: np.ndarray):
        self.coef, self.intercept, self.classes = coef, intercept, classes
        self.mean, self.scale = mean, scale

    @classmethod
    def fit(cls, emb: np.ndarray, codes: np.ndarray, categories: list[str], c: float = 1.0,
            max_iter: int = 500) -> "LinearProbe":
        """`codes` index `categories`; the probe knows the categories seen in training."""
        seen = np.unique(codes)
        if len(seen) < 2:
            raise QueryError(f"a supervised probe needs two or more cell types in training; got {len(seen)}")
        mean, scale = emb.mean(0), emb.std(0) + 1e-6
        lr = LogisticRegression(C=c, max_iter=max_iter).fit((emb - mean) / scale, codes)
        coef, intercept = lr.coef_, lr.intercept_
        if coef.shape[0] == 1:  # binary: sklearn keeps one row; make it two-class softmax
            coef, intercept = np.vstack([-coef / 2, coef / 2]), np.array([-intercept[0] / 2, intercept[0] / 2])
        return cls(coef.astype(np.float32), intercept.astype(np.float32),
                   [categories[i] for i in lr.classes_], mean.astype(np.float32), scale.astype(np.float32))

    def proba(self, emb: np.ndarray) -> np.ndarray:
        """Class probabilities [N, C] for embeddings [N, D]."""
        return softmax(((emb - self.mean) / self.scale) @ self.coef.T + self.intercept)

    def save(self, folder: Path) -> None:
        """Write the probe as safetensors + JSON into `folder`."""
        folder.mkdir(parents=True, exist_ok=True)
        arrays = {"coef": self.coef, "intercept": self.intercept, "mean": self.mean, "scale": self.scale}
        # safetensors writes the raw buffer: sklearn's coef_ is Fortran-ordered, so make it C-contiguous
        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(folder / "annotator.safetensors"))
        (folder / "annotator.json").write_text(json.dumps({"classes": self.classes}, indent=2))

    @classmethod
    def load(cls, folder: Path) -> "LinearProbe":
        """Read what `save` wrote."""
        t = load_file(str(folder / "annotator.safetensors"))
        classes = json.loads((folder / "annotator.json").read_text())["classes"]
        return cls(t["coef"], t["intercept"], classes, t["mean"], t["scale"])


def scores(true: list[str], pred: list[str], labels: list[str]) -> dict:
    """Accuracy, macro-F1 over the labels present, and the majority-class baseline's accuracy."""
    if not true:
        return {"n": 0}
    values, counts = np.unique(np.array(true), return_counts=True)
    present = [c for c in labels if c in set(true)]
    return {"n": len(true), "accuracy": float(accuracy_score(true, pred)),
            "macro_f1": float(f1_score(true, pred, labels=present, average="macro", zero_division=0)),
            "majority_baseline_accuracy": float(counts.max() / counts.sum()),
            "majority_label": str(values[counts.argmax()])}


def confusion(true: list[str], pred: list[str], labels: list[str]) -> np.ndarray:
    """Confusion matrix [C, C] (rows: true labels, columns: predicted) over `labels`."""
    return confusion_matrix(true, pred, labels=labels)
