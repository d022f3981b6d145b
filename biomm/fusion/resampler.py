"""Perceiver resampler (Flamingo): K learned latents summarise a variable number of tokens."""
from __future__ import annotations

import torch
from torch import nn

from biomm.nn.attention import MaskedAttention, feed_forward
from biomm.types import Tokens


class PerceiverResampler(nn.Module):
    """Queries from the latents, keys/values from [media; latents]; returns [B, K, D].

    The latents are always valid keys, so a subject with no media tokens still gets finite output.
    """

    def __init__(self, width: int, heads: int, num_latents: int, depth: int = 2) -> None:
        super().__init__()
        self.latents = nn.Parameter(torch.randn(num_latents, width) * 0.02)
        self.layers = nn.ModuleList(
            nn.ModuleList([nn.LayerNorm(width), nn.LayerNorm(width), MaskedAttention(width, heads), feed_forward(width)])
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(width)

    def forward(self, media: Tokens) -> torch.Tensor:
        """K latents [B, K, D] summarising `media` (x [B, T, D], mask [B, T])."""
        b = media.x.shape[0]
        lat = self.latents.to(media.x.dtype).expand(b, -1, -1)
        ones = torch.ones(lat.shape[:2], dtype=torch.bool, device=lat.device)
        for norm_media, norm_lat, attn, ff in self.layers:
            q = norm_lat(lat)
            kv = torch.cat([norm_media(media.x), q], 1)
            lat = lat + attn(q, kv, torch.cat([media.mask, ones], 1))
            lat = lat + ff(lat)
        return self.norm(lat)
