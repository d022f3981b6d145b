"""Omics adapter: a transformer over gene tokens with expression values (scGPT-like), or an MLP
over a dense highly-variable-gene vector.

transformer tensors: `genes` [B,G] long (0 = pad), `values` [B,G] float, `mask` [B,G] bool.
mlp tensors: `x` [B, n_genes] float (one token per cell).
Values enter continuously (an MLP of the value) or binned per cell (quantile bins over the
cell's non-zero values, bin 0 = zero; scGPT). The gene table can start from embeddings of the
genes' products (UCE): `init_gene_embeddings(tensor)` or `gene_embeddings: path.pt|.npy`.
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
    """Config of the omics adapter: gene-token transformer or HVG-vector MLP, value encoding, prior gene table."""

    encoder: Literal["transformer", "mlp"] = "transformer"
    n_genes: int = Field(2048, ge=2, description="Gene vocabulary (transformer, 0 = pad) or HVG vector length (mlp)")
    value_encoding: Literal["continuous", "binned"] = "continuous"
    n_bins: int = Field(51, ge=2)
    gene_embeddings: str | None = Field(None, description="A .pt/.npy [n_genes, E] table of gene-product embeddings")


def load_table(path: str | Path) -> torch.Tensor:
    """A float32 table [n_genes, E] read from a .npy file, or any other file with `torch.load`."""
    path = Path(path)
    t = torch.from_numpy(np.load(path)) if path.suffix == ".npy" else torch.load(path, map_location="cpu")
    return torch.as_tensor(t, dtype=torch.float32)


def quantile_bins(values: torch.Tensor, mask: torch.Tensor, n_bins: int) -> torch.Tensor:
    """Per-cell rank bins of non-zero values in 1..n_bins-1; zeros and padding give 0."""
    nz = mask & (values > 0)
    keyed = torch.where(nz, values, torch.full_like(values, -torch.inf))
    rank = torch.argsort(torch.argsort(keyed, 1), 1)  # ascending; non-zeros take the top ranks
    count = nz.sum(1, keepdim=True)
    pos = rank - (values.shape[1] - count)  # 0..count-1 among non-zeros
    frac = pos.float() / count.clamp_min(1)
    return torch.where(nz, 1 + (frac * (n_bins - 1)).long().clamp_max(n_bins - 2), 0)


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

    def forward(self, genes, values, mask, mlm_mask=None):
        """Hidden states [B, G, W] from `genes` [B, G] long, `values` [B, G], `mask` [B, G] bool;
        `mlm_mask` [B, G] bool hides those values."""
        if self.cfg.value_encoding == "binned":
            bins = quantile_bins(values, mask, self.cfg.n_bins)
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
            w = size["width"]
            encoder = nn.Sequential(nn.LayerNorm(cfg.n_genes), nn.Linear(cfg.n_genes, 2 * w), nn.GELU(), nn.Linear(2 * w, w))
        super().__init__(encoder, size["width"], width)
        self.cfg = cfg
        if cfg.gene_embeddings:
            self.init_gene_embeddings(load_table(cfg.gene_embeddings))
        if cfg.pretrained:
            self.encoder.load_state_dict(torch.load(Path(cfg.pretrained) / "encoder.pt", map_location="cpu"))
        if cfg.freeze:
            self.freeze_encoder()

    def init_gene_embeddings(self, table: torch.Tensor) -> None:
        """Initialise the gene table from per-gene embeddings [n_genes, E] (e.g. ESM of the protein)."""
        if self.cfg.encoder != "transformer":
            raise ValueError("gene embeddings need the 'transformer' omics encoder")
        self.encoder.gene.init_from(table)

    def encode(self, tensors):
        """Transformer: hidden states [B, G, E] and `mask` [B, G]; MLP: one token [B, 1, E] and an all-True mask [B, 1]."""
        if self.cfg.encoder == "mlp":
            x = tensors["x"].float()
            return self.encoder(x)[:, None], torch.ones(x.shape[0], 1, dtype=torch.bool, device=x.device)
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
        """Regress one expression value per token; ValueError unless the encoder is the transformer."""
        if self.cfg.encoder != "transformer":
            raise ValueError("masked expression modelling needs the 'transformer' omics encoder")
        return MlmSpec(kind="regress", size=1)

    def mlm_candidates(self, tensors):
        """Real, non-pad gene tokens: [B, G] bool."""
        return tensors["mask"] & (tensors["genes"] > 0)

    def mlm_targets(self, tensors):
        """`mask` [B, G] bool and `target` [B, G, 1] float: the hidden values (divided by `n_bins` when binned)."""
        values = tensors["values"].float()
        if self.cfg.value_encoding == "binned":
            values = values / self.cfg.n_bins  # bin indices -> [0, 1]: a regression target of unit scale
        return {"mask": tensors["mlm_mask"] & tensors["mask"], "target": values[..., None]}
