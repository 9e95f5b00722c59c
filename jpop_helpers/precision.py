"""Which number format a run computes in."""
from __future__ import annotations

import torch

PRECISIONS = ("auto", "fp32", "fp16", "bf16")


def native_bf16(device: str) -> bool:
    """True where the GPU runs bf16 matmuls in hardware (compute capability 8.0+: A100, L4, H100...).

    `torch.cuda.is_bf16_supported()` is not this question: by default it also counts software
    emulation, and answers True on a T4 (7.5), where bf16 matmuls are emulated and slow.
    """
    return device.startswith("cuda") and torch.cuda.get_device_capability(torch.device(device)) >= (8, 0)


def choose_precision(precision: str, device: str) -> torch.dtype:
    """The autocast dtype for `precision` ("auto": bf16 on GPUs that have it natively, fp16 with loss
    scaling on older GPUs such as Colab's T4, fp32 on CPU)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision != "auto":
        return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    if device.startswith("cuda"):
        return torch.bfloat16 if native_bf16(device) else torch.float16
    return torch.float32
