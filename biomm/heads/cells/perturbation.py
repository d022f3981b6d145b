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
from biomm.vocab.genes import UNK
from biomm.heads.cells.cellset import CellSet, embed_cells, iter_chunks
from biomm.schema import QueryError
from biomm.train.heads import fit_head


class PerturbationConfig(StrictModel):
    """The perturbation-response head: which obs columns say what was perturbed, its size and training."""

    perturbation_key: str = Field("perturbation", description="obs column naming each cell's perturbed gene(s), 'A+B' for combinations")
    control: str = Field("control", description="Value of perturbation_key marking control cells")
    group_key: str | None = Field(None, description="obs column (e.g. cell type): pair perturbed cells with controls of their group")
    n_response_genes: int = Field(2000, ge=1, description="The most variable genes (over control cells) whose change is predicted")
    min_group_cells: int = Field(3, ge=1, description="Fewer perturbed cells in a group: use the population's change")
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
    """The model's gene-table rows [P, W], summed over each perturbation's genes."""
    table = loaded.model.adapters["omics"].encoder.gene
    return torch.stack([table(torch.tensor(ids)).float().sum(0) for ids in token_ids])


def perturbation_genes(loaded, cells: CellSet, label: str) -> list[int]:
    """Gene token ids of a perturbation label ('GATA1' or 'GATA1+CEBPA'); errors name the unknown gene."""
    from biomm.vocab.genes import GeneVocab

    n_genes = loaded.model.config.adapters["omics"].n_genes
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
        save_file({**{f"head.{k}": v.contiguous() for k, v in self.head.state_dict().items()},
                   "baseline_delta": torch.from_numpy(self.baseline_delta.astype(np.float32))},
                  str(folder / "perturbation.safetensors"))
        shapes = {"d": self.head.cell[0].normalized_shape[0], "w": self.head.gene[0].normalized_shape[0]}
        (folder / "perturbation.json").write_text(json.dumps({
            "config": self.cfg.model_dump(), "genes": self.genes, "trained": self.trained,
            "metrics": self.metrics, **shapes}, indent=2))

    @classmethod
    def load(cls, folder: Path) -> "PerturbationModel":
        """Read what `save` wrote, in eval mode."""
        info = json.loads((folder / "perturbation.json").read_text())
        cfg = PerturbationConfig.model_validate(info["config"])
        t = load_file(str(folder / "perturbation.safetensors"))
        head = PerturbationHead(info["d"], info["w"], len(info["genes"]), cfg.hidden)
        head.load_state_dict({k[5:]: v for k, v in t.items() if k.startswith("head.")})
        return cls(head.eval(), cfg, info["genes"], t["baseline_delta"].numpy(), info["trained"], info["metrics"])


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
                              "train_cells": int(len(cells)), "perturbations": len(perts)})


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else float("nan")


def evaluate_perturbation(loaded, pm: PerturbationModel, cells: CellSet, top_de: int = 20) -> dict:
    """On held-out cells: per perturbation, observed change (mean perturbed - mean control over these
    cells) against the predicted change (mean over these control cells) and the mean baseline.
    Pearson and MSE of the change over all response genes and over the `top_de` most changed genes."""
    labels = _labels(cells, pm.cfg.perturbation_key)
    is_ctrl = labels == pm.cfg.control
    if is_ctrl.sum() < 2:
        raise QueryError("evaluation needs 2 or more held-out control cells")
    cols = np.array([cells.column(g) for g in pm.genes])
    x = dense_columns(loaded, cells, cols)
    z = embed_cells(loaded, cells)
    ctrl_mean = x[is_ctrl].mean(0)
    per: dict[str, dict] = {}
    for p in sorted(set(labels[~is_ctrl])):
        obs = x[labels == p].mean(0) - ctrl_mean
        pred = pm.predict(loaded, p, cells.subset(np.flatnonzero(is_ctrl)), z[is_ctrl]).mean(0)
        de = np.argsort(-np.abs(obs))[:top_de]
        per[p] = {"cells": int((labels == p).sum()), "seen": p in pm.trained,
                  "pearson_delta": _pearson(pred, obs), "baseline_pearson_delta": _pearson(pm.baseline_delta, obs),
                  "pearson_delta_top_de": _pearson(pred[de], obs[de]),
                  "baseline_pearson_delta_top_de": _pearson(pm.baseline_delta[de], obs[de]),
                  "mse": float(np.mean((pred - obs) ** 2)), "baseline_mse": float(np.mean((pm.baseline_delta - obs) ** 2)),
                  "mse_top_de": float(np.mean((pred[de] - obs[de]) ** 2)),
                  "baseline_mse_top_de": float(np.mean((pm.baseline_delta[de] - obs[de]) ** 2))}
    out: dict = {"n_cells": len(cells), "perturbations": per,
                 "baseline": "mean change over the training perturbations"}
    for group, sel in (("seen", True), ("unseen", False)):
        rows = [v for v in per.values() if v["seen"] is sel]
        if rows:
            out[group] = {k: float(np.nanmean([r[k] for r in rows])) for k in rows[0] if k not in ("cells", "seen")}
            out[group]["n"] = len(rows)
    return out
