"""What the model sees at each step: which clips, which caption, as padded tensors.

Every choice is a pure function of (seed, micro-step), so a resumed run sees exactly the batches and
captions the uninterrupted run would have seen, with no data-loader state to save.
"""
from __future__ import annotations

import torch

from .tokens import TokenItem


def batch_indices(step_micro: int, n_items: int, batch_size: int, seed: int) -> list[int]:
    """Indices of micro-batch number `step_micro`: a seeded permutation per epoch, last partial batch
    dropped (a dataset smaller than one batch is used whole)."""
    per_epoch = max(n_items // batch_size, 1)
    epoch, j = divmod(step_micro, per_epoch)
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n_items, generator=g).tolist()
    return perm[j * batch_size : (j + 1) * batch_size] if n_items >= batch_size else perm


def step_texts(items: list[TokenItem], step_micro: int, seed: int, cfg_dropout: float) -> list[str | None]:
    """One caption variant per clip, or None: the description dropped with probability `cfg_dropout`,
    as MusicGen trains for classifier-free guidance."""
    g = torch.Generator().manual_seed(seed * 7919 + step_micro)
    out = []
    for it in items:
        pick = int(torch.randint(len(it.descriptions), (1,), generator=g))
        drop = float(torch.rand((), generator=g)) < cfg_dropout
        out.append(None if drop else it.descriptions[pick])
    return out


def collate(items: list[TokenItem], texts: list[str | None], device) -> tuple[torch.Tensor, torch.Tensor, list]:
    """Stack clips for the LM.

    Returns:
        codes: [B, K, T] long; valid: [B, K, T] bool, False on the padding after each clip's
        `valid_frames`; attrs: one audiocraft ConditioningAttributes per clip (description or None).
    """
    from audiocraft.modules.conditioners import ConditioningAttributes

    codes = torch.stack([it.codes.long() for it in items]).to(device)
    valid = torch.zeros_like(codes, dtype=torch.bool)
    for i, it in enumerate(items):
        valid[i, :, : it.valid_frames] = True
    attrs = [ConditioningAttributes(text={"description": t}) for t in texts]
    return codes, valid, attrs
