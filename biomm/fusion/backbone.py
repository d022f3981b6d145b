"""Fusion backbones by timing: early (ViLT), late (CLIP), middle (Perceiver + Flamingo, default).

Every backbone maps per-modality `Tokens` and presence masks [B] to a `Fused`:
per-modality pooled embeddings (computed before any cross-modal mixing, so contrastive
alignment cannot be solved by leakage), fused tokens with their mask, and the fused embedding.
`embed(modality, tokens)` gives one modality's pooled embedding alone (retrieval, zero-shot).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from biomm.nn.attention import AttentionPool, key_padding, transformer
from biomm.fusion.ops import build_fusion_op
from biomm.fusion.resampler import PerceiverResampler
from biomm.fusion.xattn import GatedCrossAttentionBlock
from biomm.types import Tokens


@dataclass
class Fused:
    """Backbone output: `pooled` {modality: [B, D]}, `fused_tokens` [B, T, D], `fused_mask` [B, T] bool, `fused` [B, D]."""

    pooled: dict[str, torch.Tensor]
    fused_tokens: torch.Tensor
    fused_mask: torch.Tensor
    fused: torch.Tensor


def pool_head(width: int) -> nn.Sequential:
    """A modality's pooling head: LayerNorm then Linear, [..., width] -> [..., width]."""
    return nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width))


class Backbone(nn.Module):
    """Shared bookkeeping: modality order, per-modality pooling heads, learned absent tokens, and an
    optional stream op (a fusion op over the per-modality fused streams giving the fused embedding)."""

    def __init__(self, modalities: list[str], width: int, absent: str, stream_op: str | None = None,
                 pooling: str = "mean", heads: int = 1) -> None:
        super().__init__()
        if absent not in ("mask", "token"):
            raise ValueError(f"absent must be 'mask' or 'token', got '{absent}'")
        if pooling not in ("mean", "attention"):
            raise ValueError(f"pooling must be 'mean' or 'attention', got '{pooling}'")
        self.modalities, self.width, self.absent_mode = list(modalities), width, absent
        self.pool = nn.ModuleDict({m: pool_head(width) for m in modalities})
        self.attn_pool = nn.ModuleDict({m: AttentionPool(width, heads) for m in modalities}) if pooling == "attention" else None
        self.stream_op = build_fusion_op(stream_op, len(modalities), width) if stream_op else None

    def fuse_streams(self, streams: dict[str, Tokens], present: dict[str, torch.Tensor], ref: torch.Tensor) -> torch.Tensor:
        """The stream op over each modality's fused stream `Tokens` [B, T_m, D] under `present` {m: [B]}: [B, D]
        (a modality without a stream enters as absent)."""
        b = ref.shape[0]
        none = torch.zeros(b, dtype=torch.bool, device=ref.device)
        inputs = [streams.get(m, Tokens(ref.new_zeros(b, 1, self.width), none[:, None])) for m in self.modalities]
        return self.stream_op(inputs, [present.get(m, none) if m in streams else none for m in self.modalities])

    def active(self, tokens: dict[str, Tokens]) -> list[str]:
        """The backbone's modalities present as keys of `tokens`, in backbone order."""
        return [m for m in self.modalities if m in tokens]

    def pooled(self, modality: str, tokens: Tokens) -> torch.Tensor:
        """One modality's pooled embedding [B, D] of `tokens` (x [B, T, D]): masked mean or attention pooling,
        then its pooling head."""
        x = tokens.pooled() if self.attn_pool is None else self.attn_pool[modality](tokens.x, tokens.mask)
        return self.pool[modality](x)

    def modality_parameters(self, modality: str) -> list[nn.Parameter]:
        """Parameters used only for `modality` (touched with weight 0 when it is not in a batch)."""
        extra = list(self.attn_pool[modality].parameters()) if self.attn_pool is not None else []
        return list(self.pool[modality].parameters()) + extra


