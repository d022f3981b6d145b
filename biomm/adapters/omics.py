"""Omics adapter: every highly variable gene of a cell, two ways.

- `mlp` (scVI-style encoder over the HVG vector): `x` [B, n_genes] float, the cell's log-normalised
  value of every HVG (zeros included), one output token per cell. Each gene has an identity vector
  (a row of `gene`, [n_genes, H]); the cell's first hidden layer is the value-weighted sum of them,
  plus a learned per-gene "hidden" vector where masked modelling hides the value.
- `transformer` (scGPT-like) over gene tokens: `genes` [B, G] long (0 = pad), `values` [B, G] float,
  `mask` [B, G] bool; with the loader's `tokens_hvg_only` and a `top_k` at least the HVG count, every
  expressed HVG is a token. Attention is torch's fused scaled-dot-product attention
  (`nn.TransformerEncoder`, need_weights=False), linear in memory with the sequence length.

Values enter continuously (an MLP of the value) or binned per cell (quantile bins over the cell's
non-zero values, bin 0 = zero; scGPT); values that the tokenizer already binned (`input_values: bins`)
are used as bin ids, never re-binned. Gene identity vectors can start from a table of per-gene
embeddings (for example of each gene's protein, UCE-style): `gene_embeddings: PATH` (a .npy / .pt
[n_vocab, E] indexed by gene-vocabulary id, or a .tsv / .csv / .parquet whose first column names the
gene and whose other columns are the vector), or `init_gene_embeddings(table)`.
Masked modelling hides values (the gene identity stays) and predicts them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from biomm.adapters.base import Adapter, AdapterConfig, MlmSpec, resolve
from biomm.nn.attention import key_padding, transformer


class OmicsConfig(AdapterConfig):
    """Config of the omics adapter: HVG-vector MLP or gene-token transformer, value encoding, prior gene table."""

    encoder: Literal["transformer", "mlp"] = "transformer"
    n_genes: int = Field(2048, ge=2, description="Gene vocabulary (transformer, 0 = pad) or HVG vector length (mlp)")
    gene_ids: list[int] | None = Field(None, description="mlp: the gene-vocabulary id of each HVG position (set from "
                                                         "the training data); maps other files' genes and a gene table")
    value_encoding: Literal["continuous", "binned"] = "continuous"
    input_values: Literal["expression", "bins"] = Field(
        "expression", description="What `values` hold: expression (binned here when value_encoding=binned) or bin ids "
                                  "already made by the tokenizer (value_mode=binned); set from the data config")
    n_bins: int = Field(51, ge=2)
    hidden: int | None = Field(None, ge=8, description="mlp: hidden width (default 2x the encoder width)")
    dropout: float = Field(0.1, ge=0, lt=1, description="mlp: dropout between hidden layers")
    gene_embeddings: str | None = Field(None, description="A gene table: .npy/.pt [n_vocab, E] by vocabulary id, or "
                                                          ".tsv/.csv/.parquet (gene name, then the vector's columns)")


def load_table(path: str | Path, n_rows: int | None = None) -> torch.Tensor:
    """A float32 gene table [n_rows, E] indexed by gene-vocabulary id.

    .npy / .pt (any other suffix: `torch.load`) are taken as they are. .tsv / .csv / .parquet: the
    first column names each gene (symbol, Ensembl or Entrez id), the other columns hold its vector;
    rows are placed at the gene's vocabulary id (`n_rows` rows, genes the table lacks stay zero)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".tsv", ".csv", ".parquet", ".txt") or path.name.lower().endswith((".tsv.gz", ".csv.gz")):
        import pandas as pd

        from biomm.vocab.genes import UNK, GeneVocab

        df = (pd.read_parquet(path) if suffix == ".parquet"
              else pd.read_csv(path, sep="," if ".csv" in path.name.lower() else "\t"))
        if df.shape[1] < 2:
            raise ValueError(f"{path}: a gene table needs a gene column and at least one vector column")
        ids = GeneVocab.default().lookup(df.iloc[:, 0].astype(str))
        vec = df.iloc[:, 1:].to_numpy(np.float32)
        if not np.isfinite(vec).all():
            raise ValueError(f"{path}: the gene table holds NaN or infinite values")
        ok = ids > UNK
        if not ok.any():
            raise ValueError(f"{path}: none of the {len(ids)} genes of the table is in the gene vocabulary")
        rows = int(n_rows if n_rows is not None else ids.max() + 1)
        ok &= ids < rows
        out = np.zeros((rows, vec.shape[1]), dtype=np.float32)
        out[ids[ok]] = vec[ok]
        return torch.from_numpy(out)
    t = torch.from_numpy(np.load(path)) if suffix == ".npy" else torch.load(path, map_location="cpu")
    return torch.as_tensor(t, dtype=torch.float32)


