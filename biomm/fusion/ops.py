"""Fusion operations with one interface.

`op(inputs, present) -> [B, out]`: `inputs` is a list (one per modality) of [B, D] tensors or
`Tokens`; `present` a list of [B] bool masks. Absent inputs never enter silently as zeros:
they are masked out (sum, max, gate, product, cross-/co-attention) or replaced by a learned
per-modality "absent" embedding (concat, bilinear, low-rank), which the op learns to read.
"""
from __future__ import annotations

import itertools

import torch
from torch import nn

from biomm.nn.attention import MaskedAttention
from biomm.types import Tokens

Input = torch.Tensor | Tokens


def as_tokens(x: Input, present: torch.Tensor) -> Tokens:
    """[B, D] -> one-token Tokens; token masks are and-ed with presence."""
    if isinstance(x, Tokens):
        return x.masked(present)
    return Tokens(x[:, None], present[:, None].clone())


def as_vector(x: Input, present: torch.Tensor) -> torch.Tensor:
    """A [B, D] input unchanged, or the presence-masked mean [B, D] of `Tokens`."""
    return as_tokens(x, present).pooled() if isinstance(x, Tokens) else x


class FusionOp(nn.Module):
    """Base of the ops: `n` inputs of width `width`, output width `out_width`."""

    def __init__(self, n: int, width: int, out_width: int | None = None) -> None:
        super().__init__()
        self.n, self.width, self.out_width = n, width, out_width or width
        # ops whose result has the input width map it to `out_width` when that differs
        self.resize = nn.Identity() if self.out_width == width else nn.Linear(width, self.out_width)

    def vectors(self, inputs: list[Input], present: list[torch.Tensor]) -> torch.Tensor:
        """The inputs as vectors stacked [B, M, D] (Tokens pooled under presence); ValueError on a wrong count."""
        if len(inputs) != self.n or len(present) != self.n:
            raise ValueError(f"{type(self).__name__} was built for {self.n} inputs, got {len(inputs)}")
        return torch.stack([as_vector(x, p) for x, p in zip(inputs, present)], 1)  # [B, M, D]


class _WithAbsentToken(FusionOp):
    def __init__(self, n, width, out_width=None):
        super().__init__(n, width, out_width)
        self.absent = nn.Parameter(torch.randn(n, width) * 0.02)

    def filled(self, inputs, present) -> torch.Tensor:
        v = self.vectors(inputs, present)
        return torch.where(torch.stack(present, 1)[..., None], v, self.absent.to(v.dtype))


class Concat(_WithAbsentToken):
    """Concatenate (absent -> learned token) and project."""

    def __init__(self, n, width, out_width=None):
        super().__init__(n, width, out_width)
        self.proj = nn.Linear(n * width, self.out_width)

    def forward(self, inputs, present):
        """Projected concatenation [B, out] of the M inputs (absent -> learned token)."""
        return self.proj(self.filled(inputs, present).flatten(1))


class Sum(FusionOp):
    """Sum of the present inputs."""

    def forward(self, inputs, present):
        """Sum [B, out] of the present inputs."""
        v, p = self.vectors(inputs, present), torch.stack(present, 1)
        return self.resize((v * p[..., None].to(v.dtype)).sum(1))


class Max(FusionOp):
    """Element-wise max over the present inputs (0 where none is present)."""

    def forward(self, inputs, present):
        """Element-wise max [B, out] of the present inputs (0 where none is present)."""
        v, p = self.vectors(inputs, present), torch.stack(present, 1)
        out = v.masked_fill(~p[..., None], float("-inf")).amax(1)
        return self.resize(torch.where(p.any(1, keepdim=True), out, torch.zeros_like(out)))


class Gate(FusionOp):
    """Learned per-modality gates: softmax over present modalities of w_m . x_m, weighted sum."""

    def __init__(self, n, width, out_width=None):
        super().__init__(n, width, out_width)
        self.gates = nn.Parameter(torch.randn(n, width) * 0.02)
        self.bias = nn.Parameter(torch.zeros(n))

    def forward(self, inputs, present):
        """Gate-weighted sum [B, out] of the present inputs."""
        v, p = self.vectors(inputs, present), torch.stack(present, 1)
        logits = (v * self.gates.to(v.dtype)).sum(-1) + self.bias
        w = torch.softmax(logits.float().masked_fill(~p, float("-inf")), 1).nan_to_num(0.0).to(v.dtype)
        return self.resize((w[..., None] * v).sum(1))


class Product(FusionOp):
    """Element-wise product of per-modality projections of the present inputs (absent -> identity 1)."""

    def __init__(self, n, width, out_width=None):
        super().__init__(n, width, out_width)
        self.proj = nn.ModuleList(nn.Linear(width, self.out_width) for _ in range(n))

    def forward(self, inputs, present):
        """Element-wise product [B, out] of the present inputs' projections (0 where none is present)."""
        v, p = self.vectors(inputs, present), torch.stack(present, 1)
        h = torch.stack([proj(v[:, i]) for i, proj in enumerate(self.proj)], 1)
        h = torch.where(p[..., None], h, torch.ones_like(h))
        return h.prod(1) * p.any(1, keepdim=True).to(h.dtype)


