"""Optimizer, the step that skips non-finite gradients without asking the host, and the LR schedule."""
from __future__ import annotations

import math

import torch

OPTIMIZERS = ("adamw", "adamw8bit")


def make_optimizer(params: list[torch.Tensor], name: str, lr: float, weight_decay: float):
    """AdamW with MusicGen's betas (0.9, 0.95).

    "adamw" is torch's fused AdamW (one kernel for all weights on a GPU, where the unfused one launches
    several per weight; it exists on CPU too, so tests run the same code). "adamw8bit" keeps both
    moments in 8 bits (bitsandbytes), a quarter of AdamW's 8 bytes per trained weight.
    """
    if name == "adamw8bit":
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(params, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.95))
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.95), fused=True)
    raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, not {name!r}")


def step_if_finite(optimizer, finite: torch.Tensor) -> None:
    """optimizer.step() unless `finite` (a 0-dim bool tensor on the device) is False.

    Fused AdamW takes the decision on the device: given `found_inf`, its kernel leaves weights, moments
    and step count as they were (the mechanism GradScaler uses), so no step waits for the GPU. Other
    optimizers (bitsandbytes' 8-bit AdamW) have no such input: there the flag is read on the host, one
    sync per step.
    """
    if getattr(optimizer, "_step_supports_amp_scaling", False):
        optimizer.found_inf = (~finite).float()
        try:
            optimizer.step()
        finally:
            del optimizer.found_inf
    elif bool(finite):
        optimizer.step()


def warmup_cosine(warmup_steps: int, total_steps: int, min_ratio: float):
    """LR multiplier per step: linear warm-up to 1, then cosine decay to `min_ratio` at `total_steps`."""
    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        t = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
    return f
