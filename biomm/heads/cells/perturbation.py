"""Perturbation response: post-perturbation expression from a cell's state plus the perturbed gene's
representation, always reported against the mean baseline.

The head sees a control cell's omics embedding (frozen model) and the perturbed gene's row of the
model's gene table (summed over the genes of a combination "A+B"), and predicts the change of the
response genes' expression. Perturb-seq cells are unpaired, so a training example is a control cell
and a perturbation, and its target is that perturbation's mean change within the cell's group
(e.g. cell type, with `group_key`; perturbed mean minus control mean, over the training cells;
the whole population's change where the group has fewer than `min_group_cells` perturbed cells).
Averaging first removes the cell-to-cell noise a random perturbed-control pairing would add. The mean baseline predicts, for any
perturbation, the average change over the training perturbations (a strong baseline in published
benchmarks; a model that ignores the gene cannot beat it)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pydantic import Field
from safetensors.torch import load_file, save_file
from torch import nn

from biomm.config import StrictModel
from biomm.heads.cells.cellset import CellSet, embed_cells, iter_chunks
from biomm.schema import QueryError
from biomm.train.heads import fit_head
from biomm.vocab.genes import UNK


class PerturbationConfig(StrictModel):
    """The perturbation-response head: which obs columns say what was perturbed, its size and training."""

    perturbation_key: str = Field("perturbation", description="obs column naming each cell's perturbed gene(s), 'A+B' for combinations")
    control: str = Field("control", description="Value of perturbation_key marking control cells")
    group_key: str | None = Field(None, description="obs column (e.g. cell type): pair perturbed cells with controls of their group")
    n_response_genes: int = Field(2000, ge=1, description="The most variable genes (over control cells) whose change is predicted")
    min_group_cells: int = Field(3, ge=1, description="Fewer perturbed cells in a group: use the population's change")
    holdout_double_fraction: float = Field(0.5, ge=0, le=1, description="Share of the double perturbations whose genes "
                                           "are all trained singles that stay out of training (held out, seen genes)")
    hidden: int = Field(128, ge=8)
    steps: int = Field(400, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    seed: int = 0


class PerturbationHead(nn.Module):
    """(cell state z [B, D], gene representation r [B, W]) -> expression change [B, G]."""

    def __init__(self, d: int, w: int, n_out: int, hidden: int) -> None:
        super().__init__()
        self.cell = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, hidden))
        self.gene = nn.Sequential(nn.LayerNorm(w), nn.Linear(w, hidden))
        self.mlp = nn.Sequential(nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, n_out))

    def forward(self, z: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """Predicted expression change [B, G] from cell states z [B, D] and gene representations r [B, W]."""
        return self.mlp(self.cell(z) + self.gene(r))


@torch.no_grad()
def gene_representation(loaded, token_ids: list[list[int]]) -> torch.Tensor:
    """The model's gene identity vectors [P, W], summed over each perturbation's genes: rows of the
    transformer's gene table, or the mlp encoder's identity vectors of its HVGs."""
    omics = loaded.model.adapters["omics"]
    if omics.cfg.encoder == "mlp":
        ident = omics.encoder.identity().float()
        pos = {int(g): i for i, g in enumerate(omics.cfg.gene_ids or [])}
        missing = sorted({t for ids in token_ids for t in ids if t not in pos})
        if missing:
            from biomm.vocab.genes import GeneVocab

            names = [GeneVocab.default().symbol(t) for t in missing]
            raise QueryError(f"perturbed gene(s) {names} are not among the model's highly variable genes: "
                             "the mlp encoder has no identity vector for them")
        return torch.stack([ident[[pos[t] for t in ids]].sum(0) for ids in token_ids])
    table = omics.encoder.gene
    return torch.stack([table(torch.tensor(ids)).float().sum(0) for ids in token_ids])


def perturbation_genes(loaded, cells: CellSet, label: str) -> list[int]:
    """Gene token ids of a perturbation label ('GATA1' or 'GATA1+CEBPA'); errors name the unknown gene."""
    from biomm.heads.cells.cellset import n_genes_of
    from biomm.vocab.genes import GeneVocab

    n_genes = n_genes_of(loaded)
    out = []
    for g in filter(None, (s.strip() for s in str(label).split("+"))):
        try:
            tid = int(cells.var_token_ids[cells.column(g)])
        except QueryError:
            tid = GeneVocab.default().token_id(g)
        if tid <= UNK or tid >= n_genes:
            raise QueryError(f"perturbed gene {g!r} is not in the gene vocabulary of model {loaded.folder.name}")
        out.append(tid)
    if not out:
        raise QueryError(f"perturbation {label!r} names no gene")
    return out


def dense_columns(loaded, cells: CellSet, columns: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """Dense expression [N, C] of the given columns of every selected cell."""
    return np.concatenate([x[:, columns].toarray() for _, x in iter_chunks(cells, batch_size, loaded.config.data.omics.layer)])


@dataclass
class PerturbationModel:
    """A trained head with what it needs to answer: response genes, the mean baseline, seen perturbations."""

    head: PerturbationHead
    cfg: PerturbationConfig
    genes: list[str]  # response gene symbols
    baseline_delta: np.ndarray  # [G] mean change over training perturbations
    trained: list[str]  # perturbations seen in training
    metrics: dict
    train_deltas: np.ndarray | None = None  # [P, G] each training perturbation's mean change (order of `trained`)

    def predict(self, loaded, label: str, cells: CellSet, z: np.ndarray | None = None) -> np.ndarray:
        """Predicted change [N, G] of the response genes for each cell of `cells` under `label`."""
        ids = perturbation_genes(loaded, cells, label)
        z = embed_cells(loaded, cells) if z is None else z
        r = gene_representation(loaded, [ids]).expand(len(z), -1)
        with torch.no_grad():
            return self.head(torch.from_numpy(z).float(), r).numpy()

    def save(self, folder: Path) -> None:
        """Write the head, the baseline and what it was trained on (safetensors + JSON)."""
        folder.mkdir(parents=True, exist_ok=True)
        extra = {} if self.train_deltas is None else {"train_deltas": torch.from_numpy(self.train_deltas.astype(np.float32))}
        save_file({**{f"head.{k}": v.contiguous() for k, v in self.head.state_dict().items()},
                   "baseline_delta": torch.from_numpy(self.baseline_delta.astype(np.float32)), **extra},
                  str(folder / "perturbation.safetensors"))
        shapes = {"d": self.head.cell[0].normalized_shape[0], "w": self.head.gene[0].normalized_shape[0]}
        (folder / "perturbation.json").write_text(json.dumps({
            "config": self.cfg.model_dump(), "genes": self.genes, "trained": self.trained,
            "metrics": self.metrics, **shapes}, indent=2))

    @classmethod
    def load(cls, folder: Path) -> PerturbationModel:
        """Read what `save` wrote, in eval mode."""
        info = json.loads((folder / "perturbation.json").read_text())
        cfg = PerturbationConfig.model_validate(info["config"])
        t = load_file(str(folder / "perturbation.safetensors"))
        head = PerturbationHead(info["d"], info["w"], len(info["genes"]), cfg.hidden)
        head.load_state_dict({k[5:]: v for k, v in t.items() if k.startswith("head.")})
        deltas = t["train_deltas"].numpy() if "train_deltas" in t else None
        return cls(head.eval(), cfg, info["genes"], t["baseline_delta"].numpy(), info["trained"], info["metrics"], deltas)


def _labels(cells: CellSet, key: str) -> np.ndarray:
    if key not in cells.obs:
        raise QueryError(f"{cells.path.name} has no obs column {key!r} (perturbation_key)")
    return cells.obs[key].astype(str).to_numpy()


def _groups(cells: CellSet, key: str | None) -> np.ndarray:
    if key is None:
        return np.zeros(len(cells), dtype=np.int64)
    if key not in cells.obs:
        raise QueryError(f"{cells.path.name} has no obs column {key!r} (group_key)")
    return np.unique(cells.obs[key].astype(str).to_numpy(), return_inverse=True)[1]


def step_pairs(ctrl_rows: np.ndarray, n_perts: int, batch_size: int, steps: int, seed: int
               ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each training step's (control cell rows [B], perturbation indices [B]), drawn with replacement, seeded."""
    rng = np.random.default_rng(seed)
    return [(torch.from_numpy(rng.choice(ctrl_rows, batch_size)), torch.from_numpy(rng.integers(0, n_perts, batch_size)))
            for _ in range(steps)]


