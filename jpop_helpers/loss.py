"""The one loss: audiocraft's per-codebook masked cross-entropy, shared by training and evaluation."""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch.nn.utils import parametrize

from .batches import collate
from .melody import solver_melody
from .tokens import TokenItem


class EmptySplitError(ValueError):
    """A split to evaluate on holds no clips."""


def codebook_ce(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Masked cross-entropy per codebook, as audiocraft's MusicGen solver computes it.

    Sync-free: no boolean indexing (which reads the mask's count back to the host on every micro-step);
    every position is scored, invalid ones with their logits replaced by zeros and their target by 0,
    and then multiplied by the mask. NaN logits never reach the loss, nor its gradient (torch.where
    sends a zero gradient to the branch it did not pick).

    Args:
        logits: [B, K, T, card]; NaN at positions the delay pattern leaves invalid (masked out here).
        targets: [B, K, T] codes.
        mask: [B, K, T] bool, True where the target is a real, valid token.
    Returns:
        ce: scalar, mean over codebooks of each codebook's mean CE (the training loss);
        ce_sum: [K] summed CE per codebook (float64, detached), for exact aggregation over batches;
        n_tokens: [K] number of valid tokens per codebook (long, on the logits' device).
    """
    card = logits.shape[-1]
    safe = torch.where(mask[..., None], logits, 0.0).float()  # [B, K, T, card]
    tgt = torch.where(mask, targets, 0).long()  # [B, K, T]: codes at invalid positions may be out of range (padding, the special token)
    nll = F.cross_entropy(safe.reshape(-1, card), tgt.reshape(-1), reduction="none").view_as(tgt)  # [B, K, T]
    q_sum = (nll * mask).sum(dim=(0, 2))  # [K]
    n_tokens = mask.sum(dim=(0, 2))  # [K]
    ce = (q_sum / n_tokens.clamp(min=1)).mean()
    return ce, q_sum.detach().double(), n_tokens.long()


def _packed_weights_once(lm):
    """A LoRA-adapted packed weight (lora.LoraDelta) computed once per forward, not once per read: a
    cross-attention reads q, k and v apart, and each read would keep its own W + delta for backward.
    Not under activation checkpointing: its recomputation runs outside this context and must save the
    same tensors as the forward did (and only one layer's copies are alive at a time there anyway)."""
    return parametrize.cached() if lm.transformer.checkpointing == "none" else contextlib.nullcontext()


class LMLoss(torch.nn.Module):
    """Condition, predict and score one batch, as a module, so DistributedDataParallel can wrap it
    (the LM is otherwise driven through condition_provider / compute_predictions, which DDP would not see)."""

    def __init__(self, lm: torch.nn.Module):
        super().__init__()
        self.lm = lm

    def forward(self, codes: torch.Tensor, valid: torch.Tensor, attrs: list):
        """codes, valid: [B, K, T]; attrs: ConditioningAttributes per clip.
        Returns codebook_ce's (ce, ce_sum [K], n_tokens [K])."""
        with solver_melody(self.lm, attrs):  # melody models: each clip's cached chroma, as the solver
            cond = self.lm.condition_provider(self.lm.condition_provider.tokenize(attrs))
        with _packed_weights_once(self.lm):
            out = self.lm.compute_predictions(codes, [], cond)
        return codebook_ce(out.logits, codes, valid & out.mask)


@torch.no_grad()
def evaluate_ce(lm, items: list[TokenItem], batch_size: int, device: str, dtype: torch.dtype = torch.float32,
                max_batches: int | None = None, split: str = "valid") -> dict:
    """CE and perplexity over a split, with each clip's first description (no CFG dropout) and, for
    melody models, its own melody (as the solver's valid stage conditions them).

    Args:
        dtype: the autocast precision (the one training uses), so every model compared is scored alike.
        split: its name, for the error message.
    Returns:
        {"ce": mean over codebooks of per-codebook mean CE, "ppl": exp(ce), "ce_q1".."ce_qK",
         "tokens": valid tokens per codebook}
    Raises:
        EmptySplitError: `items` is empty.
    """
    if not items:
        raise EmptySplitError(f"the {split} split has no clips to evaluate on: add songs, or give it a share "
                              f"(prepare --{split}-fraction, notebook 02's {split.upper()}_FRACTION), then re-run")
    loss = LMLoss(lm)
    was_training = lm.training
    lm.eval()
    sums, counts = 0, 0
    n_batches = math.ceil(len(items) / batch_size)
    for b in range(n_batches if max_batches is None else min(n_batches, max_batches)):
        batch = items[b * batch_size : (b + 1) * batch_size]
        melody = [True] * len(batch) if batch[0].chroma is not None else None
        codes, valid, attrs = collate(batch, [it.descriptions[0] for it in batch], device, melody)
        with torch.autocast(device_type=device.split(":")[0], dtype=dtype, enabled=dtype != torch.float32):
            _, s, c = loss(codes, valid, attrs)
        sums, counts = sums + s, counts + c
    lm.train(was_training)
    per_q = (sums / counts.clamp(min=1)).tolist()
    ce = sum(per_q) / len(per_q)
    return {"ce": ce, "ppl": math.exp(ce), **{f"ce_q{k + 1}": v for k, v in enumerate(per_q)},
            "tokens": int(counts[0])}
