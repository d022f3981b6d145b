"""Masked expression imputation with the model's trained masked-modelling head, on the HVG matrix.

Values of chosen (cell, gene) entries of the highly variable genes are hidden, zeros included, and
predicted from the rest of the cell, exactly as in pre-training: the mlp encoder sees the HVG vector
with those entries zeroed and flagged; the transformer sees the visible genes as tokens plus one
hidden-value token per hidden gene. Predictions are in expression units (log-normalised values),
so a model whose tokenizer bins values (`value_mode: binned`) cannot be scored here.

`evaluate_imputation` hides a random fraction of the entries of held-out cells and compares the
model (its masked prediction blended with the values of its nearest reference cells in the model's
embedding, `NeighbourBlend`; the masked head alone is reported too) with the per-gene mean and kNN smoothing (the mean over the 15 nearest reference cells
in PCA space, MAGIC-style), all fitted on the reference (training) cells, on the same entries."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from sklearn.decomposition import PCA

from biomm.heads.cells.cellset import (
    CellSet,
    hvg_positions,
    iter_chunks,
    omics_config,
    tokenizer_for,
)
from biomm.schema import QueryError
from biomm.vocab.genes import UNK


def masked_objective(loaded):
    """The trained masked-modelling objective (with its omics head)."""
    objs = loaded.objectives().objectives
    if "masked" not in objs or "omics" not in objs["masked"].heads:
        raise QueryError(f"model {loaded.folder.name} was trained without masked expression modelling "
                         "(model.objectives.masked with omics): it cannot impute")
    return objs["masked"]


def eval_columns(loaded, cells: CellSet) -> np.ndarray:
    """The file columns imputation works on: the model's HVGs present in the file (mlp), or the
    file's HVGs the model has a token for (transformer)."""
    if omics_config(loaded).encoder == "mlp":
        pos = hvg_positions(loaded, cells)
        return pos[pos >= 0]
    ok = cells.var_token_ids > UNK
    if cells.hvg is not None:
        ok &= cells.hvg
    return np.flatnonzero(ok)


class MaskedImputer:
    """Predicts hidden entries of the HVG matrix: `__call__(x CSR [B, n_vars], hide [B, C] bool)` -> [B, C]
    predictions (meaningful where `hide`), C = `len(columns)`."""

    def __init__(self, loaded, cells: CellSet, columns: np.ndarray):
        if loaded.config.data.omics.tokens.value_mode == "binned" and omics_config(loaded).encoder == "transformer":
            raise QueryError("imputation is scored in expression units; this model's tokens are per-cell bins "
                             "(data.omics.tokens.value_mode: binned)")
        self.loaded, self.columns = loaded, np.asarray(columns, dtype=np.int64)
        self.head = masked_objective(loaded).heads["omics"]
        self.adapter = loaded.model.adapters["omics"]
        self.mlp = omics_config(loaded).encoder == "mlp"
        if self.mlp:
            pos = hvg_positions(loaded, cells)
            self.positions = pos
            index = {int(c): j for j, c in enumerate(pos) if c >= 0}
            self.model_index = np.array([index[int(c)] for c in self.columns], dtype=np.int64)
        else:
            self.tokenizer = tokenizer_for(loaded, cells)
            self.token_ids = torch.from_numpy(cells.var_token_ids[self.columns].astype(np.int64))

    def _visible_inputs(self, x: sp.csr_matrix, hide: np.ndarray) -> dict[str, torch.Tensor]:
        """The adapter's inputs for the cells with the hidden entries `hide` [B, C] removed: the HVG vector `x`
        [B, G] with its `mlm_mask` (MLP encoder), or the tokens of the visible values (transformer)."""
        dense = x.toarray()
        block = dense[:, self.columns]
        block[hide] = 0.0
        dense[:, self.columns] = block
        if self.mlp:
            v = np.zeros((x.shape[0], len(self.positions)), dtype=np.float32)
            ok = self.positions >= 0
            v[:, ok] = dense[:, self.positions[ok]]
            h = np.zeros_like(v, dtype=bool)
            h[:, self.model_index] = hide
            return {"x": torch.from_numpy(v), "mlm_mask": torch.from_numpy(h)}
        tok = self.tokenizer(sp.csr_matrix(dense))
        n = max(int(tok["mask"].sum(1).max()), 1)
        return {k: v[:, :n] for k, v in tok.items()}

    @torch.no_grad()
    def embed_visible(self, x: sp.csr_matrix, hide: np.ndarray) -> np.ndarray:
        """Omics embeddings [B, D] of the cells from their visible values only (hidden entries removed)."""
        return self.loaded.model.embed("omics", self._visible_inputs(x, hide)).float().numpy()

    @torch.no_grad()
    def __call__(self, x: sp.csr_matrix, hide: np.ndarray) -> np.ndarray:
        tok = self._visible_inputs(x, hide)
        if self.mlp:
            t = self.adapter(tok)
            return self.head(t.x[:, 0]).float().numpy()[:, self.model_index]
        hide_t = torch.from_numpy(hide)
        k = max(int(hide_t.sum(1).max()), 1)
        order = torch.argsort((~hide_t).to(torch.int8), dim=1, stable=True)[:, :k]  # hidden columns first, in order
        extra_mask = torch.gather(hide_t, 1, order)
        extra_genes = torch.where(extra_mask, self.token_ids[order], 0)
        genes = torch.cat([tok["genes"], extra_genes], 1)
        values = torch.cat([tok["values"], torch.zeros(extra_genes.shape)], 1)
        mask = torch.cat([tok["mask"], extra_mask], 1)
        mlm = torch.cat([torch.zeros_like(tok["mask"]), extra_mask], 1)
        t = self.adapter({"genes": genes, "values": values, "mask": mask, "mlm_mask": mlm})
        pred = np.zeros(hide.shape, dtype=np.float32)
        pred[hide] = self.head(t.x[mlm]).float().squeeze(-1).numpy()  # row-major, as `hide`
        return pred