def fit_perturbation(loaded, cells: CellSet, cfg: PerturbationConfig | None = None) -> PerturbationModel:
    """Train the head on a Perturb-seq style file (all of `cells` are training cells)."""
    cfg = cfg or PerturbationConfig()
    labels = _labels(cells, cfg.perturbation_key)
    is_ctrl = labels == cfg.control
    if is_ctrl.sum() < 2:
        raise QueryError(f"{cells.path.name}: fewer than 2 control cells ({cfg.perturbation_key} == {cfg.control!r})")
    perts = sorted(set(labels[~is_ctrl]))
    if not perts:
        raise QueryError(f"{cells.path.name}: no perturbed cells (every {cfg.perturbation_key} is {cfg.control!r})")
    ids = {p: perturbation_genes(loaded, cells, p) for p in perts}
    ok = cells.var_token_ids > UNK
    x_all = dense_columns(loaded, cells, np.flatnonzero(ok))
    var = x_all[is_ctrl].var(0)
    keep = np.sort(np.argsort(-var, kind="stable")[: cfg.n_response_genes])
    x = x_all[:, keep]
    genes = [cells.symbols[i] for i in np.flatnonzero(ok)[keep]]
    z = embed_cells(loaded, cells)
    groups = _groups(cells, cfg.group_key)
    ctrl_mean = x[is_ctrl].mean(0)
    delta = {p: x[labels == p].mean(0) - ctrl_mean for p in perts}
    baseline = np.mean(list(delta.values()), axis=0)
    # targets[p, group]: the perturbation's mean change within the group (population change if too few cells)
    n_groups = int(groups.max()) + 1
    targets = np.empty((len(perts), n_groups, len(genes)), dtype=np.float32)
    for j in range(n_groups):
        ctrl_g = is_ctrl & (groups == j)
        for i, p in enumerate(perts):
            sel = (labels == p) & (groups == j)
            enough = sel.sum() >= cfg.min_group_cells and ctrl_g.sum() >= cfg.min_group_cells
            targets[i, j] = x[sel].mean(0) - x[ctrl_g].mean(0) if enough else delta[p]
    ctrl_rows = np.flatnonzero(is_ctrl)
    reps = gene_representation(loaded, [ids[p] for p in perts])

    torch.manual_seed(cfg.seed)
    head = PerturbationHead(z.shape[1], reps.shape[1], len(genes), cfg.hidden)
    zt, tt, gt = torch.from_numpy(z).float(), torch.from_numpy(targets), torch.from_numpy(groups)

    def loss_fn(h: PerturbationHead, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        ctrl, pert = batch
        return torch.nn.functional.mse_loss(h(zt[ctrl], reps[pert]), tt[pert, gt[ctrl]])

    losses = fit_head(head, loss_fn, step_pairs(ctrl_rows, len(perts), cfg.batch_size, cfg.steps, cfg.seed),
                      lr=cfg.lr, weight_decay=cfg.weight_decay, seed=cfg.seed, width=cfg.hidden,
                      name="perturbation head", hint="lower its lr")
    tail = max(1, cfg.steps // 10)
    return PerturbationModel(head.eval(), cfg, genes, baseline, perts,
                             {"train_loss_first": float(np.mean(losses[:tail])), "train_loss_last": float(np.mean(losses[-tail:])),
                              "train_cells": len(cells), "perturbations": len(perts)},
                             np.stack([delta[p] for p in perts]).astype(np.float32))


# ----------------------------------------------------------------------------- evaluation
METRICS = ("pearson_delta", "mae", "discrimination_score_l1", "overlap_at_N")
HIGHER_IS_BETTER = {"pearson_delta": True, "mae": False, "discrimination_score_l1": True, "overlap_at_N": True}
BASELINES = {
    "control_mean": "no change: the held-out control cells as they are",
    "mean_perturbation": "the mean change over the training perturbations",
    "linear": "linear model Y = G W P^T + b fitted on the training perturbations (Ahlmann-Eltze et al. 2024: "
              "G, P from a PCA of the training changes, ridge W)",
    "additive": "doubles A+B: the sum of the single effects of A and B (both trained singles only)",
}


def components(label: str) -> list[str]:
    """The genes of a perturbation label: 'A' -> [A], 'A+B' -> [A, B]."""
    return [g.strip() for g in str(label).split("+") if g.strip()]


class LinearBaseline:
    """The linear perturbation model of Ahlmann-Eltze, Huber & Anders (2024), fitted on training changes.

    Y [G, P] (training perturbations' mean changes) = G_emb W P_emb^T + b: G_emb [G, K] the top-K principal
    directions of the centred Y over genes, a perturbation's P_emb row the sum of its genes' G_emb rows, W
    by ridge regression, b the mean change. A gene outside the response genes adds nothing (-> b)."""

    def __init__(self, train_deltas: np.ndarray, trained: list[str], genes: list[str], k: int = 10, ridge: float = 0.1):
        y = np.asarray(train_deltas, dtype=np.float64).T  # [G, P]
        self.b = y.mean(1)
        yc = y - self.b[:, None]
        u, s, _ = np.linalg.svd(yc, full_matrices=False)
        k = max(1, min(k, len(s)))
        self.g_emb = u[:, :k] * s[:k]
        self.index = {g.upper(): i for i, g in enumerate(genes)}
        p = np.stack([self.embed(lab) for lab in trained])  # [P, K]
        gtg = self.g_emb.T @ self.g_emb + ridge * np.eye(k)
        ptp = p.T @ p + ridge * np.eye(k)
        self.w = np.linalg.solve(gtg, self.g_emb.T @ yc @ p) @ np.linalg.inv(ptp)

    def embed(self, label: str) -> np.ndarray:
        """P_emb row [K] of a perturbation: the sum of its genes' G_emb rows."""
        out = np.zeros(self.g_emb.shape[1])
        for g in components(label):
            if g.upper() in self.index:
                out += self.g_emb[self.index[g.upper()]]
        return out

    def predict(self, label: str) -> np.ndarray:
        """Predicted mean change [G] of `label`."""
        return self.g_emb @ self.w @ self.embed(label) + self.b


def _category(label: str, trained: set[str]) -> str:
    if label in trained:
        return "seen"
    if all(g in trained for g in components(label)):
        return "held_out_seen_genes"
    return "unseen_genes"


def _cell_eval(real, pred, outdir: Path) -> dict[str, dict[str, float]]:
    """Per-perturbation cell-eval metrics {pert: {metric: value}}; `pred` carries the REAL control cells."""
    import logging

    from cell_eval import MetricsEvaluator

    # cell-eval warns of every infinite log2 fold change (a gene absent from one side), benign for these metrics:
    # like other libraries' notes, shown with the CLI's --verbose only
    level = logging.WARNING if logging.getLogger().getEffectiveLevel() <= logging.INFO else logging.ERROR
    logging.getLogger("cell_eval").setLevel(level)
    logging.getLogger("pdex").setLevel(level)
    ev = MetricsEvaluator(pred, real, control_pert="control", pert_col="perturbation", num_threads=1,
                          outdir=str(outdir), allow_discrete=False)
    res, _ = ev.compute(profile="minimal", write_csv=False)
    rows = res.to_dicts()
    return {str(r["perturbation"]): {m: (float(r[m]) if r.get(m) is not None else float("nan")) for m in METRICS}
            for r in rows}


def _mean_ci(values: list[float], seed: int = 0, n_boot: int = 2000) -> tuple[float, list[float]]:
    """Mean and bootstrap 95% interval over perturbations (NaNs dropped)."""
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=np.float64)
    if not v.size:
        return float("nan"), [float("nan"), float("nan")]
    rng = np.random.default_rng(seed)
    boot = v[rng.integers(0, v.size, (n_boot, v.size))].mean(1)
    return float(v.mean()), [float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))]


