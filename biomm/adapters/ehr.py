"""EHR adapter: a transformer over MEDS events.

Each event = code embedding + value embedding (numeric value, or a learned "no value"
embedding) + time embedding (days relative to the prediction time, or since the first event;
sinusoidal or log-bucketed). Only the most recent `max_events` events are kept.

Tensors: `codes` [B,L] long (0 = pad), `values` [B,L] float, `value_mask` [B,L] bool,
`times` [B,L] float (days, ascending within a row), `mask` [B,L] bool; optional
`prediction_time` [B] float (days; default: each row's last event).
"""
from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from biomm.adapters.base import Adapter, AdapterConfig, MlmSpec, resolve
from biomm.nn.attention import key_padding, transformer


class EhrConfig(AdapterConfig):
    """Config of the EHR adapter: code vocabulary, events kept, and how event times are encoded."""

    vocab_size: int = Field(4096, ge=2, description="Number of event codes (0 = pad, 1 = mask)")
    max_events: int = Field(256, ge=1, description="Keep the most recent N events")
    time_encoding: Literal["sinusoidal", "log_bucket"] = "sinusoidal"
    time_reference: Literal["prediction", "first"] = Field(
        "prediction", description="Encode time before the prediction time, or since the first event"
    )


MASK_CODE = 1


def take_last(tensors: dict[str, torch.Tensor], mask: torch.Tensor, n: int) -> dict[str, torch.Tensor]:
    """Keep each row's last `n` real positions of every [B, L, ...] tensor (left-aligned output)."""
    length = mask.sum(1)
    if mask.shape[1] <= n and bool((mask == (torch.arange(mask.shape[1]) < length[:, None])).all()):
        return dict(tensors)
    # positions of real events in order; the last n of them.
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)  # real first, in time order
    start = (length - n).clamp_min(0)
    idx = (start[:, None] + torch.arange(n)[None]).clamp_max(mask.shape[1] - 1)
    src = torch.gather(order, 1, idx)
    keep = torch.arange(n)[None] < (length - start)[:, None]
    out = {}
    for k, v in tensors.items():
        if v.dim() >= 2 and v.shape[:2] == mask.shape:
            g = torch.gather(v, 1, src.view(*src.shape, *([1] * (v.dim() - 2))).expand(-1, -1, *v.shape[2:]))
            out[k] = g & keep if v.dtype == torch.bool else g
        else:
            out[k] = v
    out["mask"] = keep & out["mask"]
    return out


