"""LLaVA projector: fused tokens -> a causal LM's embedding width. `linear` or `mlp{N}x_gelu`."""
from __future__ import annotations

import re

from torch import nn

PROJECTOR_PATTERN = r"^(linear|mlp[1-9][0-9]*x_gelu)$"


def build_projector(kind: str, width: int, out_width: int) -> nn.Module:
    """`linear`: one Linear; `mlpNx_gelu`: N Linear layers with GELU between (LLaVA-1.5 uses mlp2x_gelu)."""
    if kind == "linear":
        return nn.Linear(width, out_width)
    match = re.match(r"^mlp(\d+)x_gelu$", kind)
    if not match:
        raise ValueError(f"unknown projector '{kind}': use 'linear' or 'mlpNx_gelu'")
    layers: list[nn.Module] = [nn.Linear(width, out_width)]
    for _ in range(int(match.group(1)) - 1):
        layers += [nn.GELU(), nn.Linear(out_width, out_width)]
    return nn.Sequential(*layers)
