"""The virtual-cell head of a trained cell model: cell-type annotation (supervised probe and zero-shot
label prompts), masked expression imputation, and perturbation response against the mean baseline.

    vc = VirtualCell.open("models/cell", cohort="cohort/")
    vc.fit_annotator()                        # probe on the cohort's training cells -> heads/virtual_cell/
    vc.fit_perturbation("perturbseq.h5ad")    # optional: needs Perturb-seq style data
    vc.evaluate("test", out="reports/")       # metrics against baselines, JSON + confusion-matrix PNG
    vc.answer(QueryRequest(kind="annotate"))  # the query contract (kinds annotate, perturb)

Fitted heads live in `<model>/heads/virtual_cell/` (safetensors + JSON), which `biomm export` copies."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import Field

from biomm.config import StrictModel
from biomm.heads.cells.annotation import LinearProbe, confusion, label_prompts, prompt_embeddings, scores, softmax, zero_shot_scores
from biomm.heads.cells.cellset import CellSet, cohort_cells_file, cohort_splits, embed_cells, n_genes_of, open_cells
from biomm.heads.cells.imputation import evaluate_imputation, impute
from biomm.heads.cells.perturbation import (PerturbationConfig, PerturbationModel, components, evaluate_perturbation,
                                            fit_perturbation)
from biomm.schema import Evidence, ModalityAttribution, QueryError, QueryRequest, QueryResponse

HEADS_DIR = Path("heads") / "virtual_cell"


class VirtualCellConfig(StrictModel):
    """Settings of the virtual-cell heads: the annotation probe, zero-shot temperature, perturbation head."""

    probe_c: float = Field(1.0, gt=0, description="Inverse L2 strength of the logistic-regression probe")
    probe_max_iter: int = Field(500, ge=10)
    zero_shot_temperature: float = Field(0.05, gt=0, description="Softmax temperature over prompt cosines")
    batch_size: int = Field(256, ge=1, description="Cells per forward pass")
    perturbation: PerturbationConfig = PerturbationConfig()
    perturbation_test_fraction: float = Field(0.25, ge=0, lt=1, description="Cells held out to score the perturbation head")


@dataclass
class Annotation:
    """Cell types of a set of cells: per cell its label and the probabilities [N, C] over `classes`."""

    ids: list[str]
    labels: list[str]
    scores: np.ndarray  # [N, C] probabilities over `classes`
    classes: list[str]
    method: str  # "probe" or "zero-shot"


class VirtualCell:
    """A cell model with its virtual-cell heads (fitted ones are read from `<model>/heads/virtual_cell/`)."""

    def __init__(self, loaded, cohort: str | Path | None = None, config: VirtualCellConfig | None = None):
        if loaded.kind != "cells":
            raise QueryError(f"model {loaded.folder.name} is a {loaded.kind} model; the virtual cell needs a cell model")
        self.loaded, self.cohort, self.cfg = loaded, Path(cohort) if cohort else None, config or VirtualCellConfig()
        self.n_genes = n_genes_of(loaded)
        self.folder = loaded.folder / HEADS_DIR
        self.annotator = LinearProbe.load(self.folder) if (self.folder / "annotator.json").exists() else None
        self.perturbation = PerturbationModel.load(self.folder) if (self.folder / "perturbation.json").exists() else None

    @classmethod
    def open(cls, model: str | Path, cohort: str | Path | None = None, config: VirtualCellConfig | None = None) -> "VirtualCell":
        """Open the model folder `model` (and optionally a cohort of its cells)."""
        from biomm.model.bundle import load

        return cls(load(model), cohort, config)

    # ----------------------------------------------------------------------- cells
    def cells(self, path: str | Path | None = None, split: str = "all", max_cells: int | None = None) -> CellSet:
        """Cells of an .h5ad, or of the cohort (optionally one split: train / val / test)."""
        if path is None:
            if self.cohort is None:
                raise QueryError("no cells given and no cohort opened")
            cells = open_cells(cohort_cells_file(self.cohort), self.n_genes)
            if split != "all":
                of = cohort_splits(self.cohort)
                cells = cells.subset(np.array([i for i, s in enumerate(cells.ids) if of.get(s) == split], dtype=np.int64))
                if not len(cells):
                    raise QueryError(f"the cohort has no cells in split {split!r}")
            return cells.subset(np.arange(min(len(cells), max_cells))) if max_cells else cells
        if split != "all":
            raise QueryError("splits apply to the cohort's cells, not to a given file")
        return open_cells(path, self.n_genes, max_cells)

    def embed(self, cells: CellSet) -> np.ndarray:
        """Omics embeddings [N, D] of the cells."""
        return embed_cells(self.loaded, cells, self.cfg.batch_size)

    def true_labels(self, cells: CellSet) -> list[str] | None:
        """The cells' labels under the model's label key, or None when the file has no such column."""
        key, _, _ = label_prompts(self.loaded)
        if key not in cells.obs:
            return None
        return [str(v) for v in cells.obs[key].astype(str)]

    # ----------------------------------------------------------------------- annotation
    def zero_shot(self, emb: np.ndarray) -> tuple[np.ndarray, list[str]]:
        """(probabilities [N, C] from label-prompt cosines, the C categories) for embeddings [N, D]."""
        _, cats, prompt = label_prompts(self.loaded)
        sims = zero_shot_scores(emb, prompt_embeddings(self.loaded, cats, prompt))
        return softmax(sims / self.cfg.zero_shot_temperature), cats

    def annotate(self, cells: CellSet, method: str = "auto") -> Annotation:
        """Label each cell: `probe` (needs fit_annotator), `zero-shot`, or `auto` (probe when fitted)."""
        if method not in ("auto", "probe", "zero-shot"):
            raise QueryError(f"unknown annotation method {method!r} (auto, probe, zero-shot)")
        if method == "probe" and self.annotator is None:
            raise QueryError("no fitted annotation probe: run fit_annotator first")
        emb = self.embed(cells)
        if method == "zero-shot" or (method == "auto" and self.annotator is None):
            p, classes = self.zero_shot(emb)
            method = "zero-shot"
        else:
            p, classes, method = self.annotator.proba(emb), self.annotator.classes, "probe"
        return Annotation(list(cells.ids), [classes[i] for i in p.argmax(1)], p, classes, method)

    def fit_annotator(self, split: str = "train", save: bool = True) -> LinearProbe:
        """Fit the probe on the cohort's `split` cells' labels (the model's label key) and save it."""
        cells = self.cells(split=split)
        labels = self.true_labels(cells)
        _, cats, _ = label_prompts(self.loaded)
        if labels is None:
            raise QueryError("the cohort's cells carry no labels of the model's label key")
        keep = np.array([lab in cats for lab in labels])
        emb = self.embed(cells)[keep]
        codes = np.array([cats.index(lab) for lab, k in zip(labels, keep) if k])
        self.annotator = LinearProbe.fit(emb, codes, cats, self.cfg.probe_c, self.cfg.probe_max_iter)
        if save:
            self.annotator.save(self.folder)
        return self.annotator

    # ----------------------------------------------------------------------- imputation
    def impute(self, cells: CellSet, genes: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(predicted, observed) values [N, G] of `genes` (see biomm.heads.cells.imputation.impute)."""
        return impute(self.loaded, cells, genes, self.cfg.batch_size)

    # ----------------------------------------------------------------------- perturbation
    def fit_perturbation(self, path: str | Path, config: PerturbationConfig | None = None,
                         holdout: list[str] | None = None, save: bool = True) -> PerturbationModel:
        """Train the perturbation head on a Perturb-seq style .h5ad, holding out a fraction of the cells
        (and every cell of the `holdout` perturbations) to score it against the mean baseline."""
        cfg = config or self.cfg.perturbation
        cells = open_cells(path, self.n_genes)
        if cfg.perturbation_key not in cells.obs:
            raise QueryError(f"{Path(path).name} has no obs column {cfg.perturbation_key!r} (perturbation_key)")
        labels = cells.obs[cfg.perturbation_key].astype(str).to_numpy()
        unknown = sorted(set(holdout or []) - set(labels))
        if unknown:
            raise QueryError(f"holdout perturbations {unknown} are not in {Path(path).name}")
        rng = np.random.default_rng(cfg.seed)
        unseen = set(holdout or [])
        singles = {p for p in set(labels) if p != cfg.control and "+" not in p and p not in unseen}
        doubles = sorted(p for p in set(labels) if "+" in p and all(g in singles for g in components(p)))
        held = set(rng.permutation(doubles)[: int(round(cfg.holdout_double_fraction * len(doubles)))].tolist())
        # an unseen gene stays out of training in every perturbation that names it (doubles included)
        touches_unseen = np.array([any(g in unseen for g in components(lab)) for lab in labels])
        out_of_training = np.isin(labels, sorted(held)) | touches_unseen
        test = (rng.random(len(cells)) < self.cfg.perturbation_test_fraction) | out_of_training
        train = ~test
        pm = fit_perturbation(self.loaded, cells.subset(np.flatnonzero(train)), cfg)
        if test.any():
            report = evaluate_perturbation(self.loaded, pm, cells.subset(np.flatnonzero(test)), seed=cfg.seed)
            pm.metrics["held_out"] = report
        self.perturbation = pm
        if save:
            pm.save(self.folder)
        return pm

    # ----------------------------------------------------------------------- evaluation
    def evaluate(self, split: str = "test", out: str | Path | None = None) -> dict:
        """Annotation (probe, zero-shot, majority baseline) and imputation (vs per-gene mean) on a split
        of the cohort; perturbation held-out scores when a head is fitted. Writes JSON + PNG to `out`."""
        cells = self.cells(split=split)
        labels = self.true_labels(cells)
        _, cats, _ = label_prompts(self.loaded)
        report: dict = {"model": self.loaded.folder.name, "split": split, "n_cells": len(cells), "annotation": {}}
        emb = self.embed(cells)
        keep = [i for i, lab in enumerate(labels or []) if lab in cats]
        truth = [labels[i] for i in keep]
        matrices = {}
        p, classes = self.zero_shot(emb)
        methods = [("zero-shot", p, classes)]
        if self.annotator is not None:
            methods.append(("probe", self.annotator.proba(emb), self.annotator.classes))
        for name, prob, cls in methods:
            pred = [cls[i] for i in prob.argmax(1)]
            report["annotation"][name] = scores(truth, [pred[i] for i in keep], cats)
            matrices[name] = confusion(truth, [pred[i] for i in keep], cats)
        try:
            report["imputation"] = evaluate_imputation(self.loaded, cells, self.cells(split="train"),
                                                       batch_size=self.cfg.batch_size)
        except QueryError as exc:
            report["imputation"] = {"skipped": str(exc)}
        if self.perturbation is not None:
            report["perturbation"] = self.perturbation.metrics
        if out is not None:
            write_report(report, matrices, cats, Path(out))
        return report

    # ----------------------------------------------------------------------- queries
    def answer(self, request: QueryRequest) -> QueryResponse:
        """Answer an `annotate` or `perturb` query (the shared query contract)."""
        if request.kind == "annotate":
            return self._answer_annotate(request)
        if request.kind == "perturb":
            return self._answer_perturb(request)
        raise QueryError(f"the virtual cell answers 'annotate' and 'perturb' queries, not {request.kind!r}")

    def _evidence(self) -> Evidence:
        return Evidence(modalities=[ModalityAttribution(modality="omics", present=True)])

    def _answer_annotate(self, request: QueryRequest) -> QueryResponse:
        cells = self.cells(request.cells, max_cells=request.max_cells)
        ann = self.annotate(cells)
        names, counts = np.unique(ann.labels, return_counts=True)
        order = np.argsort(-counts)
        share = ", ".join(f"{100 * counts[i] / len(ann.labels):.0f}% {names[i]}" for i in order[:5])
        details: dict = {
            "method": ann.method, "n_cells": len(ann.labels),
            "counts": {str(names[i]): int(counts[i]) for i in order},
            "cells": [{"id": i, "label": lab, "score": float(s)}
                      for i, lab, s in zip(ann.ids, ann.labels, ann.scores.max(1))]}
        truth = self.true_labels(cells)
        if truth is not None:
            details["agreement_with_file_labels"] = float(np.mean([t == p for t, p in zip(truth, ann.labels)]))
        warnings = [] if ann.method == "probe" else ["no fitted probe: zero-shot from label prompts, usually less accurate"]
        return QueryResponse(kind="annotate", answer=f"{len(ann.labels)} cells annotated ({ann.method}): {share}",
                             value=str(names[order[0]]), details=details, evidence=self._evidence(),
                             model=self.loaded.folder.name, warnings=warnings)

    def _answer_perturb(self, request: QueryRequest) -> QueryResponse:
        pm = self.perturbation
        if pm is None:
            raise QueryError(f"model {self.loaded.folder.name} has no perturbation head; fit one on Perturb-seq data "
                             "(VirtualCell.fit_perturbation)")
        cells = self.cells(request.cells, max_cells=request.max_cells)
        delta = pm.predict(self.loaded, request.gene, cells, self.embed(cells)).mean(0)
        top = lambda d, sign: [{"gene": pm.genes[i], "change": float(d[i])} for i in np.argsort(-sign * d)[:10]]  # noqa: E731
        seen = request.gene in pm.trained
        away = float(np.linalg.norm(delta - pm.baseline_delta))
        details = {"n_cells": len(cells), "seen_in_training": seen, "response_genes": len(pm.genes),
                   "top_up": top(delta, 1), "top_down": top(delta, -1),
                   "mean_baseline": {"top_up": top(pm.baseline_delta, 1), "top_down": top(pm.baseline_delta, -1),
                                     "distance_from_prediction": away},
                   "held_out_metrics": pm.metrics.get("held_out", {})}
        warnings = [] if seen else [f"{request.gene} was not perturbed in training: the prediction rests on its gene embedding"]
        down = ", ".join(f"{t['gene']} {t['change']:+.2f}" for t in details["top_down"][:3])
        up = ", ".join(f"{t['gene']} {t['change']:+.2f}" for t in details["top_up"][:3])
        return QueryResponse(kind="perturb", answer=f"Perturbing {request.gene} over {len(cells)} cells: down {down}; up {up} "
                             f"(distance from the mean baseline {away:.2f})", value=float(np.linalg.norm(delta)),
                             details=details, evidence=self._evidence(), model=self.loaded.folder.name, warnings=warnings)


def write_report(report: dict, matrices: dict[str, np.ndarray], labels: list[str], out: Path) -> list[Path]:
    """virtual_cell_report.json and one confusion-matrix PNG per annotation method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "virtual_cell_report.json"]
    paths[0].write_text(json.dumps(report, indent=2, default=float))
    for name, m in matrices.items():
        fig, ax = plt.subplots(figsize=(7, 6))
        rows = m / np.maximum(m.sum(1, keepdims=True), 1)
        ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
        ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        acc = report["annotation"][name].get("accuracy", float("nan"))
        ax.set_title(f"cell types, {name} (accuracy {acc:.2f}, {report['split']} split)")
        fig.tight_layout()
        path = out / f"confusion_{name.replace('-', '_')}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths
