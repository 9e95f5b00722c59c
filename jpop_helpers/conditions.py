"""The frozen text encoder's outputs, computed once per caption and cached (as the audio tokens are).

MusicGen's description conditioner is audiocraft's T5Conditioner: a frozen T5 encoder (not part of the
LM's state: it never trains) followed by `output_proj`, a Linear that IS part of the LM and trains in
full fine-tuning. So what is cached is the frozen part only, T5's last hidden state per caption
(float32 [L, 768], L its tokens with the end-of-sequence token), and the trainable part is applied at
every step by `CachedTextConditioner`, a drop-in for the T5Conditioner that holds the very same
`output_proj` (same parameter, same state-dict key) and returns exactly the condition tensors the LM
consumes: embeds [B, L_max, D] = output_proj(hidden) * mask, mask [B, L_max].

Things the cached path reproduces (tests/test_conditions.py compares it with the live T5 path):
- padding: the batch is padded to its longest caption, as T5's tokenizer pads, because audiocraft's
  cross-attention ignores the mask: padded positions are zero keys/values that still take attention
  weight, so the padded length changes the result.
- classifier-free-guidance dropout: a dropped description (None, or "") is what audiocraft's
  nullified condition becomes: one position (T5's lone end-of-sequence token) with mask 0, i.e. a
  zero embedding; no encoder call is needed for it.
- word dropout: T5Conditioner drops each word with probability `word_dropout` (0.3 in MusicGen's
  config) while training, re-encoding every step's altered caption; a cache cannot hold those. With
  the cache, word dropout is NOT applied: the caption variants (captions.py, several per clip, one
  drawn per step) vary the text instead. TrainConfig.text_encoder="live" keeps audiocraft's per-step
  T5 with word dropout.

<folder>/ (e.g. <root>/conditions/<model>/) holds a few files:
    shard-<nnnnn>.safetensors   up to SHARD_TEXTS hidden states, each named by its caption's SHA-1
    index.json                  "encoder": signature of T5 (weights, tokenizer, device, autocast);
                                "texts": sha1 -> {shard, tokens}; "shards": name -> {bytes, sha1}
Another encoder signature invalidates everything; shards are written whole under new names, the
index after them, and unnamed shards are deleted last (a kill leaves the old or the new cache).
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Callable

import torch
from audiocraft.modules.conditioners import T5Conditioner, TextConditioner
from safetensors.torch import save as save_safetensors

from .io import atomic_path, discard, read_json, slugify, write_json
from .tokens import SHARD_NAME, leftover_files, next_shard_number, read_shard  # the token cache's shard bookkeeping

FORMAT = "jpop-text-cache/1"
INDEX = "index.json"
SHARD_TEXTS = 2000  # ~25 tokens x 768 x 4 bytes = 77 KB a caption: ~150 MB a shard


def cache_folder(root: str | Path, model_name: str) -> Path:
    """Where a data root keeps the text cache of one model (beside its tokens/)."""
    return Path(root) / "conditions" / slugify(model_name)


def text_key(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def cacheable(conditioner) -> bool:
    """A T5Conditioner whose encoder is frozen and whose tokenize has no other text transformation."""
    return isinstance(conditioner, T5Conditioner) and not conditioner.finetune and not conditioner.normalize_text


def encoder_signature(conditioner: T5Conditioner) -> str:
    """Changes when anything that shapes T5's output changes: weights, tokenizer, device kind, autocast."""
    from .model import weights_fingerprint

    t5, tok = conditioner.t5, conditioner.t5_tokenizer
    autocast = conditioner.autocast.autocast
    parts = [FORMAT, conditioner.name, weights_fingerprint(t5), type(tok).__name__, str(len(tok)),
             str(tok.encode("a b c", add_special_tokens=True)), next(t5.parameters()).device.type,
             str(autocast.fast_dtype) if autocast is not None else "no-autocast"]
    return hashlib.sha1("\0".join(parts).encode()).hexdigest()[:16]


@torch.no_grad()
def encode_texts(conditioner: T5Conditioner, texts: Iterable[str], batch_size: int = 64) -> dict[str, torch.Tensor]:
    """T5's last hidden state of each caption, as T5Conditioner.forward computes it (its device, its
    autocast), before output_proj.

    Captions of equal token length are batched together, so no caption is padded.
    Returns:
        text -> float32 [L, 768] on the CPU.
    """
    tok = conditioner.t5_tokenizer
    device = next(conditioner.t5.parameters()).device
    by_len: dict[int, list[str]] = {}
    for t in dict.fromkeys(texts):
        if t:
            by_len.setdefault(len(tok(t)["input_ids"]), []).append(t)
    out = {}
    for group in by_len.values():
        for i in range(0, len(group), batch_size):
            chunk = group[i : i + batch_size]
            inputs = tok(chunk, return_tensors="pt", padding=True).to(device)
            with conditioner.autocast:
                hidden = conditioner.t5(**inputs).last_hidden_state
            for t, h in zip(chunk, hidden.float().cpu()):
                out[t] = h.clone()
    return out


