"""EHR adapter: a transformer over a subject's whole timeline of MEDS events.

Each event = code embedding + value embedding + time embeddings, one vector per event:
- value: the per-code quantile bin of its numeric value (bins fitted on the training split, as
  CLMBR / ETHOS do), or where a code has no bins the standardised value through a small MLP, or a
  learned "no value" embedding;
- time: days before the prediction time (or since the first event; sinusoidal or log-bucketed),
  the age at the event (sinusoidal, periods up to ~100 years) and the time since the previous
  event (log2 buckets);
- static facts (sex, race, ethnicity, birth) are their own tokens: a learned "static" embedding
  replaces their time embeddings;
- `code_text` (DescEmb, Hur et al. 2022): each code's embedding adds the mean word-piece embedding of its
  display name ("Childhood asthma"), so rare codes share what their words mean; `shared` ties those word
  embeddings to the text encoder's, so EHR and notes start from one lexical space. The table of each
  code's word pieces (`code_words` [vocab_size, code_text_length] long, 0 = pad) is a buffer the data
  fills (`set_tables`) and the weights carry.

Attention is `torch.nn.functional.scaled_dot_product_attention` (memory-efficient / flash kernels on
CPU and GPU: memory linear in the context), so a context of 8,192 events at batch 8 fits in a few GiB
(`biomm bench ehr`). `causal: true` makes each event see only the events before it (needed by the
next-event objective; the pooled embedding still reads every token).

Tensors: `codes` [B,L] long (0 = pad), `values` [B,L] float, `value_mask` [B,L] bool,
`times` [B,L] float (days, ascending within a row), `mask` [B,L] bool; optional `value_bins`
[B,L] long (0 = no bin), `age` [B,L] float (days since birth, NaN unknown), `static` [B,L] bool,
`gap` [B,L] float (days since the previous event; default: from `times`), `prediction_time` [B] float (days;
default: each row's last event).
"""
from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from biomm.adapters.base import Adapter, AdapterConfig, MlmSpec, resolve
from biomm.config import ConfigError


class EhrConfig(AdapterConfig):
    """Config of the EHR adapter: code vocabulary, context, value bins, time encodings, causality."""

    vocab_size: int = Field(4096, ge=2, description="Number of event codes (0 = pad, 1 = mask)")
    max_events: int = Field(8192, ge=1, description="Context: keep the static facts and the most recent events")
    time_encoding: Literal["sinusoidal", "log_bucket"] = "sinusoidal"
    time_reference: Literal["prediction", "first"] = Field(
        "prediction", description="Encode time before the prediction time, or since the first event"
    )
    value_bins: int = Field(10, ge=0, description="Per-code quantile bins of numeric values (0 = standardised value only)")
    causal: bool = Field(False, description="Each event attends only to earlier events (next-event pretraining)")
    target_min_count: int = Field(5, ge=1, description="Next-event targets: codes seen at least this often in training")
    target_codes: int = Field(0, ge=0, description="Number of next-event target codes (set by the data: the most "
                                                     "frequent codes, ids 3 .. 3 + target_codes)")
    code_text: Literal["none", "own", "shared"] = Field(
        "none", description="Add each code's display-name word-piece embeddings (DescEmb); shared: the text "
                            "encoder's word embeddings")
    pooling_weight: Literal["event", "code"] = Field(
        "event", description="Pooled embedding: every event weighs the same, or every distinct code of the record "
                             "(its events share 1/count: repeated vitals no longer outweigh one diagnosis, as term "
                             "frequency saturates in BM25)")
    code_text_length: int = Field(16, ge=1, description="Word pieces kept per code display name")
    text_vocab_size: int = Field(0, ge=0, description="Word-piece vocabulary of the code display names (set by the "
                                                      "data: the text tokenizer's size)")


