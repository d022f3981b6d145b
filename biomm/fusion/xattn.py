"""Tanh-gated cross-attention block (Flamingo): identity at initialisation (gates start at 0)."""
from __future__ import annotations

import torch
from torch import nn

from biomm.nn.attention import MaskedAttention, feed_forward


class GatedCrossAttentionBlock(nn.Module):
    """x + tanh(a) * xattn(x, media); then + tanh(b) * ffw. `a`, `b` are learned scalars init 0."""

    def __init__(self, width: int, heads: int, media_width: int | None = None) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.attn = MaskedAttention(width, heads, kv_width=media_width)
        self.ff = feed_forward(width)
        self.attn_gate = nn.Parameter(torch.zeros(1))
        self.ff_gate = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, media: torch.Tensor, media_mask: torch.Tensor | None = None) -> torch.Tensor:
        """`x` [B, T, D] after gated cross-attention to `media` [B, S, E] (key mask [B, S] bool) and the gated MLP."""
        x = x + torch.tanh(self.attn_gate).to(x.dtype) * self.attn(self.norm(x), media, media_mask)
        return x + torch.tanh(self.ff_gate).to(x.dtype) * self.ff(x)