class MiddleFusion(Backbone):
    """Perceiver resampler per modality (K latents), then a fusion stream in which each
    modality's latents self-attend and cross-attend, through tanh-gated blocks (gates at 0),
    to the other present modalities' latents. Fused tokens: all streams, [B, M*K, D]."""

    def __init__(self, modalities, width, heads, layers, num_latents=16, resampler_depth=2, absent="mask",
                 stream_op: str | None = None, pooling: str = "mean"):
        super().__init__(modalities, width, absent, stream_op, pooling, heads)
        self.type_embed = nn.Parameter(torch.randn(len(modalities), width) * 0.02)
        self.num_latents = num_latents
        self.resamplers = nn.ModuleDict({m: PerceiverResampler(width, heads, num_latents, resampler_depth) for m in modalities})
        self.xattn = nn.ModuleList(GatedCrossAttentionBlock(width, heads) for _ in range(layers))
        self.blocks = nn.ModuleList(transformer(width, 1, heads).layers[0] for _ in range(layers))
        if absent == "token":
            self.absent = nn.Parameter(torch.randn(len(modalities), num_latents, width) * 0.02)
        self.norm = nn.LayerNorm(width)

    def modality_parameters(self, modality):
        """Parameters used only for `modality`: its pooling head and its resampler."""
        return super().modality_parameters(modality) + list(self.resamplers[modality].parameters())

    def embed(self, modality: str, tokens: Tokens) -> torch.Tensor:
        """Pooled embedding [B, D] of one modality's `tokens` (x [B, T, D]) through its resampler alone."""
        z = self.resamplers[modality](tokens)
        return self.pooled(modality, Tokens(z, torch.ones(z.shape[:2], dtype=torch.bool, device=z.device)))

    def forward(self, tokens: dict[str, Tokens], present: dict[str, torch.Tensor]) -> Fused:
        """Fuse `tokens` {m: x [B, T_m, D]} under `present` {m: [B]}: fused tokens [B, M*K, D], mask [B, M*K],
        fused [B, D] (M = modalities fused, K = latents)."""
        mods = self.active(tokens) if self.absent_mode == "mask" else self.modalities
        some = tokens[self.active(tokens)[0]].x
        b, k, d = some.shape[0], self.num_latents, self.width
        lat, pooled, pres = [], {}, []
        for m in mods:
            i = self.modalities.index(m)
            p = present.get(m, torch.zeros(b, dtype=torch.bool, device=some.device))
            if m in tokens:
                z = self.resamplers[m](tokens[m].masked(p))
                pooled[m] = self.pooled(m, Tokens(z, torch.ones(z.shape[:2], dtype=torch.bool, device=z.device)))
            else:
                z = self.absent[i].to(some.dtype).expand(b, -1, -1)
            if self.absent_mode == "token":
                z = torch.where(p[:, None, None], z, self.absent[i].to(z.dtype))
            lat.append(z + self.type_embed[i].to(z.dtype))
            pres.append(p if self.absent_mode == "mask" else torch.ones_like(p))
        n = len(mods)
        latents = torch.stack(lat, 1)  # [B, M, K, D]
        pres_t = torch.stack(pres, 1)  # [B, M]
        x = latents.transpose(0, 1).reshape(n * b, k, d)  # one stream per modality, stacked on batch
        kv = latents.reshape(b, n * k, d).repeat(n, 1, 1)
        other = ~torch.eye(n, dtype=torch.bool, device=x.device)  # [stream m, key modality j]
        key_mask = (other[:, None, :] & pres_t[None]).repeat_interleave(k, 2).reshape(n * b, n * k)
        for xattn, block in zip(self.xattn, self.blocks):
            x = block(xattn(x, kv, key_mask))
        fused_tokens = self.norm(x.reshape(n, b, k, d).transpose(0, 1).reshape(b, n * k, d))
        fused_mask = pres_t.repeat_interleave(k, 1)
        if self.stream_op is None:
            return Fused(pooled, fused_tokens, fused_mask, Tokens(fused_tokens, fused_mask).pooled())
        streams = {m: Tokens(fused_tokens[:, i * k:(i + 1) * k], fused_mask[:, i * k:(i + 1) * k]) for i, m in enumerate(mods)}
        return Fused(pooled, fused_tokens, fused_mask, self.fuse_streams(streams, dict(zip(mods, pres)), some))


