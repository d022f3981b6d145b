"""A SIMULATED Perturb-seq-shaped data set made from real cells: the ingested PBMCs, with CRISPRi-like
knock-downs applied in silico (no real Perturb-seq data ships with the project). The expression of
the cells is real; every perturbation effect in the file is simulated, and `uns["simulated"]` says so.

A cell "perturbed" at gene g keeps 10% of its g expression; g's most correlated genes (measured on
these cells) lose expression in proportion to that correlation and to the cell's own g level, and a
fixed downstream program of 10 genes per target shifts by +-0.8 where expressed. Effects therefore
depend on both the gene and the cell's state, as real responses do. A double perturbation "A+B"
applies both knock-downs to the same cell, one after the other; the floor at zero and the shared
partner genes make the combined effect differ from the sum of the single effects."""
from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import scipy.sparse as sp


def _knockdown(x: np.ndarray, y: np.ndarray, rows: np.ndarray, g: int, corr: np.ndarray,
               program: np.ndarray, signs: np.ndarray) -> None:
    """Apply target g's simulated effect in place to `y[rows]` (levels read from the unperturbed `x`)."""
    level = x[rows, g][:, None]
    partners = [h for h in np.argsort(-np.abs(corr[g])) if h != g][:15]
    y[np.ix_(rows, partners)] -= 1.5 * corr[g, partners] * level
    y[np.ix_(rows, program)] += signs * (x[np.ix_(rows, program)] > 0)
    y[rows, g] = 0.1 * x[rows, g]
    np.clip(y, 0, None, out=y)


def simulate_knockdowns(src: Path, out: Path, n_targets: int = 12, control_fraction: float = 0.4,
                        seed: int = 0, n_doubles: int = 0, copies: int = 1) -> tuple[Path, list[str]]:
    """A SIMULATED Perturb-seq-shaped .h5ad from real cells: CRISPRi-like knock-downs of `n_targets` genes
    and `n_doubles` pairs of them ("A+B"), the rest controls; each real cell appears `copies` times
    (each copy drawn its own perturbation, names suffixed '-c<i>'). Returns (path, single targets)."""
    rng = np.random.default_rng(seed)
    a = ad.read_h5ad(src)
    if copies > 1:
        a = ad.concat([a] * copies, merge="same", keys=[str(i) for i in range(copies)], index_unique="-c")
    x = a.X.toarray() if sp.issparse(a.X) else np.asarray(a.X)
    expressed = (x > 0).mean(0)
    candidates = np.flatnonzero((expressed > 0.3) & (a.var["vocab_id"].to_numpy() > 4))
    targets = rng.choice(candidates, n_targets, replace=False)
    corr = np.nan_to_num(np.corrcoef(x.T))
    symbols = list(a.var["gene_symbol"].astype(str))
    effects = {}
    for g in targets:
        partners = [h for h in np.argsort(-np.abs(corr[g])) if h != g][:15]
        program = rng.choice(np.setdiff1d(np.arange(a.n_vars), [g, *partners]), 10, replace=False)
        effects[int(g)] = (program, rng.choice([-0.8, 0.8], 10))
    pairs: list[tuple[int, int]] = []
    all_pairs = [(int(i), int(j)) for k, i in enumerate(targets) for j in targets[k + 1:]]
    for p in rng.permutation(len(all_pairs))[:n_doubles]:
        pairs.append(all_pairs[p])
    labels = np.full(a.n_obs, "control", dtype=object)
    perturbed = rng.permutation(a.n_obs)[int(control_fraction * a.n_obs):]
    y = x.copy()
    groups = [[int(g)] for g in targets] + [list(p) for p in pairs]
    for genes, rows in zip(groups, np.array_split(perturbed, len(groups))):
        labels[rows] = "+".join(symbols[g] for g in genes)
        for g in genes:
            _knockdown(x, y, rows, g, corr, *effects[g])
    y = np.clip(y, 0, None).astype(np.float32)
    obs = a.obs[["bulk_labels"]].copy()
    obs["perturbation"] = labels.astype(str)
    sim = ad.AnnData(sp.csr_matrix(y), obs=obs, var=a.var[["vocab_id", "gene_symbol", "highly_variable"]].copy())
    sim.uns["simulated"] = ("SIMULATED perturbations: in-silico knock-downs applied to real PBMC expression; "
                            "no effect in this file was measured")
    sim.write_h5ad(out)
    return out, [symbols[g] for g in targets]