class Bilinear(_WithAbsentToken):
    """Sum over modality pairs of `nn.Bilinear` on [x; 1] (so linear terms are kept, as in TFN)."""

    def __init__(self, n, width, out_width=None):
        super().__init__(n, width, out_width)
        self.pairs = list(itertools.combinations(range(n), 2)) or [(0, 0)]
        self.bilinear = nn.ModuleList(nn.Bilinear(width + 1, width + 1, self.out_width) for _ in self.pairs)

    def forward(self, inputs, present):
        """Sum over modality pairs of bilinear maps of [x; 1]: [B, out] (absent -> learned token)."""
        v = self.filled(inputs, present)
        v = torch.cat([v, torch.ones_like(v[..., :1])], -1)
        return sum(b(v[:, i], v[:, j]) for b, (i, j) in zip(self.bilinear, self.pairs))


class LowRank(_WithAbsentToken):
    """Low-rank multimodal fusion (LMF, Liu et al. 2018): sum_r w_r prod_m ([x_m; 1] W_m^r) + b."""

    def __init__(self, n, width, out_width=None, rank: int = 4):
        super().__init__(n, width, out_width)
        self.factors = nn.Parameter(torch.randn(n, rank, width + 1, self.out_width) * (width + 1) ** -0.5)
        self.rank_weights = nn.Parameter(torch.full((rank,), 1.0 / rank))
        self.bias = nn.Parameter(torch.zeros(self.out_width))

    def forward(self, inputs, present):
        """Low-rank multimodal fusion [B, out] of the M inputs (absent -> learned token)."""
        v = self.filled(inputs, present)
        v = torch.cat([v, torch.ones_like(v[..., :1])], -1)
        h = torch.einsum("bmd,mrdo->bmro", v, self.factors.to(v.dtype)).prod(1)  # [B, R, O]
        return torch.einsum("bro,r->bo", h, self.rank_weights.to(h.dtype)) + self.bias


class CrossAttention(FusionOp):
    """Input 0's tokens (or a learned query where input 0 is absent) attend to all other inputs' tokens."""

    def __init__(self, n, width, out_width=None, heads: int = 4):
        super().__init__(n, width, out_width)
        self.query = nn.Parameter(torch.randn(width) * 0.02)
        self.norm = nn.LayerNorm(width)
        self.attn = MaskedAttention(width, heads)
        self.out = nn.Linear(width, self.out_width)

    def forward(self, inputs, present):
        """Input 0's tokens (or the learned query) after attending to the other inputs, pooled and projected: [B, out]."""
        toks = [as_tokens(x, p) for x, p in zip(inputs, present)]
        q = toks[0]
        qx = torch.where(q.mask[..., None], q.x, self.query.to(q.x.dtype))
        qm = torch.where(present[0][:, None], q.mask, torch.ones_like(q.mask))
        kv = torch.cat([t.x for t in toks[1:]], 1)
        km = torch.cat([t.mask for t in toks[1:]], 1)
        h = qx + self.attn(self.norm(qx), kv, km)
        return self.out(Tokens(h, qm).pooled())


class CoAttention(FusionOp):
    """Two-way (ViLBERT-style) co-attention: every input's tokens attend to all the others'; the
    pooled results of the present inputs are averaged."""

    def __init__(self, n, width, out_width=None, heads: int = 4):
        super().__init__(n, width, out_width)
        self.norm = nn.LayerNorm(width)
        self.attn = nn.ModuleList(MaskedAttention(width, heads) for _ in range(n))
        self.out = nn.Linear(width, self.out_width)

    def forward(self, inputs, present):
        """Mean over the present inputs of each one's tokens after attending to the others, projected: [B, out]."""
        toks = [as_tokens(x, p) for x, p in zip(inputs, present)]
        pooled = []
        for i, t in enumerate(toks):
            others = [o for j, o in enumerate(toks) if j != i]
            kv, km = torch.cat([o.x for o in others], 1), torch.cat([o.mask for o in others], 1)
            pooled.append(Tokens(t.x + self.attn[i](self.norm(t.x), kv, km), t.mask).pooled())
        p = torch.stack(present, 1).to(pooled[0].dtype)
        mean = (torch.stack(pooled, 1) * p[..., None]).sum(1) / p.sum(1, keepdim=True).clamp_min(1.0)
        return self.out(mean)


FUSION_OPS: dict[str, type[FusionOp]] = {
    "concat": Concat, "sum": Sum, "max": Max, "gate": Gate, "product": Product,
    "bilinear": Bilinear, "low_rank": LowRank, "cross_attention": CrossAttention, "co_attention": CoAttention,
}


def build_fusion_op(name: str, n: int, width: int, out_width: int | None = None) -> FusionOp:
    """The fusion op `name` (a key of FUSION_OPS) for `n` inputs of width `width`; KeyError if unknown."""
    if name not in FUSION_OPS:
        raise KeyError(f"unknown fusion op '{name}' (known: {', '.join(FUSION_OPS)})")
    return FUSION_OPS[name](n, width, out_width)