class CachedTextConditioner(TextConditioner):
    """Stands in for a frozen T5Conditioner: hidden states come from a table (`encode_texts`), the
    trainable output projection is the original one.

    tokenize(texts) -> (hidden float32 [B, L, 768], mask long [B, L]) on output_proj's device;
    forward((hidden, mask)) -> (output_proj(hidden) * mask [B, L, D], mask), as T5Conditioner.forward.
    A caption missing from the table is encoded on the spot (and kept in memory).
    """

    def __init__(self, conditioner: T5Conditioner, table: dict[str, torch.Tensor]):
        torch.nn.Module.__init__(self)  # not BaseConditioner.__init__: it would make a new output_proj
        self.dim, self.output_dim = conditioner.dim, conditioner.output_dim
        self.output_proj = conditioner.output_proj  # the trained part: the same module and key
        self.__dict__["original"] = conditioner  # not a submodule: no second copy in state_dict()
        self.table = table

    def tokenize(self, x: list[str | None]) -> tuple[torch.Tensor, torch.Tensor]:
        missing = [t for t in x if t and t not in self.table]
        if missing:
            self.table.update(encode_texts(self.original, missing))
        rows = [self.table[t] if t else None for t in x]
        length = max([1] + [r.shape[0] for r in rows if r is not None])  # "" is T5's lone end token
        hidden = torch.zeros(len(x), length, self.dim)
        mask = torch.zeros(len(x), length, dtype=torch.long)
        for i, r in enumerate(rows):
            if r is not None:
                hidden[i, : r.shape[0]] = r
                mask[i, : r.shape[0]] = 1
        device = self.output_proj.weight.device
        if device.type == "cuda":
            hidden, mask = hidden.pin_memory(), mask.pin_memory()
        return hidden.to(device, non_blocking=True), mask.to(device, non_blocking=True)

    def forward(self, inputs: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        hidden, mask = inputs
        embeds = self.output_proj(hidden.to(self.output_proj.weight))
        return embeds * mask.unsqueeze(-1), mask


# ---------------------------------------------------------------- the disk cache
def _read_index(folder: Path, signature: str) -> tuple[dict, dict]:
    try:
        raw = read_json(folder / INDEX)
        if raw.get("format") != FORMAT or raw.get("encoder") != signature:
            return {}, {}
        shards = {n: m for n, m in raw["shards"].items()
                  if SHARD_NAME.match(n) and isinstance(m.get("bytes"), int) and isinstance(m.get("sha1"), str)}
        texts = {k: e for k, e in raw["texts"].items() if isinstance(e, dict) and e.get("shard") in shards
                 and isinstance(e.get("tokens"), int)}
        return shards, texts
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}, {}


def load_or_encode(conditioner: T5Conditioner, texts: Iterable[str], folder: str | Path,
                   write: bool = True) -> dict[str, torch.Tensor]:
    """Every caption's hidden state: read from `folder` when cached for this encoder, else encoded
    (and, with `write`, saved). Entries for captions not asked for are dropped from the cache.

    Returns:
        text -> float32 [L, 768] (CPU).
    """
    folder = Path(folder)
    texts = [t for t in dict.fromkeys(texts) if t]
    signature = encoder_signature(conditioner)
    shards, index = _read_index(folder, signature)
    wanted = {text_key(t): t for t in texts}
    table, kept_shards, kept = {}, {}, {}
    for name in {index[k]["shard"] for k in wanted if k in index}:
        tensors = read_shard(folder / name, shards[name])
        for k, h in tensors.items():
            if k in wanted and k in index and index[k]["shard"] == name and h.dim() == 2 \
                    and h.shape == (index[k]["tokens"], conditioner.dim) and h.dtype == torch.float32:
                table[wanted[k]] = h
                kept[k], kept_shards[name] = index[k], shards[name]
    todo = [t for t in texts if t not in table]
    new = encode_texts(conditioner, todo) if todo else {}
    table.update(new)
    if write and (new or kept != index):
        number = next_shard_number(folder, shards)
        items = list(new.items())
        for i in range(0, len(items), SHARD_TEXTS):
            name = f"shard-{number:05d}.safetensors"
            number += 1
            data = save_safetensors({text_key(t): h.contiguous() for t, h in items[i : i + SHARD_TEXTS]})
            with atomic_path(folder / name) as tmp:
                tmp.write_bytes(data)
            kept_shards[name] = {"bytes": len(data), "sha1": hashlib.sha1(data).hexdigest()}
            kept.update({text_key(t): {"shard": name, "tokens": h.shape[0]} for t, h in items[i : i + SHARD_TEXTS]})
        write_json(folder / INDEX, {"format": FORMAT, "encoder": signature, "shards": kept_shards, "texts": kept})
        for f in leftover_files(folder, kept_shards):  # only now, with the new index written
            try:
                discard(f)
            except OSError:
                pass
    return table


def use_cached_text(lm, texts: Iterable[str], folder: str | Path | None, write: bool = True) -> Callable[[], None]:
    """Swap every frozen T5 conditioner of `lm` for a CachedTextConditioner over `texts`' hidden
    states (from the disk cache in `folder`, or computed in memory when `folder` is None).

    Returns:
        a function that puts the original conditioners back.
    """
    conditioners = lm.condition_provider.conditioners
    swapped = {}
    texts = list(dict.fromkeys(texts))
    for name, cond in list(conditioners.items()):
        if cacheable(cond):
            table = (load_or_encode(cond, texts, Path(folder) / name, write) if folder is not None
                     else encode_texts(cond, texts))
            swapped[name] = cond, next(cond.t5.parameters()).device
            cond.t5.to("cpu")  # off the GPU while the table serves it (0.4 GiB for t5-base); a miss runs there
            conditioners[name] = CachedTextConditioner(cond, table)

    def restore() -> None:
        for name, (cond, device) in swapped.items():
            cond.t5.to(device)
            conditioners[name] = cond
    return restore
