"""Imaging adapter: 2D or 3D networks from `monai.networks.nets`.

`vit` (default): patch tokens. `densenet121` / `resnet18|34|50`: positions of the final
feature map are the tokens. Tensors: `image` [B,C,H,W] or [B,C,D,H,W].
Masked modelling (ViT only): masked patches are replaced by a learned token before the
position embedding (SimMIM-style) and their pixels (per-patch normalised, as in MAE) are the target.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from monai.networks import nets
from pydantic import Field
from torch import nn

from biomm.adapters.base import Adapter, AdapterConfig, MlmSpec, resolve


class ImagingConfig(AdapterConfig):
    """Config of the MONAI imaging adapter: network, 2D / 3D, channels, input side and ViT patch size."""

    network: Literal["vit", "densenet121", "resnet18", "resnet34", "resnet50"] = "vit"
    spatial_dims: Literal[2, 3] = 2
    in_channels: int = Field(1, ge=1)
    img_size: int = Field(64, ge=1, description="Side of the (cubic / square) input")
    patch_size: int = Field(8, ge=1)


class CnnFeatures(nn.Module):
    """Final feature map of a MONAI CNN as [B, positions, channels]."""

    def __init__(self, cfg: ImagingConfig) -> None:
        super().__init__()
        if cfg.network == "densenet121":
            self.net = nets.DenseNet121(spatial_dims=cfg.spatial_dims, in_channels=cfg.in_channels, out_channels=1).features
            self.width = self.net[-1].num_features
        else:
            self.net = nets.ResNetFeatures(cfg.network, pretrained=False, spatial_dims=cfg.spatial_dims, in_channels=cfg.in_channels)
            self.width = 2048 if cfg.network == "resnet50" else 512

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Final feature map of `image` [B, C, *S] as tokens [B, positions, channels]."""
        f = self.net(image)
        f = f[-1] if isinstance(f, (list, tuple)) else f
        return f.flatten(2).transpose(1, 2)


class ImagingAdapter(Adapter):
    """Imaging adapter: ViT patch tokens or CNN feature-map positions of `image` [B, C, *S]."""

    modality = "imaging"
    Config = ImagingConfig

    def __init__(self, cfg: ImagingConfig, width: int, preset: str) -> None:
        size = resolve(cfg, preset)
        if cfg.network == "vit":
            encoder = nets.ViT(
                in_channels=cfg.in_channels, img_size=cfg.img_size, patch_size=cfg.patch_size,
                hidden_size=size["width"], mlp_dim=4 * size["width"], num_layers=size["layers"],
                num_heads=size["heads"], spatial_dims=cfg.spatial_dims, classification=False,
            )
            enc_width = size["width"]
            for block in encoder.blocks:  # MONAI builds a cross-attention norm that self-attention never uses
                block.norm_cross_attn.requires_grad_(False)
        else:
            encoder = CnnFeatures(cfg)
            enc_width = encoder.width
        super().__init__(encoder, enc_width, width)
        self.cfg = cfg
        self.n_patches = (cfg.img_size // cfg.patch_size) ** cfg.spatial_dims
        if cfg.network == "vit":
            self.mask_token = nn.Parameter(torch.zeros(size["width"]))
        if cfg.pretrained:
            self.encoder.load_state_dict(torch.load(Path(cfg.pretrained) / "encoder.pt", map_location="cpu"))
        if cfg.freeze:
            self.freeze_encoder()

    def encode(self, tensors):
        """Hidden states [B, T, E] (T = patches for the ViT, feature-map positions for a CNN) and an all-True mask [B, T]."""
        image = tensors["image"].float()
        if self.cfg.network != "vit":
            h = self.encoder(image)
        else:
            pe = self.encoder.patch_embedding
            x = pe.patch_embeddings(image).flatten(2).transpose(1, 2)
            # always through torch.where, so the mask token is in the graph (DDP) even unmasked
            hide = tensors.get("mlm_mask", torch.zeros(x.shape[:2], dtype=torch.bool, device=x.device))
            x = torch.where(hide[..., None], self.mask_token.to(x.dtype), x)
            x = pe.dropout(x + pe.position_embeddings)
            for block in self.encoder.blocks:
                x = block(x)
            h = self.encoder.norm(x)
        return h, torch.ones(h.shape[:2], dtype=torch.bool, device=h.device)

    def patchify(self, image: torch.Tensor) -> torch.Tensor:
        """[B,C,*S] -> [B, patches, C*p^dims] in the ViT's (conv) patch order."""
        p, d, c = self.cfg.patch_size, self.cfg.spatial_dims, image.shape[1]
        b = image.shape[0]
        g = [s // p for s in image.shape[2:]]
        x = image.reshape(b, c, *[v for gi in g for v in (gi, p)])
        grid_axes = [2 + 2 * i for i in range(d)]
        patch_axes = [3 + 2 * i for i in range(d)]
        x = x.permute(0, *grid_axes, 1, *patch_axes)
        return x.reshape(b, -1, c * p**d)

    def example_tensors(self, batch_size, length, generator):
        """A random `image` [B, C, *S] at the configured size (`length` is unused)."""
        shape = (batch_size, self.cfg.in_channels, *[self.cfg.img_size] * self.cfg.spatial_dims)
        return {"image": torch.randn(shape, generator=generator)}

    @property
    def mlm_spec(self) -> MlmSpec:
        """Regress each patch's C*p^dims pixels; ValueError unless the network is the ViT."""
        if self.cfg.network != "vit":
            raise ValueError("masked patch modelling needs the 'vit' imaging network")
        return MlmSpec(kind="regress", size=self.cfg.in_channels * self.cfg.patch_size**self.cfg.spatial_dims)

    def mlm_candidates(self, tensors):
        """Every patch may be masked: [B, n_patches] bool."""
        b = tensors["image"].shape[0]
        return torch.ones(b, self.n_patches, dtype=torch.bool, device=tensors["image"].device)

    def mlm_targets(self, tensors):
        """`mask` [B, P] bool (the `mlm_mask`) and per-patch normalised pixels `target` [B, P, C*p^dims]."""
        t = self.patchify(tensors["image"].float())
        t = (t - t.mean(-1, keepdim=True)) / (t.var(-1, keepdim=True) + 1e-6).sqrt()
        return {"mask": tensors["mlm_mask"], "target": t}
