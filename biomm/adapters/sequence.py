"""Sequence adapter: proteins and DNA through `transformers` `EsmModel`.

- Random encoder: an `EsmConfig` at the model's size preset, over the data's alphabet (ESM-2's 33
  tokens for proteins; the k-mer vocabulary of the DNA tokenizer), its pad / mask / cls / eos ids set
  by the data (`biomm.data.sequence`), so masked modelling hides and predicts the right tokens.
- Pretrained encoder: `EsmModel.from_pretrained(local_dir)` for an ESM-2 checkpoint or a
  Nucleotide-Transformer (v1, `EsmForMaskedLM`-style) one saved with `save_pretrained`; its tokenizer
  is read from the same folder. Nothing is downloaded.
- Frozen (`freeze: true`: only the projector trains), partly fine-tuned (`trainable_layers: N`: the
  last N layers and the projector) or fully fine-tuned (default).

Tensors: `input_ids` [B, L] long, `attention_mask` [B, L]. Masked modelling predicts residues / k-mers.
"""
from __future__ import annotations

from pathlib import Path

from pydantic import Field
from transformers import EsmConfig, EsmModel

from biomm.adapters.base import AdapterConfig, resolve
from biomm.adapters.hf import HfTokenAdapter


class SequenceConfig(AdapterConfig):
    """Config of the sequence adapter: alphabet size and special ids of a random ESM encoder (the data sets
    them), its maximum length, and how much of a pretrained one is fine-tuned."""

    vocab_size: int = Field(33, ge=4, description="Alphabet size of a random encoder (ESM: 33; set by the data)")
    max_length: int = Field(1026, ge=8)
    pad_token_id: int = Field(1, ge=0, description="Padding id (ESM: 1; set by the data)")
    mask_token_id: int | None = Field(None, ge=0, description="Mask id (default: the last id, as ESM's <mask>)")
    cls_token_id: int = Field(0, ge=0, description="Start id (ESM: <cls> = 0)")
    eos_token_id: int = Field(2, ge=0, description="End id (ESM: <eos> = 2)")
    trainable_layers: int | None = Field(None, ge=0, description="Fine-tune only the last N encoder layers "
                                                                  "(and the projector); None: every layer")


class SequenceAdapter(HfTokenAdapter):
    """Protein / DNA adapter: an `EsmModel` (random at a preset size, or from a local directory) over `input_ids` [B, L]."""

    modality = "sequence"
    Config = SequenceConfig

    def __init__(self, cfg: SequenceConfig, width: int, preset: str) -> None:
        if cfg.pretrained:
            if not Path(cfg.pretrained).is_dir():
                raise FileNotFoundError(f"adapters.sequence.pretrained: no folder {cfg.pretrained} (a local "
                                        "`save_pretrained` directory; nothing is downloaded)")
            model = EsmModel.from_pretrained(cfg.pretrained, add_pooling_layer=False, local_files_only=True)
        else:
            size = resolve(cfg, preset)
            conf = EsmConfig(
                vocab_size=cfg.vocab_size, hidden_size=size["width"], num_hidden_layers=size["layers"],
                num_attention_heads=size["heads"], intermediate_size=4 * size["width"],
                max_position_embeddings=cfg.max_length, position_embedding_type="rotary",
                pad_token_id=cfg.pad_token_id,
                mask_token_id=cfg.vocab_size - 1 if cfg.mask_token_id is None else cfg.mask_token_id,
                cls_token_id=cfg.cls_token_id, eos_token_id=cfg.eos_token_id,
                token_dropout=False, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
            )
            model = EsmModel(conf, add_pooling_layer=False)
        # Contact prediction is not used here; frozen so DDP does not wait for its gradients.
        model.contact_head.requires_grad_(False)
        super().__init__(model, width, cfg.freeze)
        self.cfg = cfg
        if cfg.trainable_layers is not None and not cfg.freeze:
            self.train_last_layers(cfg.trainable_layers)

    def train_last_layers(self, n: int) -> None:
        """Freeze the embeddings and every encoder layer but the last `n` (the projector always trains)."""
        layers = self.encoder.encoder.layer
        keep = {f"encoder.encoder.layer.{i}." for i in range(max(len(layers) - n, 0), len(layers))}
        for name, p in self.named_parameters():
            if name.startswith("projector.") or any(name.startswith(k) for k in keep):
                continue
            if n > 0 and name.startswith("encoder.encoder.emb_layer_norm_after"):
                continue  # the final norm belongs with the last layers
            p.requires_grad_(False)