MASK_CODE = 1
FIRST_CODE = 3  # ids 0 pad, 1 mask, 2 unknown


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
    """Days -> width: sinusoids with periods from 1 day to `max_period` days, or log2 buckets."""

    def __init__(self, width: int, kind: str, max_period: float = 10_000.0) -> None:
        super().__init__()
        self.kind = kind
        if kind == "sinusoidal":
            periods = torch.logspace(0, math.log10(max_period), width // 2)
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
    """code + value (bin, standardised value or no-value) + time, age and gap embeddings (static: a learned
    static embedding instead of the time ones), one vector per event."""

    def __init__(self, cfg: EhrConfig, width: int) -> None:
        super().__init__()
        self.code = nn.Embedding(cfg.vocab_size, width, padding_idx=0)
        self.words: nn.Embedding | None = None
        if cfg.code_text != "none":
            self.words = nn.Embedding(max(cfg.text_vocab_size, 1), width, padding_idx=0)
            self.register_buffer("code_words", torch.zeros(cfg.vocab_size, cfg.code_text_length, dtype=torch.long))
        self.value = nn.Sequential(nn.Linear(1, width), nn.GELU(), nn.Linear(width, width))
        self.bins = nn.Embedding(cfg.value_bins + 1, width, padding_idx=0)
        self.no_value = nn.Parameter(torch.randn(width) * 0.02)
        self.static = nn.Parameter(torch.randn(width) * 0.02)
        self.time = TimeEncoding(width, cfg.time_encoding)
        self.age = TimeEncoding(width, "sinusoidal", max_period=40_000.0)
        self.gap = TimeEncoding(width, "log_bucket")
        self.norm = nn.LayerNorm(width)

    def forward(self, codes, values, value_mask, days, value_bins=None, age=None, gap=None, static=None) -> torch.Tensor:
        """Event vectors [B, L, W] from `codes` [B, L] long, `values` [B, L], `value_mask` [B, L] bool, `days` [B, L];
        optional `value_bins` [B, L] long, `age` [B, L] days (NaN unknown), `gap` [B, L] days, `static` [B, L] bool."""
        v = torch.where(value_mask[..., None], self.value(values.nan_to_num()[..., None]), self.no_value)
        if value_bins is not None:
            binned = value_mask & (value_bins > 0)
            v = torch.where(binned[..., None], self.bins(value_bins.clamp(0, self.bins.num_embeddings - 1)), v)
        t = self.time(days)
        if age is not None:
            known = ~torch.isnan(age)
            t = t + self.age(age.nan_to_num(0.0)) * known[..., None]
        if gap is not None:
            t = t + self.gap(gap)
        if static is not None:
            t = torch.where(static[..., None], self.static, t)
        return self.norm(self.code_vectors(codes) + v + t)

    def code_vectors(self, codes: torch.Tensor) -> torch.Tensor:
        """Code embeddings [..., W] of `codes` [...] long: the learned vector, plus (`code_text`) the mean
        embedding of the code's display-name word pieces."""
        out = self.code(codes)
        if self.words is None:
            return out
        pieces = self.code_words[codes]  # [..., K]
        real = (pieces > 0).to(out.dtype)
        words = (self.words(pieces) * real[..., None]).sum(-2) / real.sum(-1, keepdim=True).clamp_min(1.0)
        return out + words


class SdpaBlock(nn.Module):
    """Pre-norm transformer block on `scaled_dot_product_attention`: [B, L, W] -> [B, L, W]."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.ff = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor, mask: torch.Tensor, causal: bool) -> torch.Tensor:
        """`x` [B, L, W], real-token `mask` [B, L] (left-aligned when `causal`): the block's output [B, L, W]."""
        b, n, w = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        if causal:  # left-aligned rows: a real event's earlier keys are all real
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            keys = mask.clone()
            keys[~mask.any(1), 0] = True  # a row without events attends to position 0 (its output is masked)
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=keys[:, None, None, :])
        x = x + self.out(a.transpose(1, 2).reshape(b, n, w))
        return x + self.ff(self.norm2(x))


