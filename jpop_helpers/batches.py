"""What the model sees at each step: which clips, which caption (and melody), as padded tensors.

Every choice is a pure function of (seed, micro-step), so a resumed run sees exactly the batches and
captions the uninterrupted run would have seen, with no data-loader state to save.

Melody models (clips whose tokens carry a chroma) are conditioned as audiocraft's MusicGen solver
conditions them: each clip's own melody; per micro-batch, classifier-free-guidance dropout nullifies
every condition (description and melody) with probability `cfg_dropout`, then the melody alone is
dropped with the model's attribute-dropout probability (audiocraft's ClassifierFreeGuidanceDropout and
AttributeDropout both decide once per batch). Other models keep one decision per clip.
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


def step_conditions(items: list[TokenItem], step_micro: int, seed: int, cfg_dropout: float,
                    melody_dropout: float = 0.0) -> tuple[list[str | None], list[bool] | None]:
    """The conditions of micro-batch `step_micro`: (one caption or None per clip, whether each clip
    keeps its melody, or None when the clips have no melody).

    Without melody, the captions are `step_texts`'. With melody, as the solver: one CFG-dropout draw
    for the micro-batch (p=`cfg_dropout`) drops every caption and melody, else one draw (p=`melody_dropout`)
    drops every melody; the caption variant is chosen per clip.
    """
    if not items or items[0].chroma is None:
        return step_texts(items, step_micro, seed, cfg_dropout), None
    g = torch.Generator().manual_seed(seed * 7919 + step_micro)
    drop_all = float(torch.rand((), generator=g)) < cfg_dropout
    drop_melody = drop_all or float(torch.rand((), generator=g)) < melody_dropout
    texts = [None if drop_all else it.descriptions[int(torch.randint(len(it.descriptions), (1,), generator=g))]
             for it in items]
    return texts, [not drop_melody] * len(items)


def collate(items: list[TokenItem], texts: list[str | None], device,
            melody: list[bool] | None = None) -> tuple[torch.Tensor, torch.Tensor, list]:
    """Stack clips for the LM.

    Args:
        melody: melody models: per clip, True to condition on its own melody (its cached chroma),
            False for the nullified melody (dropout); None for models without melody.
    Returns:
        codes: [B, K, T] long; valid: [B, K, T] bool, False on the padding after each clip's
        `valid_frames`; attrs: one audiocraft ConditioningAttributes per clip (description or None;
        melody models: and wav['self_wav'], see melody.melody_attributes).
    """
    from audiocraft.modules.conditioners import ConditioningAttributes

    from .melody import melody_attributes

    codes = torch.stack([it.codes.long() for it in items]).to(device)
    valid = torch.zeros_like(codes, dtype=torch.bool)
    for i, it in enumerate(items):
        valid[i, :, : it.valid_frames] = True
    if melody is None:
        attrs = [ConditioningAttributes(text={"description": t}) for t in texts]
    else:
        attrs = [melody_attributes(t, it.clip_id, it.chroma, it.valid_frames / it.codes.shape[-1], keep)
                 for it, t, keep in zip(items, texts, melody)]
    return codes, valid, attrs