def quantile_bins(values: torch.Tensor, mask: torch.Tensor, n_bins: int) -> torch.Tensor:
    """Per-cell rank bins [B, G] long of non-zero values in 1..n_bins-1; zeros and padding give 0.

    A value's rank is the number of the cell's non-zero values strictly below it, so equal values
    always share a bin, whatever their order."""
    nz = mask & (values > 0)
    keyed = torch.where(nz, values, torch.full_like(values, -torch.inf))
    ordered = torch.sort(keyed, dim=1).values
    count = nz.sum(1, keepdim=True)
    below = torch.searchsorted(ordered.contiguous(), keyed.contiguous(), right=False)  # values < v, -inf included
    pos = below - (values.shape[1] - count)  # rank among the non-zeros, 0..count-1
    frac = pos.float() / count.clamp_min(1)
    return torch.where(nz, 1 + (frac * (n_bins - 1)).long().clamp(0, n_bins - 2), 0)


class GeneEmbedding(nn.Module):
    """Learned gene table, optionally plus a projection of a fixed prior table (UCE)."""

    def __init__(self, n_genes: int, width: int) -> None:
        super().__init__()
        self.table = nn.Embedding(n_genes, width, padding_idx=0)
        self.prior_proj: nn.Linear | None = None

    def init_from(self, prior: torch.Tensor) -> None:
        """Add a learned projection of the fixed table `prior` [n_genes, E]; the learned table becomes a residual on it."""
        if prior.shape[0] != self.table.num_embeddings:
            raise ValueError(f"gene embeddings have {prior.shape[0]} rows, the gene vocabulary {self.table.num_embeddings}")
        self.register_buffer("prior", prior.float().clone())
        self.prior_proj = nn.Linear(prior.shape[1], self.table.embedding_dim)
        with torch.no_grad():  # the learned table becomes a residual on the prior
            self.table.weight.mul_(0.1)

    def forward(self, genes: torch.Tensor) -> torch.Tensor:
        """Gene embeddings [B, G, W] of `genes` [B, G] long."""
        out = self.table(genes)
        if self.prior_proj is not None:
            out = out + self.prior_proj(self.prior[genes])
        return out


