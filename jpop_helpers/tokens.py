"""Audio -> EnCodec tokens, and the token cache: every clip is encoded once, training reads codes.

<root>/tokens/<codec>/<split>/<clip_id>.pt holds {"codes": int16 [K, T], "valid_frames", "descriptions",
"audio_sig", "codec_sig"}. A clip is re-encoded when its wav changes (size or mtime: re-chunking
rewrites it) or the codec's weights change; clips that no longer exist are not returned.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .colab import progress
from .io import atomic_path, load_audio, slugify
from .layout import DataLayout
from .manifest import split_clips
from .problems import ProblemLog


@dataclass
class TokenItem:
    """One encoded clip. codes: int16 [K, T]; frames at or after `valid_frames` are padding."""

    clip_id: str
    codes: torch.Tensor
    valid_frames: int
    descriptions: list[str]


def valid_frames(n_valid_samples: int, sample_rate: int, frame_rate: float, n_frames: int) -> int:
    """Token frames that hold real audio: those that end within the first `n_valid_samples`."""
    return min(math.floor(n_valid_samples * frame_rate / sample_rate), n_frames)


@torch.no_grad()
def encode_audio(model, audio: list[np.ndarray], n_valid: list[int]) -> list[tuple[torch.Tensor, int]]:
    """Encode equally long mono clips with the model's codec (on the codec's device).

    Args:
        audio: float32 [T] each, at model.sample_rate, all of one length.
        n_valid: real samples at the start of each clip (the rest is padding).
    Returns:
        (codes int16 [K, T_frames] on CPU, valid frames) per clip.
    """
    codec = model.compression_model
    device = next(codec.parameters()).device
    wav = torch.from_numpy(np.stack(audio))[:, None].to(device)  # [B, 1, T]
    codes, _ = codec.encode(wav)  # [B, K, T_frames]
    return [(c.cpu().to(torch.int16), valid_frames(n, model.sample_rate, model.frame_rate, c.shape[-1]))
            for c, n in zip(codes, n_valid)]


def _audio_sig(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


def encode_split(model, root: str | Path, split: str, codec_name: str, batch_size: int = 8) -> list[TokenItem]:
    """Encode (or load from the cache) every clip of a split.

    Args:
        model: audiocraft MusicGen; its compression_model encodes on its own device.
        codec_name: folder name of this codec's cache (e.g. the model name).
    Returns:
        TokenItems in manifest order; clips that cannot be read are reported in
        <root>/reports/tokens_problems.jsonl and left out.
    """
    from .model import weights_fingerprint

    csig = weights_fingerprint(model.compression_model)
    out_dir = DataLayout(root).root / "tokens" / slugify(codec_name) / split
    problems = ProblemLog.for_stage(root, "tokens")
    clips = split_clips(root, split, problems)
    items: dict[str, TokenItem] = {}
    todo = []
    for clip in clips:
        cache = out_dir / f"{clip.clip_id}.pt"
        if cache.exists():
            try:
                d = torch.load(cache, weights_only=True)
                if d["audio_sig"] == _audio_sig(clip.path) and d["codec_sig"] == csig:
                    items[clip.clip_id] = TokenItem(clip.clip_id, d["codes"], d["valid_frames"], d["descriptions"])
                    continue
            except Exception:
                pass  # unreadable cache entry (e.g. torn by a crash): encode again
        todo.append(clip)
    for i in progress(range(0, len(todo), batch_size), desc=f"encode {split}", unit="batch"):
        batch, audio = [], []
        for clip in todo[i : i + batch_size]:
            try:
                audio.append(load_audio(clip.path, model.sample_rate))
                batch.append(clip)
            except (OSError, ValueError) as e:  # e.g. a clip damaged by an interrupted Drive sync: skip it, say which
                problems.add(clip.path, str(e))
        if not batch:
            continue
        n_valid = [round((c.duration - c.padded_seconds) * model.sample_rate) for c in batch]
        for clip, (codes, frames) in zip(batch, encode_audio(model, audio, n_valid)):
            item = TokenItem(clip.clip_id, codes, frames, clip.descriptions)
            with atomic_path(out_dir / f"{clip.clip_id}.pt") as tmp:
                torch.save({"codes": item.codes, "valid_frames": item.valid_frames, "descriptions": item.descriptions,
                            "audio_sig": _audio_sig(clip.path), "codec_sig": csig}, tmp)
            items[clip.clip_id] = item
    return [items[c.clip_id] for c in clips if c.clip_id in items]