class TimeEncoding(nn.Module):
    """Days -> width: sinusoids with periods from 1 day to ~30 years, or log2 buckets."""

    def __init__(self, width: int, kind: str) -> None:
        super().__init__()
        self.kind = kind
        if kind == "sinusoidal":
            periods = torch.logspace(0, math.log10(10_000.0), width // 2)
            self.register_buffer("freq", 2 * math.pi / periods, persistent=False)
            self.proj = nn.Linear(2 * (width // 2), width)
        else:
            self.buckets = nn.Embedding(2 * 16 + 1, width)

    def forward(self, days: torch.Tensor) -> torch.Tensor:
        """Time embeddings [..., width] of `days` [...] float."""
        if self.kind == "sinusoidal":
            a = days[..., None] * self.freq
            return self.proj(torch.cat([a.sin(), a.cos()], -1))
        b = torch.log2(1 + days.abs()).floor().clamp_max(16).long()
        return self.buckets(torch.where(days < 0, 16 - b, 16 + b))


class EventEmbedding(nn.Module):
    """code + value (or learned no-value) + time embeddings, one vector per event."""

    def __init__(self, cfg: EhrConfig, width: int) -> None:
        super().__init__()
        self.code = nn.Embedding(cfg.vocab_size, width, padding_idx=0)
        self.value = nn.Sequential(nn.Linear(1, width), nn.GELU(), nn.Linear(width, width))
        self.no_value = nn.Parameter(torch.randn(width) * 0.02)
        self.time = TimeEncoding(width, cfg.time_encoding)
        self.norm = nn.LayerNorm(width)

    def forward(self, codes, values, value_mask, days) -> torch.Tensor:
        """Event vectors [B, L, W] from `codes` [B, L] long, `values` [B, L], `value_mask` [B, L] bool, `days` [B, L]."""
        v = torch.where(value_mask[..., None], self.value(values.nan_to_num()[..., None]), self.no_value)
        return self.norm(self.code(codes) + v + self.time(days))


class EhrAdapter(Adapter):
    """EHR adapter: a transformer over each subject's most recent MEDS events (tensors: see the module doc)."""

    modality = "ehr"
    Config = EhrConfig

    def __init__(self, cfg: EhrConfig, width: int, preset: str) -> None:
        size = resolve(cfg, preset)
        encoder = nn.ModuleDict(
            {
                "embed": EventEmbedding(cfg, size["width"]),
                "transformer": transformer(size["width"], size["layers"], size["heads"]),
            }
        )
        super().__init__(encoder, size["width"], width)
        self.cfg = cfg
        if cfg.pretrained:
            self.encoder.load_state_dict(torch.load(f"{cfg.pretrained}/encoder.pt", map_location="cpu"))
        if cfg.freeze:
            self.freeze_encoder()

    def _events(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        mask = tensors["mask"]
        if "prediction_time" in tensors:  # nothing after the prediction time leaks in
            mask = mask & (tensors["times"] <= tensors["prediction_time"][:, None])
            tensors = {**tensors, "mask": mask}
        return take_last(tensors, mask, self.cfg.max_events)

    def encode(self, tensors):
        """Hidden states [B, L', E] and event mask [B, L'] bool of each row's last `max_events` events up to its
        prediction time (L' = L, or `max_events` where events were dropped or re-aligned)."""
        t = self._events(tensors)
        mask = t["mask"]
        codes = t["codes"]
        value_mask = t["value_mask"] & mask
        if "mlm_mask" in t:  # hide the code and its value; the time stays (BERT-style on events)
            codes = torch.where(t["mlm_mask"], torch.full_like(codes, MASK_CODE), codes)
            value_mask = value_mask & ~t["mlm_mask"]
        times = t["times"].float()
        if self.cfg.time_reference == "first":
            days = times - times[:, :1]
        else:
            last = torch.where(mask, times, torch.full_like(times, -math.inf)).amax(1)
            ref = tensors.get("prediction_time", last).float()
            days = (ref.nan_to_num(0.0, 0.0, 0.0)[:, None] - times).masked_fill(~mask, 0.0)
        h = self.encoder["embed"](codes, t["values"].float(), value_mask, days)
        h = self.encoder["transformer"](h, src_key_padding_mask=key_padding(mask))
        return h, mask

    def example_tensors(self, batch_size, length, generator):
        """Random left-aligned events: `codes`, `values`, `value_mask`, `times` (ascending), `mask`, all [B, L]."""
        b, n = batch_size, length
        lengths = torch.randint(1, n + 1, (b, 1), generator=generator)
        mask = torch.arange(n)[None] < lengths
        return {
            "codes": torch.randint(2, self.cfg.vocab_size, (b, n), generator=generator) * mask,
            "values": torch.randn(b, n, generator=generator),
            "value_mask": (torch.rand(b, n, generator=generator) < 0.5) & mask,
            "times": torch.rand(b, n, generator=generator).mul(3650).sort(1).values,
            "mask": mask,
        }

    @property
    def mlm_spec(self) -> MlmSpec:
        """Classify over the `vocab_size` event codes."""
        return MlmSpec(kind="classify", size=self.cfg.vocab_size)

    def mlm_candidates(self, tensors):
        """Real events with a non-special code: [B, L] bool."""
        return tensors["mask"] & (tensors["codes"] > MASK_CODE)

    def mlm_targets(self, tensors):
        """Masked events and their codes, aligned with the output tokens: `mask` [B, L'] bool, `target` [B, L'] long."""
        t = self._events(tensors)
        return {"mask": t["mlm_mask"] & t["mask"], "target": t["codes"]}
