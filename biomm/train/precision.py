"""Training precision: bf16 where it pays (GPU bf16-mixed; CPU bf16 autocast on AMX/AVX512-BF16 from width 128).

Shared by the Lightning plan of the backbone and by the heads that train (QA)."""
from __future__ import annotations

import contextlib
import torch


def cpu_supports_bf16() -> bool:
    """Whether oneDNN can run bf16 on this CPU (AMX or AVX512-BF16)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


BF16_MIN_WIDTH = 128  # measured: bf16 autocast is 2.4x fp32 at width 256 (bench model), 0.7x at width 32 (bench train)


def resolve_precision(choice: str, accelerator: str, width: int | None = None) -> tuple[str, str]:
    """(Lightning precision, reason). GPU: bf16-mixed. CPU: bf16 autocast where the processor supports it
    (AMX / AVX512-BF16) and the model is wide enough for it to pay; tiny models run faster in fp32."""
    on_gpu = accelerator == "gpu" or (accelerator == "auto" and torch.cuda.is_available())
    if choice == "fp32":
        return "32-true", "fp32 as configured"
    if on_gpu:
        return "bf16-mixed", "GPU: bf16-mixed"
    if choice == "bf16":
        return "bf16-mixed", "bf16 as configured"
    if not cpu_supports_bf16():
        return "32-true", "CPU without bf16 support: fp32"
    if width is not None and width < BF16_MIN_WIDTH:
        return "32-true", f"CPU supports bf16, but at width {width} its casts cost more than they save: fp32"
    return "bf16-mixed", "CPU supports bf16: bf16 autocast"


def autocast(choice: str) -> contextlib.AbstractContextManager:
    """bf16 autocast for a configured precision ("auto" | "bf16" | "fp32") on CPU: a no-op for fp32,
    and for "auto" where the processor has no bf16 support."""
    if choice == "fp32" or (choice == "auto" and not cpu_supports_bf16()):
        return contextlib.nullcontext()
    return torch.autocast("cpu", dtype=torch.bfloat16)
