"""Masked expression imputation with the model's trained masked-modelling head.

A gene's value is hidden (its token stays, the value becomes the mask embedding) and predicted
from the rest of the cell, exactly as in pre-training. Values are in the model's token units
(`data.omics.tokens.value_mode`: per-cell quantile bins by default). Evaluation hides a random
fraction of expressed genes in held-out cells and compares with the per-gene mean baseline."""
from __future__ import annotations

import numpy as np
import torch

from biomm.vocab.genes import UNK
from biomm.heads.cells.cellset import CellSet, iter_chunks, tokenizer_for
from biomm.schema import QueryError
from biomm.types import Batch, ModalityInput


def masked_objective(loaded):
    """The trained masked-modelling objective (with its omics head)."""
    objs = loaded.objectives().objectives
    if "masked" not in objs or "omics" not in objs["masked"].heads:
        raise QueryError(f"model {loaded.folder.name} was trained without masked expression modelling "
                         "(model.objectives.masked with omics): it cannot impute")
    return objs["masked"]


@torch.no_grad()
def predict_hidden(loaded, head, tensors: dict[str, torch.Tensor], hide: torch.Tensor) -> torch.Tensor:
    """Predicted values at the `hide` positions (row-major order)."""
    t = loaded.model.adapters["omics"]({**tensors, "mlm_mask": hide})
    return head(t.x[hide]).float().squeeze(-1)


def _hide_genes(tensors: dict[str, torch.Tensor], gene_ids: list[int]) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """Drop the genes' own tokens, append one hidden token per gene. Returns (tensors, hide, observed [B, G])."""
    genes, values, mask = tensors["genes"], tensors["values"], tensors["mask"]
    b = genes.shape[0]
    ids = torch.tensor(gene_ids, dtype=torch.long)
    hit = (genes[:, :, None] == ids) & mask[:, :, None]  # [B, T, G]
    observed = torch.where(hit.any(1), (values[:, :, None] * hit).sum(1), torch.full((b, len(ids)), float("nan")))
    drop = hit.any(2)
    genes = torch.cat([genes.masked_fill(drop, 0), ids.expand(b, -1)], 1)
    values = torch.cat([values.masked_fill(drop, 0.0), torch.zeros(b, len(ids))], 1)
    mask = torch.cat([mask & ~drop, torch.ones(b, len(ids), dtype=torch.bool)], 1)
    hide = torch.zeros_like(mask)
    hide[:, -len(ids):] = True
    return {"genes": genes, "values": values, "mask": mask}, hide, observed


def impute(loaded, cells: CellSet, genes: list[str], batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(predicted [N, G], observed [N, G]) values of `genes` in each cell; observed is NaN where the
    gene is not among the cell's tokens (not expressed, or outside its top-k)."""
    head = masked_objective(loaded).heads["omics"]
    gene_ids = []
    for g in genes:
        tid = int(cells.var_token_ids[cells.column(g)])
        if tid <= UNK:
            raise QueryError(f"gene {g!r} has no embedding in model {loaded.folder.name}")
        gene_ids.append(tid)
    # hide as many genes per pass as pre-training hid per cell, so the context looks like training
    per_pass = max(1, int(round(loaded.model.config.objectives.masked.ratio * loaded.config.data.omics.tokens.top_k)))
    tok = tokenizer_for(loaded, cells)
    preds, obs = [], []
    for _, x in iter_chunks(cells, batch_size, loaded.config.data.omics.layer):
        base = tok(x)
        p_parts, o_parts = [], []
        for g in range(0, len(gene_ids), per_pass):
            t, hide, o = _hide_genes(base, gene_ids[g: g + per_pass])
            p_parts.append(predict_hidden(loaded, head, t, hide).reshape(hide.shape[0], -1))
            o_parts.append(o)
        preds.append(torch.cat(p_parts, 1).numpy())
        obs.append(torch.cat(o_parts, 1).numpy())
    return np.concatenate(preds), np.concatenate(obs)


def gene_means(loaded, cells: CellSet, batch_size: int = 256) -> tuple[np.ndarray, float]:
    """Per-gene-token mean value over the cells where the gene is a token (NaN if never), and the overall mean."""
    n = loaded.model.config.adapters["omics"].n_genes
    total, count = np.zeros(n), np.zeros(n)
    tok = tokenizer_for(loaded, cells)
    for _, x in iter_chunks(cells, batch_size, loaded.config.data.omics.layer):
        t = tok(x)
        sel = t["mask"] & (t["genes"] > UNK)
        g, v = t["genes"][sel].numpy(), t["values"][sel].numpy()
        total += np.bincount(g, v, n)
        count += np.bincount(g, minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = total / count
    return means, float(total.sum() / max(count.sum(), 1))


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1]) if len(a) > 1 and a.std() > 0 and b.std() > 0 else float("nan")


def evaluate_imputation(loaded, cells: CellSet, reference: CellSet, seed: int = 0, batch_size: int = 256) -> dict:
    """Hide a random fraction (the pre-training ratio) of each held-out cell's expressed genes;
    model MSE / Pearson against the per-gene mean of `reference` (training) cells."""
    objective = masked_objective(loaded)
    head = objective.heads["omics"]
    means, overall = gene_means(loaded, reference, batch_size)
    gen = torch.Generator().manual_seed(seed)
    tok = tokenizer_for(loaded, cells)
    pred, base, true = [], [], []
    for _, x in iter_chunks(cells, batch_size, loaded.config.data.omics.layer):
        t = tok(x)
        batch = objective.mask_batch(Batch({"omics": ModalityInput(t, torch.ones(x.shape[0], dtype=torch.bool))},
                                           [str(i) for i in range(x.shape[0])]), gen)
        hide = batch.modalities["omics"].tensors["mlm_mask"] & (t["genes"] > UNK)
        pred.append(predict_hidden(loaded, head, t, hide).numpy())
        g = t["genes"][hide].numpy()
        base.append(np.where(np.isnan(means[g]), overall, means[g]))
        true.append(t["values"][hide].numpy())
    pred, base, true = np.concatenate(pred), np.concatenate(base), np.concatenate(true)
    return {"n_cells": len(cells), "n_hidden": int(len(true)),
            "mse": float(np.mean((pred - true) ** 2)), "baseline_mse": float(np.mean((base - true) ** 2)),
            "pearson": _pearson(pred, true), "baseline_pearson": _pearson(base, true),
            "baseline": "per-gene mean value over the reference (training) cells"}