def impute(loaded, cells: CellSet, genes: list[str], batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(predicted [N, G], observed [N, G]) values of `genes` in each cell, each gene hidden in turn
    with the others visible."""
    cols = np.array([cells.column(g) for g in genes], dtype=np.int64)
    if omics_config(loaded).encoder == "mlp":
        avail = set(eval_columns(loaded, cells).tolist())
        missing = [g for g, c in zip(genes, cols) if int(c) not in avail]
        if missing:
            raise QueryError(f"genes {missing} are not among the model's highly variable genes")
    imputer = MaskedImputer(loaded, cells, cols)
    preds, obs = [], []
    for _, x in iter_chunks(cells, batch_size, loaded.config.data.omics.layer):
        p = np.zeros((x.shape[0], len(cols)), dtype=np.float32)
        for j in range(len(cols)):
            hide = np.zeros((x.shape[0], len(cols)), dtype=bool)
            hide[:, j] = True
            p[:, j] = imputer(x, hide)[:, j]
        preds.append(p)
        obs.append(x[:, cols].toarray())
    return np.concatenate(preds), np.concatenate(obs)


def hidden_entries(n_cells: int, n_cols: int, ratio: float, seed: int) -> np.ndarray:
    """A seeded random [n_cells, n_cols] bool mask hiding `ratio` of each cell's entries (at least one)."""
    rng = np.random.default_rng(seed)
    hide = rng.random((n_cells, n_cols)) < ratio
    empty = ~hide.any(1)
    hide[np.flatnonzero(empty), rng.integers(0, n_cols, int(empty.sum()))] = True
    return hide


def dense_rows(loaded, cells: CellSet, columns: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """Dense [N, C] expression of `columns` for every selected cell."""
    return np.concatenate([x[:, columns].toarray() for _, x in iter_chunks(cells, batch_size, loaded.config.data.omics.layer)])


def knn_smoothing(ref: np.ndarray, query: np.ndarray, hide: np.ndarray, k: int = 15, n_pcs: int = 50) -> np.ndarray:
    """MAGIC-style baseline: each query cell's hidden entries [N, C] = the mean over its `k` nearest
    reference cells in PCA space (PCA of the reference; the query's hidden entries filled with the gene mean)."""
    mean = ref.mean(0)
    pca = PCA(n_components=min(n_pcs, ref.shape[1], ref.shape[0] - 1), random_state=0).fit(ref)
    filled = np.where(hide, mean, query)
    zr, zq = pca.transform(ref), pca.transform(filled)
    d = ((zq[:, None, :] - zr[None, :, :]) ** 2).sum(-1)
    nn_rows = np.argsort(d, axis=1)[:, :k]
    return ref[nn_rows].mean(1)


def _unit(a: np.ndarray) -> np.ndarray:
    return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)


def neighbour_mean(ref_emb: np.ndarray, ref_x: np.ndarray, query_emb: np.ndarray, k: int,
                   exclude_self: bool = False) -> np.ndarray:
    """Mean expression [N, C] of each query cell's `k` nearest reference cells by embedding cosine."""
    sims = _unit(query_emb) @ _unit(ref_emb).T
    if exclude_self:
        np.fill_diagonal(sims, -np.inf)
    rows = np.argpartition(-sims, kth=min(k, sims.shape[1] - 1), axis=1)[:, :k]
    return ref_x[rows].mean(1)


class NeighbourBlend:
    """The model's imputation head: its masked prediction (from the cell's own visible values) blended
    with the mean of the cell's k nearest reference cells in the model's embedding of the visible values.
    pred = w1 * masked + w2 * neighbours + w0 (three numbers shared by all genes), fitted by least squares
    on hidden entries of `calibration` cells (default: the reference cells, neighbours excluding themselves)."""

    def __init__(self, imputer: MaskedImputer, reference: CellSet, ratio: float, k: int = 15, seed: int = 1,
                 batch_size: int = 256, calibration: CellSet | None = None):
        self.imputer, self.k = imputer, k
        cols, layer = imputer.columns, imputer.loaded.config.data.omics.layer
        self.ref_x = dense_rows(imputer.loaded, reference, cols)
        self.ref_emb = np.concatenate([imputer.embed_visible(x, np.zeros((x.shape[0], len(cols)), dtype=bool))
                                       for _, x in iter_chunks(reference, batch_size, layer)])
        fit_on = calibration if calibration is not None else reference
        hide_all = hidden_entries(len(fit_on), len(cols), ratio, seed)
        vis, masked = [], []
        for s, x in iter_chunks(fit_on, batch_size, layer):
            hide = hide_all[s: s + x.shape[0]]
            vis.append(imputer.embed_visible(x, hide))
            masked.append(imputer(x, hide))
        nb = neighbour_mean(self.ref_emb, self.ref_x, np.concatenate(vis), k, exclude_self=calibration is None)
        m = np.concatenate(masked)
        truth = self.ref_x if calibration is None else dense_rows(imputer.loaded, calibration, cols)
        a = np.stack([m[hide_all], nb[hide_all], np.ones(int(hide_all.sum()))], 1)
        self.w = np.linalg.solve(a.T @ a + 1e-6 * np.eye(3), a.T @ truth[hide_all])  # one weight pair for all genes

    def __call__(self, x: sp.csr_matrix, hide: np.ndarray) -> np.ndarray:
        """Blended predictions [B, C] (meaningful where `hide`)."""
        m = self.imputer(x, hide)
        nb = neighbour_mean(self.ref_emb, self.ref_x, self.imputer.embed_visible(x, hide), self.k)
        return np.clip(self.w[0] * m + self.w[1] * nb + self.w[2], 0, None)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1]) if len(a) > 1 and a.std() > 0 and b.std() > 0 else float("nan")


