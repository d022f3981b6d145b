"""Shared wrapper for `transformers` token encoders (ESM for sequences, BERT for text)."""
from __future__ import annotations

import torch
from torch import nn

from biomm.adapters.base import Adapter, MlmSpec


class HfTokenAdapter(Adapter):
    """`input_ids`, `attention_mask` -> last hidden states; MLM replaces ids with the mask token."""

    def __init__(self, model: nn.Module, width: int, freeze: bool) -> None:
        super().__init__(model, model.config.hidden_size, width)
        conf = model.config
        self.mask_id = int(getattr(conf, "mask_token_id", None) or 0)
        self.special = sorted({int(i) for i in (conf.pad_token_id, getattr(conf, "cls_token_id", None),
                                               getattr(conf, "eos_token_id", None), getattr(conf, "bos_token_id", None),
                                               getattr(conf, "sep_token_id", None), self.mask_id) if i is not None})
        if freeze:
            self.freeze_encoder()

    def encode(self, tensors):
        """Last hidden states [B, L, E] and `attention_mask` [B, L] bool; `mlm_mask` positions get the mask token."""
        ids, mask = tensors["input_ids"], tensors["attention_mask"].bool()
        if "mlm_mask" in tensors:
            ids = torch.where(tensors["mlm_mask"], torch.full_like(ids, self.mask_id), ids)
        attn = mask.clone()
        attn[~mask.any(1), 0] = True  # an all-padding row (absent subject) must not attend to nothing
        h = self.encoder(input_ids=ids, attention_mask=attn.long()).last_hidden_state
        return h, mask

    def example_tensors(self, batch_size, length, generator):
        """Random non-special `input_ids` [B, L] long and an all-ones `attention_mask` [B, L]."""
        conf = self.encoder.config
        ids = torch.randint(len(self.special) + 3, conf.vocab_size - 1, (batch_size, length), generator=generator)
        ids = torch.where(torch.isin(ids, torch.tensor(self.special)), len(self.special) + 3, ids)
        return {"input_ids": ids, "attention_mask": torch.ones(batch_size, length, dtype=torch.long)}

    @property
    def mlm_spec(self) -> MlmSpec:
        """Classify over the encoder's vocabulary."""
        return MlmSpec(kind="classify", size=self.encoder.config.vocab_size)

    def mlm_candidates(self, tensors):
        """Attended, non-special token positions: [B, L] bool."""
        ids = tensors["input_ids"]
        special = torch.isin(ids, torch.tensor(self.special, device=ids.device))
        return tensors["attention_mask"].bool() & ~special

    def mlm_targets(self, tensors):
        """`mask` [B, L] bool (masked and attended) and `target` = the original `input_ids` [B, L] long."""
        return {"mask": tensors["mlm_mask"] & tensors["attention_mask"].bool(), "target": tensors["input_ids"]}
