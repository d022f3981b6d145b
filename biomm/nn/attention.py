"""Shared attention layers: the pre-norm transformer block, and the one fix for a row with no key.

Softmax over an all-masked row is NaN (a subject whose every token is padding, a query whose every
other modality is absent). `key_padding` is the one place that handles it: such a row attends to
position 0 and its output is masked (or zeroed) by the caller, so no NaN reaches the gradients."""
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
        """Attention of queries `q` [B, T, D] over `kv` [B, S, E] with `key_mask` [B, S] bool: [B, T, D]."""
        if key_mask is None:
            return self.attn(q, kv, kv, need_weights=False)[0]
        has_key = key_mask.any(1)
        out = self.attn(q, kv, kv, key_padding_mask=key_padding(key_mask), need_weights=False)[0]
        return out * has_key[:, None, None].to(out.dtype)


class AttentionPool(nn.Module):
    """Multihead attention pooling (SigLIP's MAP head): a learned probe attends over the real tokens, then a
    residual MLP. `Tokens`-style `x` [B, T, D] and `mask` [B, T] -> [B, D] (rows with no real token give 0)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.probe = nn.Parameter(torch.randn(1, 1, width) * 0.02)
        self.norm = nn.LayerNorm(width)
        self.attn = MaskedAttention(width, heads)
        self.mlp = feed_forward(width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Pooled [B, D] of `x` [B, T, D] under `mask` [B, T] bool."""
        h = self.attn(self.probe.to(x.dtype).expand(x.shape[0], -1, -1), self.norm(x), mask)
        return (h + self.mlp(h))[:, 0] * mask.any(1, keepdim=True).to(x.dtype)


def feed_forward(width: int, mult: int = 4) -> nn.Sequential:
    """Pre-norm MLP block: LayerNorm, Linear(width, mult*width), GELU, Linear back; `[B, T, D] -> [B, T, D]`."""
    return nn.Sequential(nn.LayerNorm(width), nn.Linear(width, mult * width), nn.GELU(), nn.Linear(mult * width, width))


def transformer(width: int, layers: int, heads: int, dropout: float = 0.0) -> nn.TransformerEncoder:
    """A pre-norm GELU `nn.TransformerEncoder` (library blocks; see `key_padding` for masking)."""
    layer = nn.TransformerEncoderLayer(
        width, heads, 4 * width, dropout=dropout, activation="gelu", batch_first=True, norm_first=True
    )
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


def key_padding(mask: torch.Tensor) -> torch.Tensor:
    """`src_key_padding_mask` from a real-token mask, never masking a whole row.

    A row with no real token would softmax over all -inf and give NaN; we let such rows attend
    to position 0 instead. Their outputs stay masked by `mask` downstream, so nothing leaks.
    """
    pad = ~mask
    empty = ~mask.any(1)
    if empty.any():
        pad[empty, 0] = False  # `~mask` is a new tensor: the caller's mask is untouched
    return pad