class EventTransformer(nn.Module):
    """A stack of `SdpaBlock`s over event vectors: [B, L, W] -> [B, L, W]."""

    def __init__(self, width: int, layers: int, heads: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(SdpaBlock(width, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, causal: bool = False) -> torch.Tensor:
        """Hidden states [B, L, W] of `x` [B, L, W] under the real-token `mask` [B, L]."""
        for layer in self.layers:
            x = layer(x, mask, causal)
        return self.norm(x)


def time_gaps(times: torch.Tensor, mask: torch.Tensor, static: torch.Tensor | None) -> torch.Tensor:
    """Days since the previous timed event [B, L] (0 for the first, static and padded events)."""
    prev = torch.cat([times[:, :1], times[:, :-1]], 1)
    timed = mask if static is None else mask & ~static
    prev_timed = torch.cat([torch.zeros_like(timed[:, :1]), timed[:, :-1]], 1)
    return torch.where(timed & prev_timed, (times - prev).clamp_min(0.0), torch.zeros_like(times))


class EhrAdapter(Adapter):
    """EHR adapter: a transformer over each subject's events up to its prediction time (tensors: see the module doc)."""

    modality = "ehr"
    Config = EhrConfig

    def __init__(self, cfg: EhrConfig, width: int, preset: str) -> None:
        size = resolve(cfg, preset)
        encoder = nn.ModuleDict(
            {
                "embed": EventEmbedding(cfg, size["width"]),
                "transformer": EventTransformer(size["width"], size["layers"], size["heads"]),
            }
        )
        super().__init__(encoder, size["width"], width)
        self.cfg = cfg
        if cfg.pretrained:
            self.encoder.load_state_dict(torch.load(f"{cfg.pretrained}/encoder.pt", map_location="cpu"))
        if cfg.freeze:
            self.freeze_encoder()

    def set_tables(self, tables: dict[str, torch.Tensor]) -> None:
        """Fill the data's tables: `code_words` [vocab_size, K'] long, each code's display word pieces (0 = pad;
        cut or padded to `code_text_length`; rows past the table stay 0). More codes than `vocab_size` is an error."""
        embed = self.encoder["embed"]
        if "code_words" not in tables or embed.words is None:
            return
        t, buf = tables["code_words"].long(), embed.code_words
        if t.shape[0] > buf.shape[0]:  # codes past vocab_size would silently lose their words: a data/config mismatch
            raise ConfigError(f"ehr code_words table has {t.shape[0]} codes, the adapter's vocab_size is {buf.shape[0]}")
        n, k = t.shape[0], min(t.shape[1], buf.shape[1])
        buf.zero_()
        buf[:n, :k] = t[:n, :k]

    def tie(self, adapters: nn.ModuleDict) -> None:
        """`code_text: shared`: use the text adapter's word embeddings [text_vocab, W] for the display names."""
        embed = self.encoder["embed"]
        if self.cfg.code_text != "shared" or embed.words is None or "text" not in adapters:
            return
        text_words = adapters["text"].encoder.get_input_embeddings()
        if tuple(text_words.weight.shape) != tuple(embed.words.weight.shape):
            raise ConfigError(f"ehr.code_text: shared needs the text encoder's word embeddings to be "
                             f"{tuple(embed.words.weight.shape)} (text vocabulary x EHR width), they are "
                             f"{tuple(text_words.weight.shape)}; use code_text: own, or equal widths")
        embed.words = text_words

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
        static = t.get("static")
        static = static & mask if static is not None else None
        age = t.get("age")
        gap = t["gap"].float() * mask if "gap" in t else time_gaps(times, mask, static)
        h = self.encoder["embed"](codes, t["values"].float(), value_mask, days, t.get("value_bins"),
                                  age.float() if age is not None else None, gap, static)
        h = self.encoder["transformer"](h, mask, self.cfg.causal)
        return h, mask

    def token_weights(self, tensors):
        """With `pooling_weight: code`, 1 / (events of the same code in the row) [B, L'] for the events `encode`
        keeps; else None."""
        if self.cfg.pooling_weight == "event":
            return None
        t = self._events(tensors)
        codes, mask = t["codes"].long(), t["mask"]
        counts = torch.zeros(codes.shape[0], int(codes.max()) + 1, device=codes.device)
        counts.scatter_add_(1, codes, mask.float())
        return 1.0 / counts.gather(1, codes).clamp_min(1.0)

    def example_tensors(self, batch_size, length, generator):
        """Random left-aligned events: `codes`, `values`, `value_mask`, `value_bins`, `times` (ascending), `age`,
        `static` (the first event), `mask`, all [B, L]."""
        b, n = batch_size, length
        lengths = torch.randint(1, n + 1, (b, 1), generator=generator)
        mask = torch.arange(n)[None] < lengths
        value_mask = (torch.rand(b, n, generator=generator) < 0.5) & mask
        times = torch.rand(b, n, generator=generator).mul(3650).sort(1).values
        return {
            "codes": torch.randint(FIRST_CODE, self.cfg.vocab_size, (b, n), generator=generator) * mask,
            "values": torch.randn(b, n, generator=generator),
            "value_mask": value_mask,
            "value_bins": torch.randint(1, self.cfg.value_bins + 1, (b, n), generator=generator) * value_mask,
            "times": times,
            "age": times + 10_000.0,
            "static": (torch.arange(n)[None] == 0) & mask,
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

    def next_event_targets(self, tensors: dict[str, torch.Tensor], max_positions: int) -> dict[str, torch.Tensor]:
        """CLMBR-style targets aligned with the output tokens: at the last event of each day that has a later
        day, the codes of that next day. Returns `row` [P] and `pos` [P] long (the token each prediction reads,
        at most `max_positions` per row, the most recent kept), `target` [P, target_codes] float multi-hot
        over the target codes (ids `FIRST_CODE .. FIRST_CODE + target_codes`)."""
        t = self._events(tensors)
        mask, codes, k = t["mask"], t["codes"], self.cfg.target_codes
        day = torch.floor(t["times"].double())
        static = t.get("static")
        timed = mask if static is None else mask & ~static
        big = torch.finfo(torch.float64).max
        day = torch.where(timed, day, torch.full_like(day, -big))
        # day index per row: increments where the day changes among timed events (left-aligned, ascending)
        prev = torch.cat([torch.full_like(day[:, :1], -big), day[:, :-1]], 1)
        new_day = timed & (day != prev)
        day_id = torch.cumsum(new_day.long(), 1) - 1  # -1 before the first timed event
        nxt = torch.cat([day[:, 1:], torch.full_like(day[:, :1], -big)], 1)
        nxt_timed = torch.cat([timed[:, 1:], torch.zeros_like(timed[:, :1])], 1)
        last_of_day = timed & (~nxt_timed | (nxt != day))
        n_days = day_id.max(1).values + 1  # per row
        has_next = last_of_day & (day_id < (n_days[:, None] - 1))
        # keep the most recent `max_positions` per row
        rank = torch.flip(torch.cumsum(torch.flip(has_next.long(), [1]), 1), [1])
        sel = has_next & (rank <= max_positions)
        row, pos = sel.nonzero(as_tuple=True)
        b = mask.shape[0]
        slots = torch.full((b, int(n_days.max().clamp_min(1))), -1, dtype=torch.long)
        slots[row, day_id[row, pos]] = torch.arange(len(row))
        target = torch.zeros(len(row), max(k, 1))
        ok = timed & (codes >= FIRST_CODE) & (codes < FIRST_CODE + k) & (day_id > 0)
        er, ep = ok.nonzero(as_tuple=True)
        src = slots[er, day_id[er, ep] - 1]
        hit = src >= 0
        target[src[hit], codes[er, ep][hit] - FIRST_CODE] = 1.0
        return {"row": row, "pos": pos, "target": target[:, :k] if k else target[:, :0]}
