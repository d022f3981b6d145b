"""Autoregressive objective: next-token loss of a `transformers` causal LM conditioned on the
fused tokens, LLaVA-style (projected fused tokens as a prefix of `inputs_embeds`) or
Flamingo-style (tanh-gated cross-attention to the fused tokens after every decoder layer).

Text comes in `batch.labels`: `lm_input_ids` [B,L], `lm_attention_mask` [B,L], optional
`lm_labels` [B,L] (default: the ids, padding -> -100). Media positions are labelled -100.
"""
from __future__ import annotations

import torch
from torch import nn

from biomm.adapters.base import PRESETS
from biomm.fusion.xattn import GatedCrossAttentionBlock
from biomm.types import Batch, Outputs

IGNORE = -100


def build_lm(kind: str = "gpt2", pretrained: str | None = None, preset: str = "tiny", vocab_size: int = 1000) -> nn.Module:
    """A causal LM: `from_pretrained(local_dir)` or a random GPT-2 / Llama config at a preset size."""
    from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    if pretrained:
        return AutoModelForCausalLM.from_pretrained(pretrained)
    s = PRESETS[preset]
    if kind == "gpt2":
        return GPT2LMHeadModel(GPT2Config(vocab_size=vocab_size, n_embd=s["width"], n_layer=s["layers"], n_head=s["heads"], n_positions=1024,
                                          bos_token_id=vocab_size - 1, eos_token_id=vocab_size - 1))
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab_size, hidden_size=s["width"], intermediate_size=4 * s["width"],
                                        num_hidden_layers=s["layers"], num_attention_heads=s["heads"],
                                        num_key_value_heads=s["heads"], max_position_embeddings=1024,
                                        bos_token_id=1, eos_token_id=2, pad_token_id=0))


def decoder_layers(lm: nn.Module) -> nn.ModuleList:
    """The LM's list of decoder blocks (GPT-2 `transformer.h`, Llama `model.layers`, ...)."""
    n = lm.config.num_hidden_layers
    for module in lm.modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return module
    raise ValueError(f"cannot find the {n} decoder layers of {type(lm).__name__}")


class Autoregressive(nn.Module):
    """`forward(outputs, batch) -> (loss, metrics)`. `media_width` = fused token width (xattn mode)."""

    def __init__(self, lm: nn.Module, mode: str = "prefix", media_width: int | None = None, freeze_lm: bool = True) -> None:
        super().__init__()
        if mode not in ("prefix", "xattn"):
            raise ValueError(f"mode must be 'prefix' or 'xattn', got '{mode}'")
        self.lm, self.mode = lm, mode
        if freeze_lm:
            self.lm.requires_grad_(False)
        self._media: tuple[torch.Tensor, torch.Tensor] | None = None
        if mode == "xattn":
            hidden = lm.config.hidden_size
            heads = lm.config.num_attention_heads
            layers = decoder_layers(lm)
            self.xattn = nn.ModuleList(GatedCrossAttentionBlock(hidden, heads, media_width or hidden) for _ in layers)
            # Hooks insert the gated blocks after each decoder layer without copying the LM's code.
            for layer, block in zip(layers, self.xattn):
                layer.register_forward_hook(self._hook(block))

    def _hook(self, block: GatedCrossAttentionBlock):
        def hook(module, args, output):
            if self._media is None:
                return output
            media, mask = self._media
            if isinstance(output, tuple):
                return (block(output[0], media.to(output[0].dtype), mask), *output[1:])
            return block(output, media.to(output.dtype), mask)

        return hook

    def forward(self, outputs: Outputs, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """Next-token loss (scalar) of the LM on the `batch.labels` text given the fused tokens, and {loss, ppl}."""
        ids = batch.labels["lm_input_ids"]
        attn = batch.labels.get("lm_attention_mask", torch.ones_like(ids))
        labels = batch.labels.get("lm_labels", ids.masked_fill(attn == 0, IGNORE))
        embeds = self.lm.get_input_embeddings()(ids)
        if self.mode == "prefix":
            if "lm_prefix" not in outputs.aux:
                raise ValueError("prefix mode needs the model's projector (projector.out_dim = the LM's hidden size)")
            prefix, pmask = outputs.aux["lm_prefix"], outputs.aux["lm_prefix_mask"]
            embeds = torch.cat([prefix.to(embeds.dtype), embeds], 1)
            attn = torch.cat([pmask.long(), attn.long()], 1)
            labels = torch.cat([torch.full(pmask.shape, IGNORE, dtype=labels.dtype, device=labels.device), labels], 1)
            result = self.lm(inputs_embeds=embeds, attention_mask=attn, labels=labels)
        else:
            self._media = (outputs.fused_tokens, outputs.fused_mask)
            try:
                result = self.lm(inputs_embeds=embeds, attention_mask=attn, labels=labels)
            finally:
                self._media = None
        loss = result.loss
        return loss, {"loss": float(loss.detach()), "ppl": float(loss.detach().exp())}
