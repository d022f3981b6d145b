"""A Perturb-seq-shaped data set made from real cells: the ingested PBMCs, with CRISPRi-like
knock-downs applied in silico (no real Perturb-seq data ships with the project).

A cell "perturbed" at gene g keeps 10% of its g expression; g's most correlated genes (measured on
these cells) lose expression in proportion to that correlation and to the cell's own g level, and a
fixed downstream program of 10 genes per target shifts by +-0.8 where expressed. Effects therefore
depend on both the gene and the cell's state, as real responses do."""
from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import scipy.sparse as sp


def simulate_knockdowns(src: Path, out: Path, n_targets: int = 12, control_fraction: float = 0.4,
                        seed: int = 0) -> tuple[Path, list[str]]:
    """A Perturb-seq-shaped .h5ad from real cells: CRISPRi-like knockdowns of `n_targets` genes, the rest controls; returns (path, targets)."""
    rng = np.random.default_rng(seed)
    a = ad.read_h5ad(src)
    x = a.X.toarray() if sp.issparse(a.X) else np.asarray(a.X)
    expressed = (x > 0).mean(0)
    candidates = np.flatnonzero((expressed > 0.3) & (a.var["vocab_id"].to_numpy() > 4))
    targets = rng.choice(candidates, n_targets, replace=False)
    corr = np.nan_to_num(np.corrcoef(x.T))
    labels = np.full(a.n_obs, "control", dtype=object)
    perturbed = rng.permutation(a.n_obs)[int(control_fraction * a.n_obs):]
    y = x.copy()
    symbols = list(a.var["gene_symbol"].astype(str))
    for i, rows in enumerate(np.array_split(perturbed, n_targets)):
        g = targets[i]
        labels[rows] = symbols[g]
        level = x[rows, g][:, None]
        partners = [h for h in np.argsort(-np.abs(corr[g])) if h != g][:15]
        y[np.ix_(rows, partners)] -= 1.5 * corr[g, partners] * level
        program = rng.choice(np.setdiff1d(np.arange(a.n_vars), [g, *partners]), 10, replace=False)
        y[np.ix_(rows, program)] += rng.choice([-0.8, 0.8], 10) * (x[np.ix_(rows, program)] > 0)
        y[rows, g] = 0.1 * x[rows, g]
    y = np.clip(y, 0, None).astype(np.float32)
    obs = a.obs[["bulk_labels"]].copy()
    obs["perturbation"] = labels.astype(str)
    sim = ad.AnnData(sp.csr_matrix(y), obs=obs, var=a.var[["vocab_id", "gene_symbol", "highly_variable"]].copy())
    sim.write_h5ad(out)
    return out, [symbols[g] for g in targets]