class HVGEncoder(nn.Module):
    """scVI-style encoder over the whole HVG vector: `x` [B, N] (and `hide` [B, N] bool) -> [B, W].

    First layer: sum over genes of value x identity vector (`gene` [N, H], optionally plus a
    projection of a prior table), plus each hidden gene's `hidden` vector; then two GELU layers."""

    def __init__(self, n_genes: int, width: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.gene = nn.Parameter(torch.randn(n_genes, hidden) * n_genes ** -0.5)
        self.hidden = nn.Parameter(torch.zeros(n_genes, hidden))
        self.bias = nn.Parameter(torch.zeros(hidden))
        self.prior_proj: nn.Linear | None = None
        self.body = nn.Sequential(nn.LayerNorm(hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, hidden),
                                  nn.LayerNorm(hidden), nn.GELU(), nn.Linear(hidden, width))

    def init_from(self, prior: torch.Tensor) -> None:
        """Identity vectors = learned residual + a learned projection of `prior` [N, E] (rows in HVG order)."""
        if prior.shape[0] != self.gene.shape[0]:
            raise ValueError(f"gene embeddings have {prior.shape[0]} rows, the HVG vector {self.gene.shape[0]}")
        self.register_buffer("prior", prior.float().clone())
        self.prior_proj = nn.Linear(prior.shape[1], self.gene.shape[1])
        with torch.no_grad():
            self.gene.mul_(0.1)
            self.prior_proj.weight.mul_(self.gene.shape[0] ** -0.5)

    def identity(self) -> torch.Tensor:
        """Gene identity vectors [N, H]."""
        if self.prior_proj is None:
            return self.gene
        return self.gene + self.prior_proj(self.prior)

    def forward(self, x: torch.Tensor, hide: torch.Tensor | None = None) -> torch.Tensor:
        """Cell vectors [B, W] from HVG values `x` [B, N]; `hide` [B, N] bool zeroes and flags those values."""
        xm = x if hide is None else x.masked_fill(hide, 0.0)
        h = xm @ self.identity().to(x.dtype) + self.bias
        # the hidden vectors; with nothing hidden they stay in the graph at weight 0 (DDP)
        h = h + (hide.to(x.dtype) @ self.hidden if hide is not None else 0.0 * self.hidden.sum())
        return self.body(h)


class OmicsTokens(nn.Module):
    """Gene-token encoder (scGPT-like): gene + value embeddings through a transformer."""

    def __init__(self, cfg: OmicsConfig, width: int, layers: int, heads: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.gene = GeneEmbedding(cfg.n_genes, width)
        if cfg.value_encoding == "binned":
            self.value = nn.Embedding(cfg.n_bins + 1, width)  # last bin id = mask
        else:
            self.value = nn.Sequential(nn.Linear(1, width), nn.GELU(), nn.Linear(width, width))
            self.value_mask = nn.Parameter(torch.randn(width) * 0.02)
        self.norm = nn.LayerNorm(width)
        self.transformer = transformer(width, layers, heads)

    def bins(self, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Bin ids [B, G] long: the tokenizer's bins as they are, or per-cell quantile bins of expression."""
        if self.cfg.input_values == "bins":
            return values.round().long().clamp(0, self.cfg.n_bins - 1) * mask
        return quantile_bins(values, mask, self.cfg.n_bins)

    def forward(self, genes, values, mask, mlm_mask=None):
        """Hidden states [B, G, W] from `genes` [B, G] long, `values` [B, G], `mask` [B, G] bool;
        `mlm_mask` [B, G] bool hides those values."""
        if self.cfg.value_encoding == "binned":
            bins = self.bins(values, mask)
            if mlm_mask is not None:
                bins = torch.where(mlm_mask, self.cfg.n_bins, bins)
            v = self.value(bins)
        else:
            v = self.value(values[..., None])
            hide = mlm_mask if mlm_mask is not None else torch.zeros_like(mask)  # keeps value_mask in the graph (DDP)
            v = torch.where(hide[..., None], self.value_mask.to(v.dtype), v)
        h = self.norm(self.gene(genes) + v)
        return self.transformer(h, src_key_padding_mask=key_padding(mask))


class OmicsAdapter(Adapter):
    """Omics adapter: a transformer over `genes` / `values` / `mask` [B, G], or an MLP over `x` [B, n_genes]."""

    modality = "omics"
    Config = OmicsConfig

    def __init__(self, cfg: OmicsConfig, width: int, preset: str) -> None:
        size = resolve(cfg, preset)
        if cfg.encoder == "transformer":
            encoder: nn.Module = OmicsTokens(cfg, size["width"], size["layers"], size["heads"])
        else:
            if cfg.gene_ids is not None and len(cfg.gene_ids) != cfg.n_genes:
                raise ValueError(f"omics gene_ids has {len(cfg.gene_ids)} entries, n_genes is {cfg.n_genes}")
            encoder = HVGEncoder(cfg.n_genes, size["width"], cfg.hidden or 2 * size["width"], cfg.dropout)
        super().__init__(encoder, size["width"], width)
        self.cfg = cfg
        if cfg.gene_embeddings:
            self.init_gene_embeddings(self._read_table(cfg.gene_embeddings))
        if cfg.pretrained:
            self.encoder.load_state_dict(torch.load(Path(cfg.pretrained) / "encoder.pt", map_location="cpu"))
        if cfg.freeze:
            self.freeze_encoder()

    def _read_table(self, path: str) -> torch.Tensor:
        if self.cfg.encoder == "transformer":
            return load_table(path, self.cfg.n_genes)
        if self.cfg.gene_ids is None:
            raise ValueError("gene_embeddings for the 'mlp' omics encoder need gene_ids (the HVGs' vocabulary ids)")
        need = max(self.cfg.gene_ids) + 1
        table = load_table(path, need)
        if table.shape[0] < need:
            raise ValueError(f"{path}: the gene table has {table.shape[0]} rows; the HVGs need vocabulary ids up to {need - 1}")
        return table

    def init_gene_embeddings(self, table: torch.Tensor) -> None:
        """Initialise gene identities from per-gene embeddings [n_vocab, E] by vocabulary id (e.g. ESM of the
        protein); the mlp encoder picks its HVGs' rows (`gene_ids`), or takes a table [n_genes, E] in HVG order."""
        if self.cfg.encoder == "mlp" and table.shape[0] != self.cfg.n_genes:
            if self.cfg.gene_ids is None:
                raise ValueError("a vocabulary-indexed gene table needs gene_ids for the 'mlp' omics encoder")
            table = table[torch.as_tensor(self.cfg.gene_ids, dtype=torch.long)]
        self.encoder.gene.init_from(table) if self.cfg.encoder == "transformer" else self.encoder.init_from(table)

    def encode(self, tensors):
        """Transformer: hidden states [B, G, E] and `mask` [B, G]; MLP: one token [B, 1, E] and an all-True mask [B, 1]."""
        if self.cfg.encoder == "mlp":
            x = tensors["x"].float()
            h = self.encoder(x, tensors.get("mlm_mask"))
            return h[:, None], torch.ones(x.shape[0], 1, dtype=torch.bool, device=x.device)
        mask = tensors["mask"]
        h = self.encoder(tensors["genes"], tensors["values"].float(), mask, tensors.get("mlm_mask"))
        return h, mask

    def example_tensors(self, batch_size, length, generator):
        """Random non-negative inputs: `x` [B, n_genes] (mlp), or `genes` / `values` / `mask` [B, L] (transformer)."""
        b = batch_size
        if self.cfg.encoder == "mlp":
            return {"x": torch.randn(b, self.cfg.n_genes, generator=generator).relu()}
        return {
            "genes": torch.randint(1, self.cfg.n_genes, (b, length), generator=generator),
            "values": torch.randn(b, length, generator=generator).relu(),
            "mask": torch.ones(b, length, dtype=torch.bool),
        }

    @property
    def mlm_spec(self) -> MlmSpec:
        """Transformer: one expression value per token; MLP: the whole HVG vector from the cell token."""
        return MlmSpec(kind="regress", size=1 if self.cfg.encoder == "transformer" else self.cfg.n_genes)

    def mlm_candidates(self, tensors):
        """What may be hidden: real, non-pad gene tokens [B, G] (transformer), every HVG value [B, N] (MLP)."""
        if self.cfg.encoder == "mlp":
            return torch.ones_like(tensors["x"], dtype=torch.bool)
        return tensors["mask"] & (tensors["genes"] > 0)

    def mlm_targets(self, tensors):
        """Transformer: `mask` [B, G] bool and `target` [B, G, 1], the hidden values in the units the encoder
        reads (bin / n_bins when binned, the value otherwise). MLP: `mask` [B, 1], `target` [B, 1, N] the
        HVG vector and `weight` [B, 1, N] (1 where hidden: the loss counts hidden values only)."""
        if self.cfg.encoder == "mlp":
            x = tensors["x"].float()
            return {"mask": torch.ones(x.shape[0], 1, dtype=torch.bool, device=x.device), "target": x[:, None],
                    "weight": tensors["mlm_mask"].to(x.dtype)[:, None]}
        values = tensors["values"].float()
        if self.cfg.value_encoding == "binned":  # the bin the encoder would have seen, at unit scale
            values = self.encoder.bins(values, tensors["mask"]).float() / self.cfg.n_bins
        elif self.cfg.input_values == "bins":
            values = values / self.cfg.n_bins
        return {"mask": tensors["mlm_mask"] & tensors["mask"], "target": values[..., None]}