class EarlyFusion(Backbone):
    """ViLT: one transformer over [CLS; all modalities' tokens + modality-type embeddings] with a
    joint mask. The fused embedding is the CLS output."""

    def __init__(self, modalities, width, heads, layers, absent="mask", stream_op: str | None = None,
                 pooling: str = "mean"):
        super().__init__(modalities, width, absent, stream_op, pooling, heads)
        self.type_embed = nn.Parameter(torch.randn(len(modalities), width) * 0.02)
        self.cls = nn.Parameter(torch.randn(width) * 0.02)
        if absent == "token":
            self.absent = nn.Parameter(torch.randn(len(modalities), width) * 0.02)
        self.encoder = transformer(width, layers, heads)
        self.norm = nn.LayerNorm(width)

    def embed(self, modality: str, tokens: Tokens) -> torch.Tensor:
        """Pooled embedding [B, D] of one modality's `tokens`: masked mean (or attention pooling), then its pooling head."""
        return self.pooled(modality, tokens)

    def forward(self, tokens, present):
        """One transformer over all tokens: fused tokens [B, T, D] and mask [B, T] (CLS left out), fused = CLS [B, D]."""
        some = tokens[self.active(tokens)[0]].x
        b = some.shape[0]
        seq = [self.cls.to(some.dtype).expand(b, 1, -1)]
        mask = [torch.ones(b, 1, dtype=torch.bool, device=some.device)]
        pooled, spans, start = {}, {}, 1
        for i, m in enumerate(self.modalities):
            p = present.get(m, torch.zeros(b, dtype=torch.bool, device=some.device))
            if m in tokens:
                t = tokens[m].masked(p)
                pooled[m] = self.embed(m, t)
                seq.append(t.x + self.type_embed[i].to(t.x.dtype))
                mask.append(t.mask)
                spans[m], start = (start, start + t.x.shape[1], p), start + t.x.shape[1]
            if self.absent_mode == "token":
                seq.append((self.absent[i] + self.type_embed[i]).to(some.dtype).expand(b, 1, -1))
                mask.append(~p[:, None])
                start += 1
        x, m_all = torch.cat(seq, 1), torch.cat(mask, 1)
        h = self.norm(self.encoder(x, src_key_padding_mask=key_padding(m_all)))
        if self.stream_op is None:
            return Fused(pooled, h[:, 1:], m_all[:, 1:], h[:, 0])
        streams = {m: Tokens(h[:, a:e], m_all[:, a:e]) for m, (a, e, _) in spans.items()}
        return Fused(pooled, h[:, 1:], m_all[:, 1:], self.fuse_streams(streams, {m: p for m, (_, _, p) in spans.items()}, h))


class LateFusion(Backbone):
    """CLIP: per-modality pooled embeddings; a fusion op over them gives the fused embedding."""

    def __init__(self, modalities, width, fusion_op="concat", absent="mask", pooling: str = "mean", heads: int = 1):
        super().__init__(modalities, width, absent, pooling=pooling, heads=heads)
        self.op = build_fusion_op(fusion_op, len(modalities), width)

    def embed(self, modality: str, tokens: Tokens) -> torch.Tensor:
        """Pooled embedding [B, D] of one modality's `tokens`: masked mean (or attention pooling), then its pooling head."""
        return self.pooled(modality, tokens)

    def forward(self, tokens, present):
        """Fusion op over the pooled embeddings: fused tokens = the stacked vectors [B, M, D], mask = presence [B, M],
        fused [B, D]."""
        some = tokens[self.active(tokens)[0]].x
        b = some.shape[0]
        pooled, vecs, pres = {}, [], []
        for m in self.modalities:
            p = present.get(m, torch.zeros(b, dtype=torch.bool, device=some.device))
            if m in tokens:
                pooled[m] = self.embed(m, tokens[m].masked(p))
                vecs.append(pooled[m])
            else:  # not in this batch at all: present=False, so every op masks or replaces it
                vecs.append(some.new_zeros(b, self.width))
            pres.append(p)
        fused = self.op(vecs, pres)
        return Fused(pooled, torch.stack(vecs, 1), torch.stack(pres, 1), fused)