def mse_interval(sq_err: np.ndarray, cell_of: np.ndarray, n_boot: int = 1000, seed: int = 0,
                 minus: np.ndarray | None = None) -> list[float]:
    """95% interval of the MSE by a bootstrap over cells (entries of one cell stay together); with `minus`
    (another method's squared errors on the same entries), of the paired difference of the two MSEs."""
    cells, inv = np.unique(cell_of, return_inverse=True)
    s, c = np.bincount(inv, sq_err), np.bincount(inv)
    if minus is not None:
        s = s - np.bincount(inv, minus)
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(cells), (n_boot, len(cells)))
    boot = s[pick].sum(1) / c[pick].sum(1)
    return [float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))]


HIDDEN_FRACTION = 0.25  # of each held-out cell's HVG values hidden for the imputation figures, whatever the model's
# pre-training ratio: models trained with different ratios are compared on the same task


def evaluate_imputation(loaded, cells: CellSet, reference: CellSet, seed: int = 0, batch_size: int = 256,
                        ratio: float = HIDDEN_FRACTION, k: int = 15, calibration: CellSet | None = None) -> dict:
    """Hide `ratio` (default `HIDDEN_FRACTION`, 25%) of the HVG entries of each held-out cell; MSE and
    Pearson of the model, the per-gene mean and kNN smoothing on the same entries, with 95% intervals.
    The model's blend weights are fitted on `calibration` cells (other held-out cells, e.g. the val split;
    default: the reference cells), its neighbours and both baselines come from the `reference` cells."""
    cols = eval_columns(loaded, cells)
    if not len(cols):
        raise QueryError(f"no highly variable gene of {cells.path.name} is known to the model")
    imputer = MaskedImputer(loaded, cells, cols)
    ref_cols = eval_columns(loaded, reference)
    if not np.array_equal(ref_cols, cols) and reference.path != cells.path:
        raise QueryError("the reference cells must come from the same file as the evaluated cells")
    ref = dense_rows(loaded, reference, cols)
    hide_all = hidden_entries(len(cells), len(cols), ratio, seed)
    blend = NeighbourBlend(imputer, reference, ratio, k, seed=seed + 1, batch_size=batch_size, calibration=calibration)
    model_pred, dae_pred, truth = [], [], []
    for s, x in iter_chunks(cells, batch_size, loaded.config.data.omics.layer):
        hide = hide_all[s: s + x.shape[0]]
        model_pred.append(blend(x, hide)[hide])
        dae_pred.append(imputer(x, hide)[hide])
        truth.append(x[:, cols].toarray())
    query = np.concatenate(truth)
    true = query[hide_all]
    cell_of = np.nonzero(hide_all)[0]
    preds = {"model": np.concatenate(model_pred), "model_masked_only": np.concatenate(dae_pred),
             "per_gene_mean": np.broadcast_to(ref.mean(0), query.shape)[hide_all],
             "knn_smoothing": knn_smoothing(ref, query, hide_all, k)[hide_all]}
    out: dict = {"n_cells": len(cells), "n_genes": len(cols), "n_hidden": int(hide_all.sum()),
                 "hidden_fraction": float(ratio), "reference_cells": len(reference),
                 "model": f"masked prediction blended with the {k} nearest reference cells in the model's embedding "
                          "(three blend weights fitted on the calibration cells); model_masked_only: the masked head alone",
                 "baselines": {"per_gene_mean": "mean of each gene over the reference (training) cells",
                               "knn_smoothing": f"mean over the {k} nearest reference cells in PCA space (50 PCs)"},
                 "methods": {}}
    knn_sq = (preds["knn_smoothing"] - true) ** 2
    for name, p in preds.items():
        sq = (p - true) ** 2
        nz = true > 0
        out["methods"][name] = {"mse": float(sq.mean()), "mse_ci95": mse_interval(sq, cell_of, seed=seed),
                                "pearson": _pearson(p, true), "mse_nonzero": float(sq[nz].mean()) if nz.any() else float("nan")}
        if name != "knn_smoothing":  # paired over the same cells and entries: negative = better than kNN smoothing
            out["methods"][name]["mse_minus_knn"] = float((sq - knn_sq).mean())
            out["methods"][name]["mse_minus_knn_ci95"] = mse_interval(sq, cell_of, seed=seed, minus=knn_sq)
    m = out["methods"]
    out.update({"mse": m["model"]["mse"], "baseline_mse": m["per_gene_mean"]["mse"], "knn_mse": m["knn_smoothing"]["mse"],
                "pearson": m["model"]["pearson"], "baseline_pearson": m["per_gene_mean"]["pearson"]})
    return out
