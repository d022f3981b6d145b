"""Sequence adapter: proteins and DNA through `transformers` `EsmModel`.

A tiny/small/base random `EsmConfig` (vocab 33 = the ESM protein alphabet; set `vocab_size`
for a DNA alphabet), or `EsmModel.from_pretrained(local_dir)`.
Tensors: `input_ids` [B,L] long, `attention_mask` [B,L]. Masked modelling predicts residues.
"""
from __future__ import annotations

from pydantic import Field
from transformers import EsmConfig, EsmModel

from biomm.adapters.base import AdapterConfig, resolve
from biomm.adapters.hf import HfTokenAdapter


class SequenceConfig(AdapterConfig):
    """Config of the sequence adapter: alphabet size and maximum length of a random ESM encoder."""

    vocab_size: int = Field(33, ge=4, description="Alphabet size of a random encoder (ESM: 33)")
    max_length: int = Field(1026, ge=8)


class SequenceAdapter(HfTokenAdapter):
    """Protein / DNA adapter: an `EsmModel` (random at a preset size, or from a local directory) over `input_ids` [B, L]."""

    modality = "sequence"
    Config = SequenceConfig

    def __init__(self, cfg: SequenceConfig, width: int, preset: str) -> None:
        if cfg.pretrained:
            model = EsmModel.from_pretrained(cfg.pretrained, add_pooling_layer=False)
        else:
            size = resolve(cfg, preset)
            conf = EsmConfig(
                vocab_size=cfg.vocab_size, hidden_size=size["width"], num_hidden_layers=size["layers"],
                num_attention_heads=size["heads"], intermediate_size=4 * size["width"],
                max_position_embeddings=cfg.max_length, position_embedding_type="rotary",
                pad_token_id=1, mask_token_id=cfg.vocab_size - 1, cls_token_id=0, eos_token_id=2,
                token_dropout=False, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
            )
            model = EsmModel(conf, add_pooling_layer=False)
        # Contact prediction is not used here; frozen so DDP does not wait for its gradients.
        model.contact_head.requires_grad_(False)
        super().__init__(model, width, cfg.freeze)
        self.cfg = cfg
