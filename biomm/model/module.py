"""BiommModel: adapters + fusion backbone (+ LLaVA projector) + heads, assembled by `biomm.model.factory.build_model`.

Parts are injected (TorchMultimodal style). The model returns `Outputs`; it computes no loss.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_model
from torch import nn

from biomm.model.config import ModelConfig
from biomm.types import Batch, ModalityInput, Outputs, Tokens

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"


class BiommModel(nn.Module):
    """`forward(batch) -> Outputs`.

    Outputs.tokens[m]: the adapter's tokens (masked by presence); pooled[m]: the modality's own
    embedding; fused_tokens / fused_mask / fused from the backbone; aux["lm_prefix"] (+ mask)
    when a projector is set; aux["mlm"][m] = {mask, target} when the batch carries `mlm_mask`.
    Parameters of a modality missing from the batch are touched with weight 0, so DDP works
    without `find_unused_parameters`.
    """

    def __init__(self, adapters: nn.ModuleDict, backbone: nn.Module, heads: nn.ModuleDict | None = None,
                 projector: nn.Module | None = None, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.adapters, self.backbone = adapters, backbone
        self.heads = heads if heads is not None else nn.ModuleDict()
        self.projector = projector
        self.config = config

    def forward(self, batch: Batch) -> Outputs:
        """`Outputs` of `batch`: tokens {m: [B, T_m, D]}, pooled {m: [B, D]}, present {m: [B]},
        fused_tokens [B, T, D], fused_mask [B, T], fused [B, D] (see the class doc)."""
        tokens, present, aux = {}, {}, {}
        for m, inp in batch.modalities.items():
            if m not in self.adapters:
                continue
            t = self.adapters[m](inp.tensors)
            tokens[m] = t.masked(inp.present)
            present[m] = inp.present
            if "mlm_mask" in inp.tensors:
                aux.setdefault("mlm", {})[m] = {k: v for k, v in self.adapters[m].mlm_targets(inp.tensors).items()}
                aux["mlm"][m]["mask"] = aux["mlm"][m]["mask"] & inp.present[:, None]
        if not tokens:
            raise ValueError(f"batch has none of the model's modalities ({', '.join(self.adapters)})")
        fused = self.backbone(tokens, present)
        zero = self._unused_zero(tokens, fused.fused)
        out = Outputs(tokens, fused.pooled, present, fused.fused_tokens, fused.fused_mask, fused.fused + zero, aux)
        if self.projector is not None:
            aux["lm_prefix"], aux["lm_prefix_mask"] = self.projector(fused.fused_tokens), fused.fused_mask
        return out

    def _unused_zero(self, tokens: dict[str, Tokens], ref: torch.Tensor) -> torch.Tensor:
        params = [p for m in self.adapters if m not in tokens
                  for p in [*self.adapters[m].parameters(), *self.backbone.modality_parameters(m)] if p.requires_grad]
        if not params:
            return ref.new_zeros(())
        return sum(p.reshape(-1)[0] for p in params).to(ref.dtype) * 0.0

    @torch.no_grad()
    def embed(self, modality: str, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        """One modality's pooled embedding [B, D] alone (retrieval, zero-shot label prompts)."""
        return self.backbone.embed(modality, self.adapters[modality](tensors))

    # persistence -------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        """Write config.json (the ModelConfig) and model.safetensors into `folder`."""
        if self.config is None:
            raise ValueError("save() needs a model built by build_model(config)")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / CONFIG_FILE).write_text(json.dumps(self.config.model_dump(mode="json"), indent=2))
        save_model(self, str(folder / WEIGHTS_FILE))
        return folder

    def example_batch(self, batch_size: int, length: int = 16, present_prob: float = 1.0, seed: int = 0) -> Batch:
        """Random tensors shaped for every adapter (smoke tests, benchmarks)."""
        g = torch.Generator().manual_seed(seed)
        mods = {}
        for m, a in self.adapters.items():
            present = torch.rand(batch_size, generator=g) < present_prob
            mods[m] = ModalityInput(a.example_tensors(batch_size, length, g), present)
        return Batch(mods, [f"s{i}" for i in range(batch_size)])
