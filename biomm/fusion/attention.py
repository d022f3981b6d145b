"""Masked attention that is safe when a query has no key to attend to."""
from __future__ import annotations

import torch
from torch import nn


class MaskedAttention(nn.Module):
    """`nn.MultiheadAttention` with a key mask [B, S] (True = attend); rows with no key give 0.

    Why the wrapper: softmax over an all-masked row is NaN (e.g. every other modality absent).
    Such rows attend to key 0 and their output is zeroed, so they contribute nothing and no NaN
    reaches the gradients.
    """

    def __init__(self, width: int, heads: int, kv_width: int | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True, kdim=kv_width, vdim=kv_width)

    def forward(self, q: torch.Tensor, kv: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        if key_mask is None:
            return self.attn(q, kv, kv, need_weights=False)[0]
        has_key = key_mask.any(1)
        pad = ~key_mask
        pad[:, 0] &= has_key
        out = self.attn(q, kv, kv, key_padding_mask=pad, need_weights=False)[0]
        return out * has_key[:, None, None].to(out.dtype)


def feed_forward(width: int, mult: int = 4) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(width), nn.Linear(width, mult * width), nn.GELU(), nn.Linear(mult * width, width))
