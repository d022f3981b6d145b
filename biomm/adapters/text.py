"""Text adapter: a `transformers` BERT encoder for notes and for zero-shot label prompts.

A tiny/small/base random `BertConfig`, or `AutoModel.from_pretrained(local_dir)` for any
BERT-family checkpoint (BioClinicalBERT, PubMedBERT, ...).
Tensors: `input_ids` [B,L] long, `attention_mask` [B,L]. Masked modelling predicts word pieces.
"""
from __future__ import annotations

from pydantic import Field
from transformers import AutoModel, BertConfig, BertModel

from biomm.adapters.base import AdapterConfig, resolve
from biomm.adapters.hf import HfTokenAdapter


class TextConfig(AdapterConfig):
    """Config of the text adapter: vocabulary and maximum length of a random BERT encoder."""

    vocab_size: int = Field(30522, ge=8, description="Vocabulary of a random encoder (BERT: 30522)")
    max_length: int = Field(512, ge=8)


class TextAdapter(HfTokenAdapter):
    """Text adapter: a BERT-family encoder (random at a preset size, or from a local directory) over `input_ids` [B, L]."""

    modality = "text"
    Config = TextConfig

    def __init__(self, cfg: TextConfig, width: int, preset: str) -> None:
        if cfg.pretrained:
            model = AutoModel.from_pretrained(cfg.pretrained, add_pooling_layer=False)
        else:
            size = resolve(cfg, preset)
            # BERT's word-piece ids where they fit, else the first ids of a small vocabulary
            cls_id, sep_id, mask_id = (101, 102, 103) if cfg.vocab_size > 103 else (1, 2, 3)
            conf = BertConfig(
                vocab_size=cfg.vocab_size, hidden_size=size["width"], num_hidden_layers=size["layers"],
                num_attention_heads=size["heads"], intermediate_size=4 * size["width"],
                max_position_embeddings=cfg.max_length, pad_token_id=0, mask_token_id=mask_id,
                cls_token_id=cls_id, sep_token_id=sep_id,
                hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,  # as the other encoders
            )
            model = BertModel(conf, add_pooling_layer=False)
        super().__init__(model, width, cfg.freeze)
        self.cfg = cfg
