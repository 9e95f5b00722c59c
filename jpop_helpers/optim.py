"""Optimizer and learning-rate schedule."""
from __future__ import annotations

import math

import torch

OPTIMIZERS = ("adamw", "adamw8bit")


def make_optimizer(params: list[torch.Tensor], name: str, lr: float, weight_decay: float):
    """AdamW with MusicGen's betas (0.9, 0.95); "adamw8bit" keeps both moments in 8 bits (bitsandbytes),
    a quarter of AdamW's 8 bytes per trained weight."""
    if name == "adamw8bit":
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(params, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.95))
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.95))
    raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, not {name!r}")


def warmup_cosine(warmup_steps: int, total_steps: int, min_ratio: float):
    """LR multiplier per step: linear warm-up to 1, then cosine decay to `min_ratio` at `total_steps`."""
    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        t = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
    return f