def normalised(metric: str, value: float, mean_baseline: float) -> float:
    """Improvement over the mean baseline, Virtual-Cell-Challenge style: (m - b) / (1 - b) for scores
    bounded by 1 (pearson_delta, discrimination_score_l1, overlap_at_N), (b - m) / b for mae; > 0 is better."""
    if not (np.isfinite(value) and np.isfinite(mean_baseline)):
        return float("nan")
    if HIGHER_IS_BETTER[metric]:
        return float((value - mean_baseline) / max(1.0 - mean_baseline, 1e-9))
    return float((mean_baseline - value) / max(mean_baseline, 1e-9))


def evaluate_perturbation(loaded, pm: PerturbationModel, cells: CellSet, seed: int = 0,
                          outdir: str | Path | None = None) -> dict:
    """Score the head and every baseline on held-out cells with cell-eval (pearson_delta, mae,
    discrimination_score_l1, overlap_at_N), against the REAL held-out control cells.

    Each held-out perturbation's predicted cells are real held-out control cells (as many as it has real
    cells, drawn with a seed) plus the predicted change; the control cells in every predicted file are
    the real ones. Perturbations fall in three groups: `seen` (trained, new cells), `held_out_seen_genes`
    (not trained, every gene trained as a single: e.g. a held-out double) and `unseen_genes`. Per group:
    each metric's mean over perturbations with a bootstrap 95% interval, raw and normalised against the
    mean baseline (see `normalised`)."""
    import tempfile

    import anndata as ad
    import pandas as pd

    labels = _labels(cells, pm.cfg.perturbation_key)
    is_ctrl = labels == pm.cfg.control
    if is_ctrl.sum() < 2:
        raise QueryError("evaluation needs 2 or more held-out control cells")
    perts = sorted(set(labels[~is_ctrl]))
    if not perts:
        raise QueryError("no perturbed held-out cells to evaluate")
    cols = np.array([cells.column(g) for g in pm.genes])
    x = dense_columns(loaded, cells, cols)
    z = embed_cells(loaded, cells)
    trained = set(pm.trained)
    deltas = dict(zip(pm.trained, pm.train_deltas)) if pm.train_deltas is not None else {}
    linear = LinearBaseline(pm.train_deltas, pm.trained, pm.genes) if pm.train_deltas is not None else None
    rng = np.random.default_rng(seed)
    ctrl_rows = np.flatnonzero(is_ctrl)
    draws = {p: rng.choice(ctrl_rows, int((labels == p).sum())) for p in perts}
    additive_ok = {p for p in perts if len(components(p)) > 1 and all(g in deltas for g in components(p))}

    def change(method: str, p: str, rows: np.ndarray) -> np.ndarray:
        if method == "model":
            r = gene_representation(loaded, [perturbation_genes(loaded, cells, p)]).expand(len(rows), -1)
            return pm.head(torch.from_numpy(z[rows]).float(), r).numpy()
        if method == "control_mean":
            return np.zeros((len(rows), len(pm.genes)), dtype=np.float32)
        if method == "linear" and linear is not None:
            return np.broadcast_to(linear.predict(p), (len(rows), len(pm.genes)))
        if method == "additive" and p in additive_ok:
            return np.broadcast_to(sum(deltas[g] for g in components(p)), (len(rows), len(pm.genes)))
        return np.broadcast_to(pm.baseline_delta, (len(rows), len(pm.genes)))

    var = pd.DataFrame(index=pd.Index(pm.genes).astype(str))
    var = var[~var.index.duplicated()]
    keep_cols = np.flatnonzero(~pd.Index(pm.genes).duplicated())
    real_rows = np.concatenate([ctrl_rows, *[np.flatnonzero(labels == p) for p in perts]])
    obs = pd.DataFrame({"perturbation": labels[real_rows]}, index=[f"r{i}" for i in range(len(real_rows))])
    real = ad.AnnData(x[real_rows][:, keep_cols].astype(np.float32), obs=obs, var=var)
    methods = ["model", "control_mean", "mean_perturbation"] + (["linear"] if linear is not None else []) + \
              (["additive"] if additive_ok else [])
    per: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(outdir) if outdir is not None else Path(tmp)
        for method in methods:
            with torch.no_grad():
                blocks = [np.clip(x[draws[p]] + change(method, p, draws[p]), 0, None) for p in perts]
            pred_x = np.concatenate([x[ctrl_rows], *blocks])[:, keep_cols].astype(np.float32)
            pred_obs = pd.DataFrame({"perturbation": np.concatenate([labels[ctrl_rows], *[[p] * len(draws[p]) for p in perts]])},
                                    index=[f"p{i}" for i in range(len(pred_x))])
            per[method] = _cell_eval(real, ad.AnnData(pred_x, obs=pred_obs, var=var), base / method)
    groups: dict[str, list[str]] = {}
    for p in perts:
        groups.setdefault(_category(p, trained), []).append(p)
    out: dict = {"n_cells": len(cells), "n_control_cells": int(is_ctrl.sum()), "scorer": "cell-eval (minimal profile)",
                 "baselines": BASELINES, "metrics": list(METRICS),
                 "perturbations": {p: {"category": _category(p, trained), "cells": int((labels == p).sum()),
                                       **{m: per[m][p] for m in methods if p in per[m] and (m != "additive" or p in additive_ok)}}
                                   for p in perts}}
    for group, members in groups.items():
        table: dict[str, dict] = {}
        for m in methods:
            use = [p for p in members if m != "additive" or p in additive_ok]
            if not use:
                continue
            table[m] = {"n": len(use)}
            for metric in METRICS:
                mean, ci = _mean_ci([per[m][p][metric] for p in use if p in per[m]], seed)
                table[m][metric], table[m][f"{metric}_ci95"] = mean, ci
        for m in table:
            ref = table.get("mean_perturbation", {})
            for metric in METRICS:
                table[m][f"{metric}_normalised"] = normalised(metric, table[m][metric], ref.get(metric, float("nan")))
        out[group] = table
    return out
